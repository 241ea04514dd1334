"""Every family against the independent autograd-loop oracle, in float64, to 1e-6 relative.

The oracle (``tests/oracle.py``) never asks the package what the truth is: parameter names, the
damping and σ are literals here, and each ``log p̃`` is written out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import nfk_nb as nfk

from . import oracle
from .oracle import rel

N, D, C = 24, 5, 3
TOL = 1e-6
DAMPING = 1e-2  # the documented default relative damping (README "The math", docs/design.md)
NET_NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]  # θ of _net(): every parameter


pytestmark = pytest.mark.usefixtures("float64_default")


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g), torch.randint(0, C, (N,), generator=g)


def _net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D, 7), nn.Tanh(), nn.Linear(7, C)).double()


@pytest.fixture
def data():
    return _data()


@pytest.fixture
def net():
    return _net()


# -- every family against the oracle ------------------------------------------------------------------
# Each case states its own truth: the parameter names the package must select, the tensors the oracle
# differentiates (taken from the module directly), and log p̃ written out by hand. The damping is the
# literal DAMPING, never the package's constant, so changing the default is caught.


@dataclass
class Case:
    lik: nfk.Likelihood
    data: object
    names: list[str]           # expected θ, in the module's order
    params: list[torch.Tensor]  # the same tensors, for the oracle
    logp: Callable[[torch.Tensor, int], torch.Tensor]  # logp(inputs, i): log p̃ of example i
    x: torch.Tensor            # the inputs that logp indexes
    centered: bool
    ref: torch.Tensor | None = None  # sampler draws (the reference set) when not the data
    seed: int = 0


def _mlp_params(net: nn.Sequential, prefix: str = "") -> tuple[list[str], list[torch.Tensor]]:
    names = [f"{prefix}0.weight", f"{prefix}0.bias", f"{prefix}2.weight", f"{prefix}2.bias"]
    return names, [net[0].weight, net[0].bias, net[2].weight, net[2].bias]


def _classifier(score: str) -> Case:
    X, y = _data()
    net = _net()
    names, params = _mlp_params(net)

    def logp(x, i):
        f = net(x[i : i + 1])[0]
        if score == "joint":
            return torch.logsumexp(f, -1)
        ls = f - torch.logsumexp(f, -1)
        return ls[y[i]] if score == "label" else ls[f.argmax()]

    return Case(nfk.Classifier(net, score=score), (X, y), names, params, logp, X, score == "joint")


def _classifier_sampler() -> Case:
    X, _ = _data()
    net = _net()
    names, params = _mlp_params(net)
    sampler = lambda n: torch.randn(n, D) * 2.0  # noqa: E731
    lik = nfk.Classifier(net, score="joint", sampler=sampler, n_samples=50)
    torch.manual_seed(3)  # the estimator draws sampler(n_samples) once under its seed
    S = sampler(50)
    return Case(lik, X, names, params, lambda x, i: torch.logsumexp(net(x[i : i + 1])[0], -1), X,
                True, ref=S, seed=3)


def _energy() -> Case:
    X, _ = _data()
    torch.manual_seed(2)
    disc = nn.Sequential(nn.Linear(D, 6), nn.Softplus(), nn.Linear(6, 1))
    gen = nn.Sequential(nn.Linear(3, D))
    sampler = lambda n: gen(torch.randn(n, 3))  # noqa: E731
    with torch.no_grad():
        torch.manual_seed(7)
        S = sampler(64)
    names, params = _mlp_params(disc)
    lik = nfk.EnergyModel(disc, sampler=sampler, n_samples=64)
    return Case(lik, X, names, params, lambda x, i: disc(x[i : i + 1])[0, 0], X, True, ref=S, seed=7)


def _regressor() -> Case:
    X, _ = _data()
    torch.manual_seed(5)
    y = torch.randn(N, 2)
    net = nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, 2))
    names, params = _mlp_params(net)
    # log p(y|x) = -‖y - f(x)‖² / (2σ²) with σ = 0.5, i.e. divided by 0.5
    logp = lambda x, i: -((y[i] - net(x[i : i + 1])[0]) ** 2).sum() / 0.5  # noqa: E731
    return Case(nfk.Regressor(net, sigma=0.5), (X, y), names, params, logp, X, False)


def _vae(likelihood: str, n_mc: int) -> Case:
    torch.manual_seed(4)
    X = torch.rand(N, 6)
    enc = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))  # mu, logvar of a 2-d latent
    dec = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 6))
    lik = nfk.VAE(enc, dec, n_mc=n_mc, likelihood=likelihood, sigma=0.5)
    enc_names, enc_params = _mlp_params(enc, "encoder.")
    dec_names, dec_params = _mlp_params(dec, "decoder.")
    # the noise is data (seeded per example by content); the oracle only needs its values
    eps = lik.prepare((X,))[1] if n_mc else torch.zeros(N, 1, 2)
    assert eps.shape == (N, max(n_mc, 1), 2)

    def log_px_given_z(x, z):
        out = dec(z[None])[0]
        if likelihood == "bernoulli":  # x log σ(o) + (1 - x) log σ(-o)
            return (x * F.logsigmoid(out) + (1 - x) * F.logsigmoid(-out)).sum()
        # Gaussian with σ = 0.5: -‖x - o‖² / (2·0.25) - (d/2) log(2π·0.25)
        return -((x - out) ** 2).sum() / 0.5 - 3.0 * math.log(2 * math.pi * 0.25)

    def elbo(x, i):
        h = enc(x[i : i + 1])[0]
        mu, logvar = h[:2], h[2:]
        rec = sum(log_px_given_z(x[i], mu + torch.exp(0.5 * logvar) * e) for e in eps[i])
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum()
        return rec / len(eps[i]) - kl

    return Case(lik, X, enc_names + dec_names, enc_params + dec_params, elbo, X, False)


def _custom() -> Case:
    X, y = _data()
    net = _net()

    def log_prob(model, batch):
        x, t = batch
        return -F.cross_entropy(model(x), t, reduction="none") * 0.5

    lik = nfk.Likelihood(log_prob, net, params="2.*", partition="data")
    logp = lambda x, i: 0.5 * torch.log_softmax(net(x[i : i + 1])[0], -1)[y[i]]  # noqa: E731
    return Case(lik, (X, y), ["2.weight", "2.bias"], [net[2].weight, net[2].bias], logp, X, True)


CASES = {
    "joint": lambda: _classifier("joint"),
    "label": lambda: _classifier("label"),
    "predicted": lambda: _classifier("predicted"),
    "joint_sampler": _classifier_sampler,
    "energy": _energy,
    "regressor": _regressor,
    "vae_bernoulli": lambda: _vae("bernoulli", 3),
    "vae_bernoulli_mean_code": lambda: _vae("bernoulli", 0),
    "vae_gaussian": lambda: _vae("gaussian", 2),
    "vae_gaussian_mean_code": lambda: _vae("gaussian", 0),
    "custom": _custom,
}


def oracle_vectors(case: Case, fisher: str, damping: float = DAMPING) -> torch.Tensor:
    G = oracle.param_grads(case.params, lambda i: case.logp(case.x, i), range(len(case.x)))
    G_ref = G
    if case.ref is not None:
        G_ref = oracle.param_grads(case.params, lambda i: case.logp(case.ref, i), range(len(case.ref)))
    return oracle.fisher_vectors(G, G_ref, case.centered, fisher, damping)


@pytest.mark.parametrize("fisher", ["diagonal", "identity"])
@pytest.mark.parametrize("name", list(CASES))
def test_family_matches_oracle(name, fisher):
    """Exact kernel and Fisher vectors at the default damping; identity Fisher shows constant factors."""
    case = CASES[name]()
    assert case.lik.param_names == case.names
    V = oracle_vectors(case, fisher)
    K = nfk.fisher_kernel(case.lik, case.data, fisher=fisher, seed=case.seed)
    assert rel(K, V @ V.T) < TOL
    assert rel(nfk.fisher_vectors(case.lik, case.data, fisher=fisher, seed=case.seed), V) < TOL


@pytest.mark.parametrize("name", list(CASES))
def test_low_rank_at_full_rank_matches_oracle(name):
    """The matrix-free path (JVP/VJP products, offset, scaling) with default settings, at full rank."""
    case = CASES[name]()
    V = oracle_vectors(case, "diagonal")
    est = nfk.LowRankNFK(case.lik, rank=N, seed=case.seed, progress=False)
    E = est.fit_transform(case.data)
    assert est.damping == DAMPING and est.fisher_.damping == DAMPING
    assert rel(E @ E.T, V @ V.T) < TOL
    # trace K = Σ‖v(x)‖², computed by the package in its Fisher pass (or one more pass)
    assert math.isclose(est.trace_, float((V**2).sum()), rel_tol=TOL)


def test_damping_other_than_default_matches_oracle():
    case = _classifier("joint")
    V = oracle_vectors(case, "diagonal", damping=0.3)
    assert rel(nfk.fisher_kernel(case.lik, case.data, damping=0.3), V @ V.T) < TOL


def test_vae_noise_depends_on_content_not_position():
    torch.manual_seed(0)
    X = torch.rand(5, 6)
    enc, dec = nn.Linear(6, 4), nn.Linear(2, 6)
    lik = nfk.VAE(enc, dec, n_mc=2)
    a = lik.prepare((X,))[1]
    b = lik.prepare((X.flip(0),))[1]
    assert torch.equal(a, b.flip(0))
    assert not torch.equal(a[0], a[1])


def test_parameter_selectors(net):
    assert nfk.Classifier(net, params=["0.weight"]).param_names == ["0.weight"]
    assert nfk.Classifier(net, params=lambda n, p: n.endswith("bias")).param_names == ["0.bias", "2.bias"]
    with pytest.raises(nfk.NFKError, match="selects no parameter"):
        nfk.Classifier(net, params="nothing.*")


def test_kernel_between_two_sets_uses_x_as_reference(net, data):
    X, y = data
    Z = torch.randn(6, D)
    lik = nfk.Classifier(net, score="joint")
    Kxz = nfk.fisher_kernel(lik, X, Z)
    lp = lambda x: torch.logsumexp(net(x[None])[0], -1)  # noqa: E731
    G = oracle.per_example_grads(net, NET_NAMES, lambda i: lp(X[i]), range(N))
    Gz = oracle.per_example_grads(net, NET_NAMES, lambda i: lp(Z[i]), range(6))
    m = G.mean(0)
    diag = ((G - m) ** 2).mean(0)
    scale = (diag + DAMPING * diag.mean()).rsqrt()
    assert rel(Kxz, ((G - m) * scale) @ ((Gz - m) * scale).T) < TOL


def test_zero_damping_zero_information_coordinates_contribute_nothing(data):
    X, _ = data
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 4), nn.ReLU(), nn.Linear(4, C))
    with torch.no_grad():
        net[0].weight[0] = 0.0
        net[0].bias[0] = -10.0  # unit 0 is dead: its parameters get zero gradient everywhere
    lik = nfk.Classifier(net)
    V = nfk.fisher_vectors(lik, X, damping=0.0)
    assert torch.isfinite(V).all()
    assert V[:, :D].abs().max() == 0.0


def test_input_forms_agree(net, data):
    X, y = data
    lik = nfk.Classifier(net, score="label")
    ref = nfk.fisher_kernel(lik, (X, y), batch_size=5)
    ds = TensorDataset(X, y)
    assert rel(nfk.fisher_kernel(lik, ds), ref) < 1e-12
    assert rel(nfk.fisher_kernel(lik, DataLoader(ds, batch_size=7)), ref) < 1e-12
    assert rel(nfk.fisher_kernel(lik, (X.numpy(), y.numpy())), ref) < 1e-12


def test_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    torch.manual_seed(0)
    net = Tied()
    X = torch.randn(10, 4)
    lik = nfk.Classifier(net)
    assert lik.param_names == ["a.weight"]
    K = nfk.fisher_kernel(lik, X, fisher="identity")
    G = oracle.per_example_grads(
        net, ["a.weight"], lambda i: torch.logsumexp(net(X[i : i + 1])[0], -1), range(10)
    )
    G = G - G.mean(0)
    assert rel(K, G @ G.T) < TOL


def test_exact_refuses_what_does_not_fit(net, data):
    X, _ = data
    with pytest.raises(nfk.NFKMemoryError, match="LowRankNFK"):
        nfk.fisher_kernel(nfk.Classifier(net), X, max_memory=1000)


def test_float32_model_gives_float32_scores_close_to_float64(data):
    X, y = data
    torch.manual_seed(1)
    net64 = nn.Sequential(nn.Linear(D, 7), nn.Tanh(), nn.Linear(7, C))
    net32 = nn.Sequential(nn.Linear(D, 7), nn.Tanh(), nn.Linear(7, C)).float()
    assert next(net64.parameters()).dtype == torch.float64
    net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
    K64 = nfk.fisher_kernel(nfk.Classifier(net64), X)
    K32 = nfk.fisher_kernel(nfk.Classifier(net32), X.float())
    assert K32.dtype == torch.float32
    assert rel(K32.double(), K64) < 1e-4
    assert math.isfinite(float(K32.sum()))


def test_vae_refuses_negative_n_mc():
    with pytest.raises(nfk.NFKError, match="n_mc must be 0"):
        nfk.VAE(nn.Linear(6, 4), nn.Linear(2, 6), n_mc=-1)


