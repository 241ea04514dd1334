"""Exact kernels of every family against the autograd-loop oracle, in float64, to 1e-6 relative."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import nfk_nb as nfk
from nfk_nb.fisher import DEFAULT_DAMPING

from . import oracle

N, D, C = 24, 5, 3
TOL = 1e-6


pytestmark = pytest.mark.usefixtures("float64_default")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g), torch.randint(0, C, (N,), generator=g)


@pytest.fixture
def net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D, 7), nn.Tanh(), nn.Linear(7, C)).double()


@pytest.mark.parametrize("score", ["joint", "label", "predicted"])
@pytest.mark.parametrize("fisher", ["diagonal", "identity"])
def test_classifier_matches_oracle(net, data, score, fisher):
    X, y = data
    lik = nfk.Classifier(net, score=score)
    K = nfk.fisher_kernel(lik, (X, y), fisher=fisher)

    def logp(i):
        f = net(X[i : i + 1])[0]
        if score == "joint":
            return torch.logsumexp(f, -1)
        ls = torch.log_softmax(f, -1)
        return ls[y[i]] if score == "label" else ls[f.argmax()]

    G = oracle.per_example_grads(net, lik.param_names, logp, range(N))
    V = oracle.fisher_vectors(G, G, score == "joint", fisher, DEFAULT_DAMPING)
    assert rel(K, V @ V.T) < TOL
    assert rel(nfk.fisher_vectors(lik, (X, y), fisher=fisher), V) < TOL


def test_classifier_joint_with_sampler_uses_samples(net, data):
    X, _ = data
    sampler = lambda n: torch.randn(n, D) * 2.0  # noqa: E731
    lik = nfk.Classifier(net, score="joint", sampler=sampler, n_samples=50)
    K = nfk.fisher_kernel(lik, X, seed=3)
    torch.manual_seed(3)
    S = sampler(50)
    lp = lambda x: torch.logsumexp(net(x[None])[0], -1)  # noqa: E731
    G = oracle.per_example_grads(net, lik.param_names, lambda i: lp(X[i]), range(N))
    Gs = oracle.per_example_grads(net, lik.param_names, lambda i: lp(S[i]), range(50))
    m = Gs.mean(0)
    diag = ((Gs - m) ** 2).mean(0)
    V = (G - m) / (diag + DEFAULT_DAMPING * diag.mean()).sqrt()
    assert rel(K, V @ V.T) < TOL


def test_energy_model_partition_from_generator(data):
    X, _ = data
    torch.manual_seed(2)
    disc = nn.Sequential(nn.Linear(D, 6), nn.Softplus(), nn.Linear(6, 1))
    gen = nn.Sequential(nn.Linear(3, D))
    sampler = lambda n: gen(torch.randn(n, 3))  # noqa: E731
    lik = nfk.EnergyModel(disc, sampler=sampler, n_samples=64)
    K = nfk.fisher_kernel(lik, X, seed=7)
    with torch.no_grad():
        torch.manual_seed(7)
        S = sampler(64)
    G = oracle.per_example_grads(disc, lik.param_names, lambda i: disc(X[i : i + 1])[0, 0], range(N))
    Gs = oracle.per_example_grads(disc, lik.param_names, lambda i: disc(S[i : i + 1])[0, 0], range(64))
    V = oracle.fisher_vectors(G, Gs, True, "diagonal", DEFAULT_DAMPING)
    assert rel(K, V @ V.T) < TOL


def test_vae_elbo_matches_oracle():
    torch.manual_seed(4)
    X = torch.rand(N, 6)
    enc = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))  # mu, logvar of a 2-d latent
    dec = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 6))
    lik = nfk.VAE(enc, dec, n_mc=3)
    K = nfk.fisher_kernel(lik, X)
    eps = lik.prepare((X,))[1]  # the seeded per-example noise (same input, same noise)

    def elbo(i):
        h = enc(X[i : i + 1])[0]
        mu, logvar = h[:2], h[2:]
        total = 0.0
        for s in range(3):
            z = mu + torch.exp(0.5 * logvar) * eps[i, s]
            logits = dec(z[None])[0]
            total = total - F.binary_cross_entropy_with_logits(logits, X[i], reduction="sum")
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum()
        return total / 3 - kl

    G = oracle.per_example_grads(lik.model, lik.param_names, elbo, range(N))
    V = oracle.fisher_vectors(G, G, False, "diagonal", DEFAULT_DAMPING)
    assert rel(K, V @ V.T) < TOL


def test_vae_noise_depends_on_content_not_position():
    torch.manual_seed(0)
    X = torch.rand(5, 6)
    enc, dec = nn.Linear(6, 4), nn.Linear(2, 6)
    lik = nfk.VAE(enc, dec, n_mc=2)
    a = lik.prepare((X,))[1]
    b = lik.prepare((X.flip(0),))[1]
    assert torch.equal(a, b.flip(0))
    assert not torch.equal(a[0], a[1])


def test_gaussian_vae_and_regressor(data):
    X, _ = data
    torch.manual_seed(5)
    y = torch.randn(N, 2)
    net = nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, 2))
    lik = nfk.Regressor(net, sigma=0.5)
    K = nfk.fisher_kernel(lik, (X, y))
    G = oracle.per_example_grads(
        net, lik.param_names, lambda i: -((y[i] - net(X[i : i + 1])[0]) ** 2).sum() / (2 * 0.25), range(N)
    )
    V = oracle.fisher_vectors(G, G, False, "diagonal", DEFAULT_DAMPING)
    assert rel(K, V @ V.T) < TOL


def test_custom_likelihood_and_parameter_subset(net, data):
    X, y = data

    def log_prob(model, batch):
        x, t = batch
        return -F.cross_entropy(model(x), t, reduction="none") * 0.5

    lik = nfk.Likelihood(log_prob, net, params="2.*", partition="data")
    assert lik.param_names == ["2.weight", "2.bias"]
    K = nfk.fisher_kernel(lik, (X, y))
    G = oracle.per_example_grads(
        net, lik.param_names, lambda i: -0.5 * F.cross_entropy(net(X[i : i + 1]), y[i : i + 1]), range(N)
    )
    V = oracle.fisher_vectors(G, G, True, "diagonal", DEFAULT_DAMPING)
    assert rel(K, V @ V.T) < TOL


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
    G = oracle.per_example_grads(net, lik.param_names, lambda i: lp(X[i]), range(N))
    Gz = oracle.per_example_grads(net, lik.param_names, lambda i: lp(Z[i]), range(6))
    m = G.mean(0)
    diag = ((G - m) ** 2).mean(0)
    scale = (diag + DEFAULT_DAMPING * diag.mean()).rsqrt()
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


def test_vae_mean_code_is_the_noise_free_elbo():
    torch.manual_seed(4)
    X = torch.rand(N, 6)
    enc = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))
    dec = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 6))
    lik = nfk.VAE(enc, dec, n_mc=0)
    K = nfk.fisher_kernel(lik, X)

    def elbo(i):
        h = enc(X[i : i + 1])[0]
        mu, logvar = h[:2], h[2:]
        rec = -F.binary_cross_entropy_with_logits(dec(mu[None])[0], X[i], reduction="sum")
        return rec - 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum()

    G = oracle.per_example_grads(lik.model, lik.param_names, elbo, range(N))
    V = oracle.fisher_vectors(G, G, False, "diagonal", DEFAULT_DAMPING)
    assert rel(K, V @ V.T) < TOL
    with pytest.raises(nfk.NFKError, match="n_mc must be 0"):
        nfk.VAE(enc, dec, n_mc=-1)
