"""A small MLP variational auto-encoder for 8×8 digits, with a seeded training loop.

The encoder returns ``(mu, logvar)`` and the decoder Bernoulli logits, the interface
:class:`nfk_nb.VAE` expects. A few seconds on a CPU at the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import NFKError
from ._loop import train_epochs


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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


def negative_elbo(encoder: nn.Module, decoder: nn.Module, x: Tensor, eps: Tensor) -> Tensor:
    """Per-example negative ELBO with one reparameterised sample ``z = mu + σ·eps``."""
    mu, logvar = encoder(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    rec = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)
    return rec + kl


def train_vae(
    X: Tensor,
    *,
    latent_dim: int = 8,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    hidden: int = 128,
) -> VAEResult:
    """Train a Bernoulli VAE on ``X`` (N, D) in [0, 1] by maximising the ELBO with Adam.

    Parameters
    ----------
    X : Tensor
        Training data, values in [0, 1].
    latent_dim, hidden
        Passed to :func:`make_vae`.
    epochs, batch_size, lr
        Optimisation settings.
    seed : int
        Seeds the initialisation, the batch order and the reparameterisation noise (the global RNG
        is untouched).

    Returns
    -------
    VAEResult
        With the mean negative ELBO per epoch in ``losses``.
    """
    if X.dim() != 2:
        raise NFKError(f"X must be 2-D (examples × pixels), got shape {tuple(X.shape)}.")
    if epochs < 1 or batch_size < 1:
        raise NFKError("epochs and batch_size must be at least 1.")
    encoder, decoder = make_vae(X.shape[1], latent_dim, hidden, seed)
    gen = torch.Generator().manual_seed(seed)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    encoder.train()
    decoder.train()

    def loss_of(idx: Tensor) -> Tensor:
        eps = torch.randn(len(idx), latent_dim, generator=gen)  # reparameterisation noise, seeded
        return negative_elbo(encoder, decoder, X[idx], eps).mean()

    losses = train_epochs(len(X), epochs, batch_size, gen, opt, loss_of)
    encoder.eval()
    decoder.eval()
    return VAEResult(encoder, decoder, latent_dim, losses)


def latent_mean(encoder: nn.Module, X: Tensor) -> Tensor:
    """The encoder's posterior mean ``mu(x)``: the VAE's own representation of ``X``."""
    encoder.eval()
    with torch.no_grad():
        return encoder(X)[0]
