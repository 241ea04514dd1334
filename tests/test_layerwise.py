"""Layer-wise products (``layers.py``, ``layerwise.py``, ``gram.py``) against autograd-loop oracles.

float64 throughout; the models mix every supported layer kind (Linear on vectors and sequences,
Conv1d with stride, Conv2d with padding, no-bias layers, in-place activations) with parameters that
must keep the ``torch.func`` path (LayerNorm), so one fit exercises both.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nfk_nb as nfk
from nfk_nb.functional import LogProbOperator
from nfk_nb.layerwise import LayerwiseOperator, make_operator

from .oracle import fisher_vectors as oracle_vectors
from .oracle import per_example_grads

pytestmark = pytest.mark.usefixtures("float64_default")
CPU = torch.device("cpu")


class MixedNet(nn.Module):
    """Conv2d (T=16) -> Conv1d stride 2 (T=8, no bias) -> LayerNorm -> a free gain (torch.func) ->
    Linear on a sequence -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.c2 = nn.Conv1d(3, 4, 2, stride=2, bias=False)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x):
        h = torch.relu(self.c1(x)).flatten(2)
        h = self.ln(self.c2(h).transpose(1, 2)) * self.gain
        h = nn.functional.relu(self.fc(h), inplace=True).mean(1)
        return self.head(h)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 7), nn.ReLU(inplace=True), nn.Linear(7, 7), nn.Tanh(),
                         nn.Linear(7, 3))


def mixed() -> nn.Module:
    torch.manual_seed(1)
    return MixedNet()


CASES = {"mlp": (mlp, (6,)), "mixed": (mixed, (2, 4, 4))}


