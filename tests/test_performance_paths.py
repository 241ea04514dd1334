"""The fast paths give the plain path's answers (float64), and the single-pass sketch is sane.

Fast paths: ``LogProbOperator.score_moment`` (chunked, per parameter, one backward for p = 1) against
``per_example_grads``; the "vmap", "dense" and "auto" strategies of ``jvp``/``vjp`` and ``vjp(out=)``
accumulation against the independent autograd-loop oracle; the Fisher estimate and both matrix-free
products likewise; ``sketch="single_pass"``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nfk_nb as nfk
from nfk_nb.errors import NFKError
from nfk_nb.fisher import estimate_fisher
from nfk_nb.functional import MOMENT_CHUNK, LogProbOperator
from nfk_nb.products import FisherVectorProducts
from tests import oracle

pytestmark = pytest.mark.usefixtures("float64_default")


class WithUnused(nn.Module):
    """An MLP with one parameter that never reaches the output (its gradient is zero)."""

    def __init__(self, d: int = 6, c: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, c))
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def setup(n: int = MOMENT_CHUNK * 2 + 11, seed: int = 0, strategy: str = "auto"):
    torch.manual_seed(seed)
    net = WithUnused()
    X = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
    lik = nfk.Classifier(net)
    op = LogProbOperator(lik, torch.device("cpu"), torch.float64, strategy=strategy)
    return net, X, lik, op


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2)
        self.head = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def oracle_grads(net, lik, X):
    names = lik.param_names
    return oracle.per_example_grads(net, names, lambda x: lik.log_prob(net, (x[None],))[0], X)


@pytest.mark.parametrize("power", [1, 2, 3])
@pytest.mark.parametrize("centred", [False, True])
def test_score_moment_equals_plain_path(power, centred):
    net, X, lik, op = setup()
    batch = op.to_batch((X,))
    G = op.per_example_grads(batch)
    mean = G.mean(0) + 0.1 if centred else None  # any vector, not only the exact mean
    plain = ((G - mean) if centred else G).pow(power).sum(0)
    fast = op.score_moment(batch, mean, power)
    assert fast.dtype == torch.float64 and fast.shape == (op.P,)
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-12)


def test_per_example_grads_match_oracle():
    net, X, lik, op = setup(n=20)
    torch.testing.assert_close(op.per_example_grads(op.to_batch((X,))), oracle_grads(net, lik, X))


STRATEGIES = ["auto", "vmap", "dense"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_jvp_vjp_strategies_match_oracle(strategy, model):
    torch.manual_seed(0)
    if model == "mlp":
        net, X = WithUnused(), torch.randn(MOMENT_CHUNK + 9, 6)
    else:
        net, X = SmallCNN(), torch.randn(MOMENT_CHUNK + 9, 1, 7, 7)
    lik = nfk.Classifier(net)
    op = LogProbOperator(lik, torch.device("cpu"), torch.float64, strategy=strategy)
    G = oracle_grads(net, lik, X)
    batch = op.to_batch((X,))
    for k in (1, 5):
        T, A = torch.randn(k, op.P), torch.randn(len(X), k)
        for _ in range(2):  # under "auto" the first call times both strategies, the second reuses
            torch.testing.assert_close(op.jvp(batch, T), G @ T.T)
            start = torch.randn(k, op.P)
            torch.testing.assert_close(op.vjp(batch, A, out=start.clone()), start + A.T @ G)
            torch.testing.assert_close(op.vjp(batch, A), A.T @ G)
    if strategy == "auto":
        assert set(op.choices) == {("jvp", 1), ("jvp", 5), ("vjp", 1), ("vjp", 5)}
        assert set(op.choices.values()) <= {"vmap", "dense"}


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy"):
        setup(n=4, strategy="fast")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_vjp_out_accumulates_in_place(strategy):
    net, X, lik, op = setup(n=30, strategy=strategy)
    batch = op.to_batch((X,))
    A = torch.randn(30, 5)
    start = torch.randn(5, op.P)
    out = start.clone()
    returned = op.vjp(batch, A, out=out)
    assert returned is out
    torch.testing.assert_close(out, start + op.vjp(batch, A), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.vjp(batch, A), A.T @ oracle_grads(net, lik, X))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("batch_size", [7, 500])
def test_fisher_and_products_match_oracle(batch_size, strategy):
    net, X, lik, op = setup(strategy=strategy)
    G = oracle_grads(net, lik, X)
    V = oracle.fisher_vectors(G, G, centered=True, kind="diagonal", damping=1e-3)
    batches = [(X[i : i + batch_size],) for i in range(0, len(X), batch_size)]
    est, sq = estimate_fisher(op, lambda: iter(batches), centered=True, damping=1e-3)
    torch.testing.assert_close(est.mean, G.mean(0))
    torch.testing.assert_close(est.diag, ((G - G.mean(0)) ** 2).mean(0))
    products = FisherVectorProducts(op, lambda: iter(batches), est)
    U, A = torch.randn(4, op.P), torch.randn(len(X), 4)
    torch.testing.assert_close(products.matvec(U), V @ U.T)
    torch.testing.assert_close(products.rmatvec(A), A.T @ V)
    draws = iter(torch.split(A, batch_size))
    Y, W, Psi = products.sweep(U, lambda b: next(draws) if b else A[:0])
    torch.testing.assert_close(Psi, A)
    torch.testing.assert_close(Y, V @ U.T)
    torch.testing.assert_close(W, A.T @ V)


def test_fisher_names_the_example_with_a_non_finite_score():
    net, X, lik, op = setup(n=40)
    X[13, 2] = float("nan")
    batches = [(X[:32],), (X[32:],)]
    with pytest.raises(NFKError, match="example 13"):
        estimate_fisher(op, lambda: iter(batches), centered=True)


def kernel_ratio(lik, X, rank, **kwargs):
    from nfk_nb.evaluate import optimal_rank_error

    K = nfk.fisher_kernel(lik, X)
    est = nfk.LowRankNFK(lik, rank=rank, progress=False, **kwargs)
    E = est.fit_transform(X)
    return float(torch.linalg.matrix_norm(K - E @ E.T)) / optimal_rank_error(K, rank), est, E


def test_single_pass_is_exact_when_the_sketch_covers_the_data():
    # l = rank + oversample >= N: the range sketch spans range(V), so Ψ V determines Qᵀ V exactly
    net, X, lik, op = setup(n=12)
    ratio, est, E = kernel_ratio(lik, X, rank=4, oversample=10, sketch="single_pass")
    assert ratio == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 2])
def test_single_pass_error_is_sane(seed):
    # Measured (3 data sets × 5 seeds, rank 4 and 8, N=150): single pass 1.21–1.39× optimal,
    # power_iters=0 1.03–1.12×, power_iters=2 ≤ 1.005×. The bound leaves room for seeds, not bugs.

    net, X, y = oracle.trained_classifier(n=150, seed=seed)
    lik = nfk.Classifier(net)
    ratio, est, E = kernel_ratio(lik, X, rank=8, seed=seed, sketch="single_pass")
    assert 1.0 - 1e-9 <= ratio <= 1.6
    torch.testing.assert_close(est.transform(X), E)  # the same map as transform
    assert est.get_params()["sketch"] == "single_pass"


def test_sketch_option_is_checked():
    net, X, lik, op = setup(n=20)
    with pytest.raises(NFKError, match="sketch"):
        nfk.LowRankNFK(lik, rank=2, sketch="one_pass", progress=False).fit(X)


class _NoForwardAD(torch.autograd.Function):
    """tanh with a backward rule but no forward-mode rule, like fused attention kernels."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y**2)


