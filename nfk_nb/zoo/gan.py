"""A small MLP GAN for 8×8 digits: generator, discriminator, seeded training loop.

The discriminator outputs a logit ``D(x)`` (shape ``(B, 1)``), which :class:`nfk_nb.EnergyModel`
reads as ``log p̃(x)``; the generator outputs pixels in [0, 1] (sigmoid), like the digits.
Training is the non-saturating GAN loss with Adam; about ten seconds on a CPU at the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from ..errors import NFKError
from ._loop import check_flat, seeded, train_gan_epochs, train_pair
from .classifier import penultimate as features_before_head


def make_gan(
    data_dim: int = 64, latent_dim: int = 16, hidden: int = 128, seed: int = 0
) -> tuple[nn.Sequential, nn.Sequential]:
    """A generator ``z -> x`` and a discriminator ``x -> logit``, seeded initialisation.

    Parameters
    ----------
    data_dim : int
        Pixels per example (64 for 8×8 digits).
    latent_dim : int
        Dimension of the generator's Gaussian input.
    hidden : int
        Width of the hidden layers (two in each network).
    seed : int
        Seed of the initialisation; the global RNG is left as it was.

    Returns
    -------
    generator, discriminator : nn.Sequential
        The discriminator's last module is the logit layer, so ``discriminator[:-1]`` gives its
        penultimate features.
    """
    if min(data_dim, latent_dim, hidden) < 1:
        raise NFKError("data_dim, latent_dim and hidden must be positive.")
    with seeded(seed):
        generator = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, data_dim), nn.Sigmoid(),
        )
        discriminator = nn.Sequential(
            nn.Linear(data_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )
    return generator, discriminator


@dataclass
class GANResult:
    """A trained GAN: both networks (in eval mode), the latent size and the loss history."""

    generator: nn.Module
    discriminator: nn.Module
    latent_dim: int
    losses: dict[str, list[float]] = field(default_factory=dict)

    def sampler(self, n: int) -> Tensor:
        """``n`` generator samples ``G(z)``, ``z ~ N(0, I)`` from the global RNG (seed it outside)."""
        with torch.no_grad():
            return self.generator(torch.randn(n, self.latent_dim))


def train_gan(
    X: Tensor, *, latent_dim: int = 16,  # with hidden: the networks (make_gan)
    epochs: int = 150, batch_size: int = 64, lr: float = 5e-4, seed: int = 0,  # see train_gan_epochs
    hidden: int = 128,
) -> GANResult:
    """Train a GAN on ``X`` (N, D) with the non-saturating loss and Adam (β₁ = 0.5).

    Parameters
    ----------
    X : Tensor
        Training data, values in [0, 1] (the generator ends in a sigmoid).
    latent_dim, hidden
        Passed to :func:`make_gan`.
    epochs, batch_size, lr
        Optimisation settings; one discriminator step and one generator step per batch.
    seed : int
        Seeds the initialisation, the batch order and the latent draws (the global RNG is untouched).

    Returns
    -------
    GANResult
        With per-epoch mean losses ``losses["d"]`` and ``losses["g"]``.
    """
    check_flat(X)
    return train_pair(GANResult, partial(make_gan, X.shape[1], latent_dim, hidden, seed), train_gan_epochs, X,
                      latent_dim, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def penultimate(discriminator: nn.Sequential, X: Tensor) -> Tensor:
    """The discriminator's features before its logit layer (its own representation of ``X``)."""
    discriminator.eval()
    return features_before_head(discriminator, X)