def _data(shape, n=13, seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _oracle_grads(net, lik, X):
    return per_example_grads(net, lik.param_names,
                             lambda x: torch.logsumexp(net(x[None]), -1)[0], X)


@pytest.mark.parametrize("case", list(CASES))
def test_products_match_the_autograd_loop(case):
    build, shape = CASES[case]
    net = build()
    X = _data(shape)
    lik = nfk.Classifier(net)
    op = LayerwiseOperator(lik, CPU, torch.float64)
    batch = op.to_batch((X,))
    G = _oracle_grads(net, lik, X)
    torch.testing.assert_close(op.per_example_grads(batch), G, rtol=1e-12, atol=1e-12)
    assert op.rest == ([] if case == "mlp" else ["gain"])
    assert [n.module_name for n in op.norms] == ([] if case == "mlp" else ["ln"])
    gen = torch.Generator().manual_seed(3)
    for k in (1, 5, 40):  # direct (T=1) and formed (T>1) per layer, both under one k
        T = torch.randn(k, op.P, generator=gen)
        A = torch.randn(len(X), k, generator=gen)
        op.choices[("layerwise", k)] = "layerwise"
        torch.testing.assert_close(op.jvp(batch, T), G @ T.T, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(op.vjp(batch, A), A.T @ G, rtol=1e-10, atol=1e-12)


def test_the_flop_model_picks_layerwise_for_an_mlp_and_caches_captures():
    net = mlp()
    lik = nfk.Classifier(net)
    op = make_operator(lik, CPU, torch.float64)
    assert isinstance(op, LayerwiseOperator)
    batch = op.to_batch((_data((6,)),))
    op.jvp(batch, torch.randn(8, op.P))
    assert op.choices[("layerwise", 8)] == "layerwise"
    assert len(op._cache) == 1  # the second pass over the same batch reuses the capture
    op.vjp(batch, torch.randn(len(batch[0]), 8))
    assert len(op._cache) == 1
    op.clear_cache()
    assert not op._cache


class SharedLayer(nn.Module):
    """The same Linear applied twice (weight sharing): not δ aᵀ for one call."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


class PenalisedWeight(nn.Module):
    """A weight used outside its layer too (added to the logits through a norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        return self.a(x) + self.a.weight.square().sum() * x[:, :1]


@pytest.mark.parametrize("cls, left_out", [(SharedLayer, ["inner"]), (PenalisedWeight, ["a"])])
def test_layers_that_are_not_delta_a_keep_the_torch_func_path(cls, left_out):
    torch.manual_seed(0)
    net = cls()
    X = _data((4,), n=9)
    lik = nfk.Classifier(net)
    op = LayerwiseOperator(lik, CPU, torch.float64)
    batch = op.to_batch((X,))
    G = _oracle_grads(net, lik, X)
    torch.testing.assert_close(op.per_example_grads(batch), G, rtol=1e-12, atol=1e-12)
    names = [layer.module_name for layer in op.layers]
    assert not set(left_out) & set(names)
    T = torch.randn(6, op.P)
    op.choices[("layerwise", 6)] = "layerwise"
    torch.testing.assert_close(op.jvp(batch, T), G @ T.T, rtol=1e-10, atol=1e-12)


def test_tied_weights_are_left_to_torch_func():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Tanh(), nn.Linear(4, 4, bias=False))
    net[2].weight = net[0].weight
    lik = nfk.Classifier(net)
    op = LayerwiseOperator(lik, CPU, torch.float64)
    assert op.layers == []
    assert not isinstance(make_operator(lik, CPU, torch.float64), LayerwiseOperator)


def _dense_kfac(est, space):
    """The dense block-diagonal ``I^{-1/2}`` built from the estimate's own factors."""
    D = torch.diag(est.scale.clone())
    starts = dict(zip(space.names, torch.tensor([0, *space.numels]).cumsum(0).tolist()))
    for layer, (Ai, Gi) in zip(est.kron.layers, est.kron.roots()):
        # columns of the joined [W b] matrix, row-major, mapped to flat θ
        cols = []
        for o in range(layer.n_out):
            for i in range(layer.n_in):
                if layer.bias is not None and i == layer.n_in - 1:
                    cols.append(starts[layer.bias] + o)
                else:
                    w_in = layer.n_in - (layer.bias is not None)
                    cols.append(starts[layer.weight] + o * w_in + i)
        cols = torch.tensor(cols)
        D[cols[:, None], cols[None, :]] = torch.kron(Gi, Ai)
    return D


@pytest.mark.parametrize("case", list(CASES))
def test_kfac_vectors_match_a_dense_kronecker_metric(case):
    build, shape = CASES[case]
    net = build()
    X = _data(shape, n=17)
    lik = nfk.Classifier(net)
    G = _oracle_grads(net, lik, X)
    op = make_operator(lik, CPU, torch.float64)
    from nfk_nb.fisher import estimate_fisher

    est, _ = estimate_fisher(op, lambda: iter([(X[:9],), (X[9:],)]), centered=True, kind="kfac")
    S = G - G.mean(0)
    V_dense = S @ _dense_kfac(est, op.space)
    V = nfk.fisher_vectors(lik, X, fisher="kfac", batch_size=9)
    torch.testing.assert_close(V, V_dense, rtol=1e-10, atol=1e-12)
    K = nfk.fisher_kernel(lik, X, fisher="kfac", batch_size=9)
    torch.testing.assert_close(K, V_dense @ V_dense.T, rtol=1e-10, atol=1e-10)


def test_kfac_factors_are_the_means_of_a_a_and_delta_delta():
    net = mlp()
    X = _data((6,), n=11)
    lik = nfk.Classifier(net)
    op = make_operator(lik, CPU, torch.float64)
    from nfk_nb.fisher import estimate_fisher

    est, _ = estimate_fisher(op, lambda: iter([(X,)]), centered=True, kind="kfac")
    # by hand: inputs of the last layer and the softmax as its output gradient (joint score)
    h = net[:4](X)
    a = torch.cat([h, torch.ones(len(X), 1)], 1)
    d = torch.softmax(net(X), 1)
    torch.testing.assert_close(est.kron.A[-1], a.T @ a / len(X))
    torch.testing.assert_close(est.kron.G[-1], d.T @ d / len(X))
    # π-corrected relative damping: A + √λ·mean diag(A)·I, then the inverse square root
    lam = est.damping
    Ad = est.kron.A[-1] + lam**0.5 * est.kron.A[-1].diagonal().mean() * torch.eye(len(a.T))
    Ai = est.kron.roots()[-1][0]
    torch.testing.assert_close(Ai @ Ad @ Ai, torch.eye(len(Ad)), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["identity", "diagonal", "kfac"])
@pytest.mark.parametrize("case", list(CASES))
def test_layerwise_exact_kernel_matches_the_oracle(case, kind):
    build, shape = CASES[case]
    net = build()
    X, Z = _data(shape, n=15), _data(shape, n=6, seed=1)
    lik = nfk.Classifier(net)
    GX, GZ = _oracle_grads(net, lik, X), _oracle_grads(net, lik, Z)
    if kind == "kfac":
        V = nfk.fisher_vectors(lik, X, fisher="kfac", batch_size=4)
        # Z's vectors with X's estimate: whiten Z's centred oracle gradients the same way
        op = make_operator(lik, CPU, torch.float64)
        from nfk_nb.fisher import estimate_fisher

        est, _ = estimate_fisher(op, lambda: iter([(X,)]), centered=True, kind="kfac")
        VZ = est.whiten_(GZ - GX.mean(0), op.space)
    else:
        V = oracle_vectors(GX, GX, True, kind, nfk.fisher.DEFAULT_DAMPING)
        VZ = oracle_vectors(GZ, GX, True, kind, nfk.fisher.DEFAULT_DAMPING)
    K = nfk.fisher_kernel(lik, X, fisher=kind, batch_size=4)
    torch.testing.assert_close(K, V @ V.T, rtol=1e-10, atol=1e-10)
    KZ = nfk.fisher_kernel(lik, X, Z, fisher=kind, batch_size=4)
    torch.testing.assert_close(KZ, V @ VZ.T, rtol=1e-10, atol=1e-10)


def test_hadamard_blocks_are_used_where_cheaper():
    from nfk_nb.gram import hadamard_layers

    net = mixed()
    op = make_operator(nfk.Classifier(net), CPU, torch.float64)
    op.probe(op.to_batch((_data((2, 4, 4)),)))
    assert [layer.module_name for layer in hadamard_layers(op, "kfac")] == ["head"]
    assert hadamard_layers(op, "diagonal") == []


@pytest.mark.parametrize("kind", ["identity", "kfac"])
def test_low_rank_fit_on_layerwise_products_is_oracle_exact(kind, tmp_path):
    net = mixed()
    X = _data((2, 4, 4), n=24)
    lik = nfk.Classifier(net)
    K = nfk.fisher_kernel(lik, X, fisher=kind)
    evals = torch.linalg.eigvalsh(K).flip(0)
    est = nfk.LowRankNFK(lik, rank=5, fisher=kind, power_iters=6, progress=False, batch_size=10)
    E = est.fit_transform(X)
    err = torch.linalg.matrix_norm(K - E @ E.T) / evals[5:].pow(2).sum().sqrt()
    assert float(err) < 1.0 + 1e-6
    assert est.trace_ == pytest.approx(float(K.trace()), rel=1e-10)
    torch.testing.assert_close(est.singular_values_**2, evals[:5], rtol=1e-6, atol=0)
    path = tmp_path / "fit.nfk"
    est.save(path)
    loaded = nfk.LowRankNFK.load(path, lik)
    torch.testing.assert_close(loaded.transform(X[:7]), est.transform(X[:7]), rtol=1e-12, atol=1e-12)
    assert loaded.fisher_.kind == kind
    if kind == "kfac":
        torch.testing.assert_close(loaded.fisher_.kron.A[0], est.fisher_.kron.A[0])


def test_layerwise_fit_equals_the_torch_func_fit():
    """Same seed, same embedding whether the products are layer-wise or ``torch.func``."""
    net = mlp()
    X = _data((6,), n=40)
    lik = nfk.Classifier(net)
    est = nfk.LowRankNFK(lik, rank=4, progress=False, batch_size=16)
    E = est.fit_transform(X)
    assert isinstance(est.operator, LayerwiseOperator)
    import nfk_nb.lowrank as lowrank

    orig = lowrank.make_operator
    lowrank.make_operator = lambda lik, d, dt, c: LogProbOperator(lik, d, dt, c)
    try:
        base = nfk.LowRankNFK(lik, rank=4, progress=False, batch_size=16)
        E_base = base.fit_transform(X)
    finally:
        lowrank.make_operator = orig
    torch.testing.assert_close(E, E_base, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", ["identity", "kfac"])
def test_the_gram_route_is_taken_where_cheaper_and_is_oracle_exact(kind, monkeypatch):
    import nfk_nb.fitting as fitting

    calls = []
    real = fitting.gram_fit
    monkeypatch.setattr(fitting, "gram_fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    net = mlp()
    X = _data((6,), n=40)
    lik = nfk.Classifier(net)
    K = nfk.fisher_kernel(lik, X, fisher=kind)
    evals = torch.linalg.eigvalsh(K).flip(0)
    est = nfk.LowRankNFK(lik, rank=4, fisher=kind, progress=False, batch_size=16)
    E = est.fit_transform(X)
    assert calls == [1]  # N² (in + out) per layer is far below the sketch's passes here
    err = torch.linalg.matrix_norm(K - E @ E.T) / evals[4:].pow(2).sum().sqrt()
    assert float(err) < 1.0 + 1e-6
    torch.testing.assert_close(est.transform(X), E, rtol=1e-8, atol=1e-10)
    assert est.trace_ == pytest.approx(float(K.trace()), rel=1e-10)
    # the default diagonal metric has no Hadamard blocks: always the sketch
    nfk.LowRankNFK(lik, rank=4, progress=False, batch_size=16).fit(X)
    assert calls == [1]


def test_symmetric_gram_blocks():
    from nfk_nb.gram import _gram

    R = torch.randn(37, 5)
    torch.testing.assert_close(_gram(R, step=8), R @ R.T)


class NormNet(nn.Module):
    """Conv -> BatchNorm2d -> Linear -> LayerNorm -> BatchNorm1d (no bias) -> head: the norms'
    affine parameters get closed-form per-example gradients; the GroupNorm keeps torch.func."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.gn = nn.GroupNorm(1, 3)
        self.fc = nn.Linear(48, 6)
        self.ln = nn.LayerNorm(6)
        self.bn1 = nn.BatchNorm1d(6, affine=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.gn(self.bn(self.conv(x))))
        h = torch.tanh(self.bn1(self.ln(self.fc(h.flatten(1)))))
        return self.head(h)


def test_normalisation_layers_have_closed_form_gradients():
    torch.manual_seed(2)
    net = NormNet()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for m in (net.bn, net.bn1):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net.eval()
    X = _data((2, 4, 4), n=11)
    lik = nfk.Classifier(net)
    op = make_operator(lik, CPU, torch.float64)
    batch = op.to_batch((X,))
    G = _oracle_grads(net, lik, X)
    torch.testing.assert_close(op.per_example_grads(batch), G, rtol=1e-12, atol=1e-12)
    assert [n.module_name for n in op.norms] == ["bn", "ln", "bn1"]
    assert op.rest == ["gn.weight", "gn.bias"]
    T, A = torch.randn(7, op.P), torch.randn(len(X), 7)
    op.choices[("layerwise", 7)] = "layerwise"
    torch.testing.assert_close(op.jvp(batch, T), G @ T.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.vjp(batch, A), A.T @ G, rtol=1e-10, atol=1e-12)
    V = oracle_vectors(G, G, True, "diagonal", nfk.fisher.DEFAULT_DAMPING)
    K = nfk.fisher_kernel(lik, X, batch_size=4)
    torch.testing.assert_close(K, V @ V.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spread", [1.0, 1e-4, 1e-7])
def test_centred_square_sum_does_not_cancel(spread):
    """``Σ (d aᵀ - M)²`` from GEMMs equals the formed sum, also when the factors barely vary."""
    from nfk_nb.layerwise import _centred_square_sum

    g = torch.Generator().manual_seed(0)
    a = (1 + spread * torch.randn(40, 6, generator=g)).float().double()  # float32-rounded, like a capture
    d = (2 + spread * torch.randn(40, 4, generator=g)).float().double()
    M = (d[:, :, None] * a[:, None, :]).mean(0).float().double()  # a mean rounded to float32
    # the oracle: exact rational arithmetic (fractions) on the same float64 inputs
    exact = torch.zeros(4, 6, dtype=torch.float64)
    from fractions import Fraction

    for o in range(4):
        for j in range(6):
            m = Fraction(float(M[o, j]))
            exact[o, j] = float(sum((Fraction(float(d[i, o])) * Fraction(float(a[i, j])) - m) ** 2
                                    for i in range(40)))
    got = _centred_square_sum(a, d, M)
    torch.testing.assert_close(got, exact, rtol=1e-8, atol=0)


def test_exact_kernel_memory_check_counts_the_layerwise_features():
    from nfk_nb.errors import NFKMemoryError

    net = mlp()
    X = _data((6,), n=30)
    lik = nfk.Classifier(net)
    P = sum(p.numel() for p in net.parameters())
    per_example = (6 + 1 + 7) + (7 + 1 + 7) + (7 + 1 + 3)  # T·(in + out) per Hadamard layer
    need = (30 * per_example + 30 * 30) * 8
    assert need < 30 * P * 8  # the layer-wise budget is below the N×P one
    nfk.fisher_kernel(lik, X, fisher="identity", max_memory=need)
    with pytest.raises(NFKMemoryError):
        nfk.fisher_kernel(lik, X, fisher="identity", max_memory=need - 8)
