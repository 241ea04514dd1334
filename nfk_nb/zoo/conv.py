"""Small convolutional GAN and VAE for single-channel images (e.g. 24×24 cluttered digits).

DCGAN-style without normalisation layers (so examples never interact and ``vmap`` needs no
buffers): two stride-2 4×4 convolutions down, two transposed ones up. The discriminator returns a
logit ``(B, 1)`` for :class:`nfk_nb.EnergyModel`; the VAE encoder returns ``(mu, logvar)`` and the
decoder Bernoulli logits of the image's shape for :class:`nfk_nb.VAE`. The results reuse
:class:`~nfk_nb.zoo.gan.GANResult` and :class:`~nfk_nb.zoo.vae.VAEResult`, so
:func:`~nfk_nb.zoo.gan.penultimate` and :func:`~nfk_nb.zoo.vae.latent_mean` apply unchanged.
On 1,200 images of 24×24 (notebook 10), 20 epochs take about 9 s (GAN) and 3 s (VAE, ``width=8``) of
one CPU core.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from ..errors import NFKError
from ._loop import seeded, train_gan_epochs, train_pair, train_vae_epochs
from .gan import GANResult
from .vae import GaussianEncoder, VAEResult


def _check_images(X: Tensor) -> tuple[int, int]:
    if X.dim() != 4:
        raise NFKError(f"X must be images of shape (N, C, H, W), got shape {tuple(X.shape)}.")
    _, c, h, w = X.shape
    if h != w or h % 4:
        raise NFKError(f"Images must be square with a side divisible by 4, got {h}×{w}.")
    return c, h


def _down(channels: int, width: int) -> list[nn.Module]:
    """Two stride-2 convolutions: side s -> s/4, channels -> 2·width."""
    return [
        nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Flatten(),
    ]


def _up(latent_dim: int, channels: int, size: int, width: int) -> list[nn.Module]:
    """A linear map to a (2·width, s/4, s/4) map, then two stride-2 transposed convolutions."""
    s = size // 4
    return [
        nn.Linear(latent_dim, 2 * width * s * s), nn.LeakyReLU(0.2),
        nn.Unflatten(1, (2 * width, s, s)),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(width, channels, 4, 2, 1),
    ]


def make_conv_gan(
    size: int = 24, channels: int = 1, latent_dim: int = 32, width: int = 16, seed: int = 0
) -> tuple[nn.Sequential, nn.Sequential]:
    """A convolutional generator ``z -> image`` (sigmoid output) and discriminator ``image -> logit``.

    ``size`` is the image side (divisible by 4), ``channels`` the image channels and ``width`` the
    channels of the first convolution (the second has twice as many); ``latent_dim``, ``seed`` and
    the returned pair are as in :func:`~nfk_nb.zoo.gan.make_gan`, the discriminator's features
    before its logit layer being its flattened convolutional ones (``2·width·(size/4)²`` of them).
    """
    if size % 4 or min(size, channels, latent_dim, width) < 1:
        raise NFKError("size must be a positive multiple of 4; channels, latent_dim and width positive.")
    with seeded(seed):
        generator = nn.Sequential(*_up(latent_dim, channels, size, width), nn.Sigmoid())
        discriminator = nn.Sequential(*_down(channels, width),
                                      nn.Linear(2 * width * (size // 4) ** 2, 1))
    return generator, discriminator


class ConvEncoder(GaussianEncoder):
    """``image -> (mu, logvar)``: the discriminator's convolutional body and two linear heads."""

    def __init__(self, channels: int, size: int, latent_dim: int, width: int) -> None:
        super().__init__(nn.Sequential(*_down(channels, width)), 2 * width * (size // 4) ** 2, latent_dim)


def make_conv_vae(
    size: int = 24, channels: int = 1, latent_dim: int = 16, width: int = 16, seed: int = 0
) -> tuple[ConvEncoder, nn.Sequential]:
    """A convolutional encoder ``image -> (mu, logvar)`` and decoder ``z -> Bernoulli logits``.

    Parameters are those of :func:`make_conv_gan`; the decoder mirrors the generator without its
    sigmoid (it returns logits of shape ``(B, channels, size, size)``).
    """
    if size % 4 or min(size, channels, latent_dim, width) < 1:
        raise NFKError("size must be a positive multiple of 4; channels, latent_dim and width positive.")
    with seeded(seed):
        encoder = ConvEncoder(channels, size, latent_dim, width)
        decoder = nn.Sequential(*_up(latent_dim, channels, size, width))
    return encoder, decoder


def train_conv_gan(
    X: Tensor, *, latent_dim: int = 32, width: int = 16,  # the networks (make_conv_gan)
    epochs: int = 30, batch_size: int = 64, lr: float = 5e-4, seed: int = 0,  # see train_gan_epochs
) -> GANResult:
    """Train :func:`make_conv_gan` on images ``X`` (N, C, S, S) in [0, 1], non-saturating loss, Adam.

    One discriminator and one generator step per batch (β₁ = 0.5). ``seed`` seeds the
    initialisation, batch order and latent draws; the global RNG is untouched.

    Returns
    -------
    GANResult
        Networks in eval mode, with per-epoch mean losses ``losses["d"]`` and ``losses["g"]``.
    """
    channels, size = _check_images(X)
    make = partial(make_conv_gan, size, channels, latent_dim, width, seed)
    return train_pair(GANResult, make, train_gan_epochs, X, latent_dim, epochs=epochs,
                      batch_size=batch_size, lr=lr, seed=seed)


def train_conv_vae(
    X: Tensor, *, latent_dim: int = 16, width: int = 16,  # the networks (make_conv_vae)
    epochs: int = 30, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,  # see train_vae_epochs
) -> VAEResult:
    """Train :func:`make_conv_vae` on images ``X`` (N, C, S, S) in [0, 1] by maximising the ELBO.

    One reparameterised sample per example and step, Adam. ``seed`` seeds the initialisation, batch
    order and noise; the global RNG is untouched. Returns a :class:`VAEResult`, networks in eval
    mode, with the mean negative ELBO per epoch in ``losses``.
    """
    channels, size = _check_images(X)
    make = partial(make_conv_vae, size, channels, latent_dim, width, seed)
    return train_pair(VAEResult, make, train_vae_epochs, X, latent_dim, epochs=epochs,
                      batch_size=batch_size, lr=lr, seed=seed)
