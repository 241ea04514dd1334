"""Numerics: a fit is accurate, recomputed in higher precision (one warning), or refused — never
inconsistent. Reduced-precision models compute in float32 by default (batch-size independent)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import nfk_nb as nfk
from nfk_nb.consistency import (
    InconsistentFit,
    PrecisionWarning,
    cancellation_factor,
    check_consistency,
)
from nfk_nb.datasource import as_source
from nfk_nb.distributed import Reducer
from nfk_nb.products import FisherVectorProducts
from nfk_nb.sketch import gaussian_test_matrix


def exact64(make_lik, model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The exact kernel of a float64 copy of the model on float64 inputs (the reference)."""
    m64 = copy.deepcopy(model).double()
    return nfk.fisher_kernel(make_lik(m64), X.double(), dtype=torch.float64)


def error_over_optimum(K: torch.Tensor, E: torch.Tensor) -> float:
    """``‖K - E Eᵀ‖_F`` over the best rank-k error ``sqrt(Σ_{i>k} λ_i²)``."""
    k = E.shape[1]
    ev = torch.linalg.eigvalsh(K)
    best = ev[:-k].pow(2).sum().sqrt()
    return float(torch.linalg.norm(K - E.double() @ E.double().T) / best)


def near_constant_cnn(var: float = 1e16) -> nn.Module:
    """A MobileNet-like head whose BatchNorm statistics came from degenerate train batches: the
    logits vary across inputs by ~1e-8 of their size (float32 rounds that away)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Hardswish(), nn.Linear(16, 5),
    )
    net.train()
    for _ in range(2):  # running statistics from two train batches
        net(torch.randn(8, 3, 8, 8))
    net[6].running_var.fill_(var)
    return net.eval()


def fit(lik, X, **kw) -> tuple[nfk.LowRankNFK, torch.Tensor]:
    est = nfk.LowRankNFK(lik, rank=4, progress=False, **kw)
    return est, est.fit_transform(X)


def test_near_constant_logits_are_recomputed_in_float64_and_accurate():
    net = near_constant_cnn()
    X = torch.randn(24, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with pytest.warns(PrecisionWarning, match="barely vary.*recomputing the fit in float64"):
        est, E = fit(nfk.Classifier(net), X)
    assert float(est.explained_variance_ratio_.sum()) <= 1.0
    assert error_over_optimum(exact64(nfk.Classifier, net, X), E) <= 1.05
    # transform uses the same (float64) map as the fit
    torch.testing.assert_close(est.transform(X[:6]), E[:6], rtol=1e-6, atol=1e-8)


def test_inputs_differing_at_1e7_end_accurate():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4))
    X = torch.ones(40, 6) + 1e-7 * torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    with pytest.warns(PrecisionWarning):
        est, E = fit(nfk.Classifier(mlp), X)
    assert float(est.explained_variance_ratio_.sum()) <= 1.0
    assert error_over_optimum(exact64(nfk.Classifier, mlp, X), E) <= 1.05


def test_beyond_float64_is_refused_with_cause_and_fix():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4)).double()
    X = torch.ones(30, 6, dtype=torch.float64)
    X += 1e-15 * torch.randn(30, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with pytest.raises(nfk.NFKError, match="even in float64.*score='label'"):
        fit(nfk.Classifier(mlp), X)


def test_healthy_float32_fit_runs_once_without_warning():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4))
    X = torch.randn(40, 6, generator=torch.Generator().manual_seed(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        est, E = fit(nfk.Classifier(mlp), X)
    assert est.operator.dtype == torch.float32
    f = est.fisher_
    assert cancellation_factor(f.mean, f.diag, f.scale) < 1e3
    assert error_over_optimum(exact64(nfk.Classifier, mlp, X), E) <= 1.05


def test_check_consistency_catches_inflated_or_wrong_results():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    X = torch.randn(20, 5, dtype=torch.float64)
    est, E = fit(nfk.Classifier(mlp), X)
    op = est.operator
    source = as_source(X, 256)
    products = FisherVectorProducts(op, lambda: iter(source), est.fisher_)
    Wt, S = est.components_, est.singular_values_
    reducer = Reducer()
    check_consistency(products, source, Wt, S, E, est.trace_, reducer)  # the real fit passes
    with pytest.raises(InconsistentFit, match="Σ S²"):
        check_consistency(products, source, Wt, S * 10, E, est.trace_, reducer)
    with pytest.raises(InconsistentFit, match="Σ ‖e"):
        check_consistency(products, source, Wt, S, E * 10, est.trace_, reducer)
    wrong = E.clone()
    wrong[0] += 0.01 * E[0].norm()
    with pytest.raises(InconsistentFit, match="exact float64 per-example gradients"):
        check_consistency(products, source, Wt, S, wrong, est.trace_, reducer)


class _TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(1))


def test_bf16_model_kernel_is_batch_size_independent():
    net = _TinyTransformer().to(torch.bfloat16)
    ids = torch.randint(0, 20, (24, 7), generator=torch.Generator().manual_seed(5))
    lik = nfk.Classifier(net, score="predicted")
    grams = []
    for bs in (3, 16):
        est, E = fit(lik, ids, batch_size=bs)
        assert est.operator.dtype == torch.float32  # products in float32 by default
        grams.append(E.double() @ E.double().T)
        K = nfk.fisher_kernel(lik, ids, batch_size=bs)
        assert K.dtype == torch.float32
        grams.append(K.double())
    for a, b in ((grams[0], grams[2]), (grams[1], grams[3])):
        assert float((a - b).norm() / b.norm()) < 1e-3
    assert next(net.parameters()).dtype == torch.bfloat16  # the user's model is not converted


def test_bf16_products_on_request_stay_within_their_rounding():
    net = _TinyTransformer().to(torch.bfloat16)
    ids = torch.randint(0, 20, (24, 7), generator=torch.Generator().manual_seed(6))
    lik = nfk.Classifier(net, score="predicted")
    K32 = nfk.fisher_kernel(lik, ids).double()
    Kb = nfk.fisher_kernel(lik, ids, dtype=torch.bfloat16).double()
    assert 1e-5 < float((Kb - K32).norm() / K32.norm()) < 2e-2  # bf16 rounding, not garbage
    est, E = fit(lik, ids, dtype=torch.bfloat16)
    assert float(est.explained_variance_ratio_.sum()) <= 1.0


def test_gaussian_test_matrix_is_drawn_in_float32_and_dtype_independent():
    a = gaussian_test_matrix(7, 1000, seed=3, dtype=torch.float32)
    b = gaussian_test_matrix(7, 1000, seed=3, dtype=torch.float64)
    assert a.dtype == torch.float32 and b.dtype == torch.float64
    assert torch.equal(a.double(), b)
    assert not torch.equal(a, gaussian_test_matrix(7, 1000, seed=4, dtype=torch.float32))
    assert abs(float(b.std()) - 1) < 0.05


def test_sampler_draws_leave_the_generator_alone():
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6))
    gen.train()  # left in train mode: BatchNorm would update its running statistics
    gen[3].eval()  # a per-module flag that must survive too
    before = copy.deepcopy(gen.state_dict())
    flags = [m.training for m in gen.modules()]
    disc = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 1))
    lik = nfk.EnergyModel(disc, sampler=lambda n: gen(torch.randn(n, 4)), n_samples=64)
    nfk.LowRankNFK(lik, rank=3, progress=False).fit(torch.randn(20, 6))
    nfk.fisher_kernel(lik, torch.randn(10, 6))
    after = gen.state_dict()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert [m.training for m in gen.modules()] == flags


def test_sampler_changing_parameters_is_refused():
    torch.manual_seed(0)
    gen = nn.Linear(4, 6)

    def sampler(n):
        out = gen(torch.randn(n, 4))
        gen.weight.mul_(1.0)  # an in-place update of a parameter (version counter moves)
        return out

    disc = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 1))
    with pytest.raises(nfk.NFKError, match="changed model parameters in place"):
        nfk.fisher_kernel(nfk.EnergyModel(disc, sampler=sampler, n_samples=8), torch.randn(5, 6))


def test_exact_path_recomputes_near_constant_scores_in_float64():
    net = near_constant_cnn()
    X = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(7))
    with pytest.warns(PrecisionWarning, match="recomputing in float64"):
        K = nfk.fisher_kernel(nfk.Classifier(net), X)
    assert K.dtype == torch.float64
    want = exact64(nfk.Classifier, net, X)
    assert float((K - want).norm() / want.norm()) < 1e-6


def test_a_float64_refit_saves_and_loads_its_precision(tmp_path):
    net = near_constant_cnn()
    X = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(8))
    with pytest.warns(PrecisionWarning):
        est, E = fit(nfk.Classifier(net), X)
    est.save(tmp_path / "fit.safetensors")
    loaded = nfk.LowRankNFK.load(tmp_path / "fit.safetensors", nfk.Classifier(net))
    assert loaded.operator.dtype == torch.float64
    torch.testing.assert_close(loaded.transform(X[:4]), E[:4], rtol=1e-6, atol=1e-8)
