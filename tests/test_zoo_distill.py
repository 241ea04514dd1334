"""Distillation training loops: what each mode uses, that it moves the student the right way, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nfk_nb.data import make_blobs
from nfk_nb.errors import NFKError, NFKTypeError
from nfk_nb.zoo.classifier import accuracy, mlp
from nfk_nb.zoo.distill import MODES, kd_loss, labelled_subset, teacher_logits, train_student

from .helpers import same_params


@pytest.fixture(scope="module")
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    X, y = make_blobs(n=300, centers=3, dim=4, spread=0.8, seed=1)
    return X, y


def test_labelled_subset_counts_seeding_and_errors() -> None:
    y = torch.arange(10).repeat(20)
    idx = labelled_subset(y, 3, seed=4)
    assert len(idx) == 30 and torch.equal(idx, idx.sort().values)
    assert torch.bincount(y[idx], minlength=10).tolist() == [3] * 10
    assert torch.equal(idx, labelled_subset(y, 3, seed=4))
    assert not torch.equal(idx, labelled_subset(y, 3, seed=5))
    with pytest.raises(NFKError, match="fewer than"):
        labelled_subset(y, 21)


def test_kd_loss_matches_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    T = 3.0
    p_t = F.softmax(t / T, -1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    torch.testing.assert_close(kd_loss(s, t, T), manual)
    assert float(kd_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_plain_ignores_unlabelled_labels_and_is_seeded(blobs) -> None:
    X, y = blobs
    lab = labelled_subset(y, 5, seed=0)
    y_scrambled = y.clone()
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[lab] = False
    y_scrambled[mask] = (y[mask] + 1) % 3
    state = torch.random.get_rng_state()
    a, b = mlp([4, 16, 3], seed=0), mlp([4, 16, 3], seed=0)
    train_student(a, X, y, labelled=lab, epochs=5, seed=2)
    train_student(b, X, y_scrambled, labelled=mask.logical_not(), epochs=5, seed=2)  # mask form
    assert torch.equal(state, torch.random.get_rng_state()), "training must not move the global RNG"
    assert same_params(a, b), "plain mode must use only the labelled rows (and accept a boolean mask)"
    assert not a.training
    c = mlp([4, 16, 3], seed=0)
    train_student(c, X, y, labelled=lab, epochs=5, seed=3)
    assert not same_params(a, c)


def test_plain_learns_from_labels(blobs) -> None:
    X, y = blobs
    student = mlp([4, 16, 3], seed=0)
    res = train_student(student, X, y, labelled=labelled_subset(y, 10, seed=0), epochs=10, seed=0)
    assert res.losses[-1] < res.losses[0]
    assert accuracy(student, X, y) > 0.9
    assert res.head is None


def test_logit_mode_pulls_student_towards_teacher(blobs) -> None:
    """A teacher that contradicts the labels (it predicts y + 1): the distilled student follows it."""
    X, y = blobs
    logits = 5.0 * F.one_hot((y + 1) % 3, 3).float()
    lab = labelled_subset(y, 2, seed=0)
    agree = {}
    for mode in ("plain", "logit"):
        student = mlp([4, 16, 3], seed=0)
        train_student(student, X, y, mode=mode, labelled=lab, logits=logits, alpha=5.0,
                      temperature=1.0, epochs=10, seed=0)
        with torch.no_grad():
            agree[mode] = float((student(X).argmax(-1) == (y + 1) % 3).float().mean())
    assert agree["plain"] < 0.3 and agree["logit"] > 0.7, agree


def test_nfk_mode_head_regresses_targets(blobs) -> None:
    X, y = blobs
    A = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    targets = torch.tanh(X @ A)
    student = mlp([4, 32, 3], seed=0)
    res = train_student(student, X, y, mode="nfk", labelled=labelled_subset(y, 5, seed=0),
                        targets=targets, beta=10.0, epochs=20, seed=0)
    assert res.head is not None and res.head.out_features == 6
    with torch.no_grad():
        pred = res.head(student[:-1](X))
    scaled = targets / targets.pow(2).sum(1).mean().sqrt()
    r2 = 1 - (pred - scaled).pow(2).sum() / (scaled - scaled.mean(0)).pow(2).sum()
    assert float(r2) > 0.8, float(r2)
    # targets are rescaled to unit mean squared norm: scaling them changes nothing
    other = mlp([4, 32, 3], seed=0)
    train_student(other, X, y, mode="nfk", labelled=labelled_subset(y, 5, seed=0),
                  targets=targets * 10.0, beta=10.0, epochs=20, seed=0)
    for p, q in zip(student.parameters(), other.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_all_modes_run(blobs) -> None:
    X, y = blobs
    logits = teacher_logits(mlp([4, 8, 3], seed=1), X)
    for mode in MODES:
        res = train_student(mlp([4, 8, 3], seed=0), X, y, mode=mode, logits=logits,
                            targets=torch.randn(len(X), 2), epochs=1, seed=0)
        assert len(res.losses) == 1 and torch.isfinite(torch.tensor(res.losses)).all()


def test_errors(blobs) -> None:
    X, y = blobs
    net = mlp([4, 8, 3], seed=0)
    with pytest.raises(NFKError, match="mode="):
        train_student(net, X, y, mode="hinton")
    with pytest.raises(NFKError, match="teacher"):
        train_student(net, X, y, mode="logit")
    with pytest.raises(NFKError, match="targets"):
        train_student(net, X, y, mode="nfk", targets=torch.randn(len(X) - 1, 2))
    with pytest.raises(NFKError, match="no labelled"):
        train_student(net, X, y, labelled=torch.tensor([], dtype=torch.long))
    with pytest.raises(NFKError, match="temperature"):
        train_student(net, X, y, mode="logit", logits=torch.randn(len(X), 3), temperature=0.0)
    with pytest.raises(NFKError, match="rows"):
        train_student(net, X, y[:-1])

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp([4, 8, 3])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    with pytest.raises(NFKTypeError, match="Sequential"):
        train_student(Wrapped(), X, y, mode="nfk", targets=torch.randn(len(X), 2))
