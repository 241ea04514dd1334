"""A small MLP variational auto-encoder for 8×8 digits, with a seeded training loop.

The encoder returns ``(mu, logvar)`` and the decoder Bernoulli logits, the interface
:class:`nfk_nb.VAE` expects. A few seconds on a CPU at the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from ..errors import NFKError
from ._loop import check_flat, seeded, train_pair, train_vae_epochs
from ._loop import negative_elbo as negative_elbo  # public here: the loss train_vae minimises


class GaussianEncoder(nn.Module):
    """``x -> (mu, logvar)``: a body with ``features`` outputs and two linear heads (created in this
    order, so a seeded initialisation does not depend on the kind of body)."""

    def __init__(self, body: nn.Module, features: int, latent_dim: int) -> None:
        super().__init__()
        self.body = body
        self.mu = nn.Linear(features, latent_dim)
        self.logvar = nn.Linear(features, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)


class Encoder(GaussianEncoder):
    """``x -> (mu, logvar)``: an MLP body and two linear heads."""

    def __init__(self, data_dim: int, latent_dim: int, hidden: int) -> None:
        body = nn.Sequential(nn.Linear(data_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        super().__init__(body, hidden, latent_dim)


def make_vae(
    data_dim: int = 64, latent_dim: int = 8, hidden: int = 128, seed: int = 0
) -> tuple[Encoder, nn.Sequential]:
    """An encoder ``x -> (mu, logvar)`` and a decoder ``z -> Bernoulli logits``, seeded.

    Parameters
    ----------
    data_dim : int
        Pixels per example (64 for 8×8 digits).
    latent_dim : int
        Dimension of the latent code.
    hidden : int
        Width of the two hidden layers of each network.
    seed : int
        Seed of the initialisation; the global RNG is left as it was.
    """
    if min(data_dim, latent_dim, hidden) < 1:
        raise NFKError("data_dim, latent_dim and hidden must be positive.")
    with seeded(seed):
        encoder = Encoder(data_dim, latent_dim, hidden)
        decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, data_dim),
        )
    return encoder, decoder


@dataclass
class VAEResult:
    """A trained VAE: encoder and decoder (in eval mode), latent size, per-epoch negative ELBO."""

    encoder: nn.Module
    decoder: nn.Module
    latent_dim: int
    losses: list[float] = field(default_factory=list)


def train_vae(
    X: Tensor, *, latent_dim: int = 8,  # with hidden: the networks (make_vae)
    epochs: int = 100, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,  # see train_vae_epochs
    hidden: int = 128,
) -> VAEResult:
    """Train a Bernoulli VAE on ``X`` (N, D) in [0, 1] by maximising the ELBO with Adam.

    The parameters are those of :func:`~nfk_nb.zoo.gan.train_gan`, with ``latent_dim`` and
    ``hidden`` passed to :func:`make_vae` and ``seed`` seeding the reparameterisation noise instead
    of the latent draws. Returns a :class:`VAEResult` with the mean negative ELBO per epoch in
    ``losses``.
    """
    check_flat(X)
    return train_pair(VAEResult, partial(make_vae, X.shape[1], latent_dim, hidden, seed), train_vae_epochs, X,
                      latent_dim, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def latent_mean(encoder: nn.Module, X: Tensor) -> Tensor:
    """The encoder's posterior mean ``mu(x)``: the VAE's own representation of ``X``."""
    encoder.eval()
    with torch.no_grad():
        return encoder(X)[0]