class _NoForwardNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(5, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.b(_NoForwardAD.apply(self.a(x)))


def test_jvp_falls_back_to_reverse_mode_when_forward_ad_is_missing():
    torch.manual_seed(0)
    net = _NoForwardNet().double()
    X = torch.randn(20, 5, dtype=torch.float64)
    lik = nfk.Classifier(net)
    op = LogProbOperator(lik, torch.device("cpu"), torch.float64)
    with pytest.raises((NotImplementedError, RuntimeError), match="(?i)forward"):
        LogProbOperator(lik, torch.device("cpu"), torch.float64, strategy="vmap").jvp(
            (X,), torch.randn(2, op.P, dtype=torch.float64))
    K = nfk.fisher_kernel(lik, X)
    E = nfk.LowRankNFK(lik, rank=20, oversample=0, progress=False).fit_transform(X)
    assert torch.allclose(E @ E.T, K, atol=1e-8 * float(K.abs().max()))


def test_auto_strategy_follows_weight_reuse_not_the_clock():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).double()
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 8 * 8, 4)).double()
    X_mlp, X_cnn = torch.randn(9, 16).double(), torch.randn(9, 1, 8, 8).double()
    op_mlp = LogProbOperator(nfk.Classifier(mlp), torch.device("cpu"), torch.float64)
    op_cnn = LogProbOperator(nfk.Classifier(cnn), torch.device("cpu"), torch.float64)
    op_mlp.jvp((X_mlp,), torch.randn(12, op_mlp.P).double())
    op_cnn.jvp((X_cnn,), torch.randn(12, op_cnn.P).double())
    assert op_mlp.weight_reuse((X_mlp,)) == pytest.approx(1.0, rel=0.1)
    assert op_cnn.weight_reuse((X_cnn,)) > 2
    assert op_mlp.choices[("jvp", 12)] == "vmap" and op_cnn.choices[("jvp", 12)] == "dense"
