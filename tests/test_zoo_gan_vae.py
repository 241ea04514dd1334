"""The GAN and VAE of the zoo: shapes, seeding, and that they plug into the NFK likelihoods."""

from __future__ import annotations

import pytest
import torch

import nfk_nb as nfk
from nfk_nb.data import load_digits
from nfk_nb.errors import NFKError
from nfk_nb.zoo.gan import GANResult, make_gan, penultimate, train_gan
from nfk_nb.zoo.vae import VAEResult, latent_mean, make_vae, negative_elbo, train_vae

from .helpers import same_params

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    X, y, _, _ = load_digits()
    return X[:256], y[:256]


def test_make_gan_shapes_and_seeding() -> None:
    state = torch.random.get_rng_state()
    g, d = make_gan(data_dim=64, latent_dim=16, hidden=32, seed=3)
    assert torch.equal(state, torch.random.get_rng_state()), "make_gan must not move the global RNG"
    x = g(torch.randn(5, 16)).detach()
    assert x.shape == (5, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert d(x).shape == (5, 1)
    g2, d2 = make_gan(data_dim=64, latent_dim=16, hidden=32, seed=3)
    _, d3 = make_gan(data_dim=64, latent_dim=16, hidden=32, seed=4)
    assert same_params(g, g2) and same_params(d, d2)
    assert not same_params(d, d3)


def test_train_gan_is_seeded_and_leaves_eval_mode(digits) -> None:
    X, _ = digits
    state = torch.random.get_rng_state()
    r1 = train_gan(X, latent_dim=8, epochs=2, hidden=32, seed=1)
    assert torch.equal(state, torch.random.get_rng_state()), "training must not move the global RNG"
    r2 = train_gan(X, latent_dim=8, epochs=2, hidden=32, seed=1)
    assert isinstance(r1, GANResult) and r1.latent_dim == 8
    assert len(r1.losses["d"]) == len(r1.losses["g"]) == 2
    assert r1.losses == r2.losses and same_params(r1.discriminator, r2.discriminator)
    assert not r1.generator.training and not r1.discriminator.training
    assert penultimate(r1.discriminator, X[:7]).shape == (7, 32)


def test_gan_sampler_follows_the_global_rng(digits) -> None:
    r = train_gan(digits[0], latent_dim=8, epochs=1, hidden=16, seed=0)
    torch.manual_seed(5)
    a = r.sampler(10)
    torch.manual_seed(5)
    b = r.sampler(10)
    assert a.shape == (10, 64) and torch.equal(a, b) and not a.requires_grad
    lik = nfk.EnergyModel(r.discriminator, sampler=r.sampler, n_samples=32)
    assert torch.equal(lik.draw_reference(2), lik.draw_reference(2))
    assert not torch.equal(lik.draw_reference(2), lik.draw_reference(3))


def test_gan_nfk_fits_end_to_end(digits) -> None:
    X, _ = digits
    r = train_gan(X, latent_dim=8, epochs=1, hidden=16, seed=0)
    lik = nfk.EnergyModel(r.discriminator, sampler=r.sampler, n_samples=64)
    est = nfk.LowRankNFK(lik, rank=4, progress=False)
    E = est.fit_transform(X[:64])
    assert E.shape == (64, 4) and torch.isfinite(E).all()
    assert torch.allclose(est.transform(X[:64]), E, atol=1e-4, rtol=1e-3)


def test_train_rejects_bad_input() -> None:
    with pytest.raises(NFKError):
        train_gan(torch.rand(10))
    with pytest.raises(NFKError):
        train_vae(torch.rand(10, 4), epochs=0)
    with pytest.raises(NFKError):
        make_vae(latent_dim=0)


def test_make_vae_shapes_and_seeding() -> None:
    enc, dec = make_vae(data_dim=64, latent_dim=4, hidden=32, seed=0)
    mu, logvar = enc(torch.rand(3, 64))
    assert mu.shape == logvar.shape == (3, 4)
    assert dec(mu).shape == (3, 64)
    enc2, dec2 = make_vae(data_dim=64, latent_dim=4, hidden=32, seed=0)
    assert same_params(enc, enc2) and same_params(dec, dec2)


def test_train_vae_lowers_the_loss_and_is_seeded(digits) -> None:
    X, _ = digits
    r1 = train_vae(X, latent_dim=4, epochs=5, hidden=32, seed=2)
    r2 = train_vae(X, latent_dim=4, epochs=5, hidden=32, seed=2)
    assert isinstance(r1, VAEResult) and len(r1.losses) == 5
    assert r1.losses == r2.losses
    assert r1.losses[-1] < r1.losses[0]
    assert not r1.encoder.training and not r1.decoder.training
    assert latent_mean(r1.encoder, X[:9]).shape == (9, 4)


def test_vae_likelihood_is_the_zoo_elbo(digits) -> None:
    """``nfk.VAE`` with one MC sample scores exactly the ELBO the zoo trains on (same noise)."""
    X, _ = digits
    r = train_vae(X, latent_dim=4, epochs=1, hidden=16, seed=0)
    lik = nfk.VAE(r.encoder, r.decoder)
    x, eps = lik.prepare((X[:6],))
    with torch.no_grad():
        ours = lik.log_prob(lik.model, (x, eps))
        zoo = -negative_elbo(r.encoder, r.decoder, x, eps[:, 0])
    torch.testing.assert_close(ours, zoo)
