"""Examples never interact (BatchNorm / Dropout run in eval mode), modes are restored, seeds fix results."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import nfk_nb as nfk
import nfk_nb.fitting as fitting

pytestmark = pytest.mark.usefixtures("float64_default")


def bn_dropout_net(seed: int = 0) -> nn.Sequential:
    """A small net with BatchNorm and Dropout, with non-trivial running statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, 3)
    )
    net.train()
    with torch.no_grad():
        for _ in range(5):  # a few forward passes in train mode move the running stats
            net(torch.randn(32, 6) * 2 + 1)
    return net


def inputs(n: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))


def modes(net: nn.Module) -> list[bool]:
    return [m.training for m in net.modules()]


def fit(net, X, batch_size, **kw):
    kw = {"rank": 5, "power_iters": 1, **kw}
    est = nfk.LowRankNFK(nfk.Classifier(net), batch_size=batch_size, progress=False, **kw)
    return est.fit_transform(X), est


def test_embedding_does_not_depend_on_batch_size():
    net = bn_dropout_net()
    X = inputs()
    stats = [b.clone() for b in net.buffers()]
    E7, est7 = fit(net, X, 7)
    E40, est40 = fit(net, X, 40)
    torch.testing.assert_close(E7, E40, rtol=0, atol=1e-10)
    torch.testing.assert_close(est7.transform(X[:9]), E7[:9], rtol=0, atol=1e-10)
    # the fit never touches BatchNorm's running statistics
    assert all(torch.equal(a, b) for a, b in zip(stats, net.buffers()))


def test_the_batch_size_test_can_fail(monkeypatch):
    """Without eval mode the BatchNorm net is refused (its running statistics would update inside the
    per-example transform), so the test above depends on eval mode."""
    monkeypatch.setattr(fitting, "eval_mode", lambda *m: contextlib.nullcontext())
    with pytest.raises(nfk.NFKError, match="cannot differentiate it per example"):
        fit(bn_dropout_net(), inputs(), 7)


class TrainScale(nn.Module):
    """Doubles its input in train mode: a deterministic stand-in for train-only behaviour."""

    def forward(self, x):
        return 2 * x if self.training else x


def test_the_mode_test_can_fail(monkeypatch):
    """With eval mode switched off a train-only behaviour changes the embedding, and the comparison
    the mode tests make (train-mode fit == eval-mode fit) trips."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), TrainScale(), nn.Tanh(), nn.Linear(8, 3))
    X = inputs()
    net.train()
    E_train, _ = fit(net, X, 40)
    net.eval()
    E_eval, _ = fit(net, X, 40)
    torch.testing.assert_close(E_train, E_eval, rtol=0, atol=1e-12)  # eval mode in force: equal
    monkeypatch.setattr(fitting, "eval_mode", lambda *m: contextlib.nullcontext())
    net.train()
    E_fault, _ = fit(net, X, 40)
    assert not torch.allclose(E_fault, E_eval, atol=1e-6)


def test_exact_path_batch_size_independent():
    net = bn_dropout_net()
    X = inputs(20)
    K7 = nfk.fisher_kernel(nfk.Classifier(net), X, batch_size=7)
    K20 = nfk.fisher_kernel(nfk.Classifier(net), X, batch_size=20)
    torch.testing.assert_close(K7, K20, rtol=1e-10, atol=1e-10)


def test_modes_restored_after_fit_and_transform():
    net = bn_dropout_net()
    net.train()
    net[3].eval()  # a mixed state: each module's own flag must survive
    before = modes(net)
    _, est = fit(net, inputs(), 10)
    assert modes(net) == before
    est.transform(inputs(5))
    assert modes(net) == before
    nfk.fisher_vectors(nfk.Classifier(net), inputs(8))
    assert modes(net) == before


class _Boom(Exception):
    pass


def _raising_bar(total, desc):
    class Bar:
        def update(self, n):
            raise _Boom("interrupted")

        def close(self):
            pass

    return Bar()


def test_modes_restored_when_fit_raises():
    net = bn_dropout_net()
    net.train()
    net[1].eval()
    before = modes(net)
    with pytest.raises(_Boom):
        nfk.LowRankNFK(nfk.Classifier(net), rank=3, progress=_raising_bar).fit(inputs())
    assert modes(net) == before
    with pytest.raises(nfk.NFKError):  # fails inside the eval-mode block, on the input check
        nfk.LowRankNFK(nfk.Classifier(net), rank=3, progress=False).fit(torch.randn(10, 5))
    assert modes(net) == before


def test_dropout_in_train_mode_gives_a_deterministic_fit():
    net = bn_dropout_net()
    net.train()
    X = inputs()
    E1, _ = fit(net, X, 40, power_iters=0)
    E2, _ = fit(net, X, 40, power_iters=0)
    net.eval()
    E3, _ = fit(net, X, 40, power_iters=0)
    assert torch.equal(E1, E2) and torch.equal(E1, E3)


# -- determinism --------------------------------------------------------------------------------------


def energy_lik():
    torch.manual_seed(0)
    gen = nn.Linear(3, 6)
    disc = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 1))
    return nfk.EnergyModel(disc, sampler=lambda n: gen(torch.randn(n, 3)), n_samples=64)


@pytest.mark.parametrize("kind", ["classifier", "energy"])
def test_same_seed_same_result_bitwise_including_signs(kind):
    lik = nfk.Classifier(bn_dropout_net()) if kind == "classifier" else energy_lik()
    X = inputs(30)
    outs = []
    for global_seed in (0, 123):
        torch.manual_seed(global_seed)  # the global RNG must not matter
        est = nfk.LowRankNFK(lik, rank=4, seed=7, batch_size=8, progress=False)
        outs.append((est.fit_transform(X), est.components_, est.singular_values_))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    W = outs[0][1]
    top = W[torch.arange(len(W)), W.abs().argmax(1)]
    assert (top > 0).all()  # sklearn's svd_flip sign convention


def test_fit_leaves_global_rng_untouched():
    lik = energy_lik()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    nfk.LowRankNFK(lik, rank=3, progress=False).fit(inputs(20))
    assert torch.equal(state, torch.get_rng_state())


def test_another_seed_changes_the_sketch_but_not_the_subspace():
    """Different seeds draw different test matrices; the top of the spectrum must agree closely."""
    net = bn_dropout_net()
    X = inputs(30)
    S = [
        nfk.LowRankNFK(nfk.Classifier(net), rank=3, seed=s, power_iters=3, progress=False)
        .fit(X).singular_values_
        for s in (0, 1)
    ]
    assert not torch.equal(S[0], S[1])
    torch.testing.assert_close(S[0][0], S[1][0], rtol=1e-3, atol=0)
