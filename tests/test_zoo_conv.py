"""The convolutional GAN and VAE of the zoo: shapes, seeding, and that they plug into the NFK likelihoods."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nfk_nb as nfk
from nfk_nb.errors import NFKError
from nfk_nb.zoo.conv import make_conv_gan, make_conv_vae, train_conv_gan, train_conv_vae
from nfk_nb.zoo.gan import penultimate
from nfk_nb.zoo.vae import latent_mean

from .helpers import same_params

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(96, 1, 12, 12, generator=torch.Generator().manual_seed(0))


def test_make_conv_gan_and_vae_shapes_and_seeding() -> None:
    state = torch.random.get_rng_state()
    g, d = make_conv_gan(size=12, latent_dim=5, width=4, seed=3)
    enc, dec = make_conv_vae(size=12, latent_dim=3, width=4, seed=3)
    assert torch.equal(state, torch.random.get_rng_state()), "constructors must not move the global RNG"
    x = g(torch.randn(2, 5)).detach()
    assert x.shape == (2, 1, 12, 12) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert d(x).shape == (2, 1) and penultimate(d, x).shape == (2, 8 * 3 * 3)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (2, 3) and dec(mu).shape == (2, 1, 12, 12)
    assert same_params(d, make_conv_gan(size=12, latent_dim=5, width=4, seed=3)[1])
    assert not same_params(d, make_conv_gan(size=12, latent_dim=5, width=4, seed=4)[1])
    with pytest.raises(NFKError, match="multiple of 4"):
        make_conv_gan(size=10)


def test_training_is_seeded_learns_and_leaves_eval_mode(images) -> None:
    state = torch.random.get_rng_state()
    gan = train_conv_gan(images, latent_dim=4, width=4, epochs=2, seed=1)
    vae = train_conv_vae(images, latent_dim=3, width=4, epochs=8, seed=1)
    assert torch.equal(state, torch.random.get_rng_state()), "training must not move the global RNG"
    assert gan.losses == train_conv_gan(images, latent_dim=4, width=4, epochs=2, seed=1).losses
    assert len(gan.losses["d"]) == 2 and not gan.discriminator.training and not vae.encoder.training
    assert vae.losses[-1] < vae.losses[0]
    with pytest.raises(NFKError, match="images of shape"):
        train_conv_gan(images.reshape(96, -1))


def test_conv_models_plug_into_the_nfk(images) -> None:
    gan = train_conv_gan(images, latent_dim=4, width=4, epochs=1, seed=0)
    vae = train_conv_vae(images, latent_dim=3, width=4, epochs=1, seed=0)
    X = images[:10].double()
    # the mean-code ELBO the library scores is the zoo's loss at z = mu
    lik = nfk.VAE(vae.encoder.double(), vae.decoder.double(), n_mc=0)
    mu, logvar = vae.encoder(X)
    rec = -F.binary_cross_entropy_with_logits(vae.decoder(mu), X, reduction="none").flatten(1).sum(-1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)
    with torch.no_grad():
        assert torch.allclose(lik.log_prob(lik.model, lik.prepare((X,))), rec - kl)
    E = nfk.LowRankNFK(lik, rank=4, progress=False).fit_transform(X)
    assert E.shape == (10, 4) and torch.isfinite(E).all()
    torch.manual_seed(0)
    disc = gan.discriminator.double()
    energy = nfk.EnergyModel(disc, sampler=lambda n: gan.sampler(n).double(), n_samples=32)
    E = nfk.LowRankNFK(energy, rank=4, progress=False).fit_transform(X)
    assert E.shape == (10, 4) and torch.isfinite(E).all()
    assert latent_mean(vae.encoder, X).shape == (10, 3)
