"""The minibatch loops the zoo's trainers share: shuffled batches, one optimiser step each (and the
GAN's alternating discriminator / generator steps, the VAE's ELBO steps), and the checks of their
loop settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import NFKError

R = TypeVar("R")


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build modules under ``torch.manual_seed(seed)`` without touching the caller's CPU RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def loop_generator(epochs: int, batch_size: int, seed: int) -> torch.Generator:
    """Check the loop settings of a trainer and return the generator seeded with ``seed`` that
    orders its batches and draws its noise (the global RNG stays untouched)."""
    if epochs < 1 or batch_size < 1:
        raise NFKError("epochs and batch_size must be at least 1.")
    return torch.Generator().manual_seed(seed)


def check_flat(X: Tensor) -> None:
    """Refuse data that is not one row of pixels per example (the MLP GAN and VAE)."""
    if X.dim() != 2:
        raise NFKError(f"X must be 2-D (examples × pixels), got shape {tuple(X.shape)}.")


def train_pair(result: Callable[[nn.Module, nn.Module, int, Any], R],
               make: Callable[[], tuple[nn.Module, nn.Module]], loop: Callable[..., Any], X: Tensor,
               latent_dim: int, *, epochs: int, batch_size: int, lr: float, seed: int) -> R:
    """The body of the GAN and VAE trainers: check the loop settings, build the two networks with
    ``make()``, train them with ``loop`` (:func:`train_gan_epochs` or :func:`train_vae_epochs`) on
    a generator seeded with ``seed``, and wrap them as ``result(first, second, latent_dim, losses)``."""
    gen = loop_generator(epochs, batch_size, seed)
    first, second = make()
    losses = loop(first, second, X, latent_dim, epochs=epochs, batch_size=batch_size, lr=lr, gen=gen)
    return result(first, second, latent_dim, losses)


def train_epochs(n: int, epochs: int, batch_size: int, gen: torch.Generator, opt: torch.optim.Optimizer,
                 loss_of: Callable[[Tensor], Tensor]) -> list[float]:
    """``epochs`` passes over ``n`` examples in batches of indices drawn from ``gen`` (in order: the
    permutation, then whatever ``loss_of(indices)`` draws); returns the mean loss per epoch."""
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            loss = loss_of(idx)
            _step(opt, loss)
            total += loss.item() * len(idx)
        losses.append(total / n)
    return losses


def train_gan_epochs(generator: nn.Module, discriminator: nn.Module, X: Tensor, latent_dim: int, *,
                     epochs: int, batch_size: int, lr: float, gen: torch.Generator) -> dict[str, list[float]]:
    """Non-saturating GAN training with Adam (β₁ = 0.5): per batch one discriminator step (real -> 1,
    fake -> 0, softplus form of the logistic loss) and one generator step (maximise log D(G(z))).

    Leaves both networks in eval mode; returns the per-epoch mean losses ``{"d": [...], "g": [...]}``.
    """
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    losses: dict[str, list[float]] = {"d": [], "g": []}
    generator.train()
    discriminator.train()
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        total_d = total_g = 0.0
        for start in range(0, len(X), batch_size):
            real = X[perm[start : start + batch_size]]
            b = len(real)
            fake = generator(torch.randn(b, latent_dim, generator=gen))
            loss_d = F.softplus(-discriminator(real)).mean() + F.softplus(discriminator(fake.detach())).mean()
            _step(opt_d, loss_d)
            loss_g = F.softplus(-discriminator(fake)).mean()
            _step(opt_g, loss_g)
            total_d += loss_d.item() * b
            total_g += loss_g.item() * b
        losses["d"].append(total_d / len(X))
        losses["g"].append(total_g / len(X))
    generator.eval()
    discriminator.eval()
    return losses


def negative_elbo(encoder: nn.Module, decoder: nn.Module, x: Tensor, eps: Tensor) -> Tensor:
    """Per-example negative ELBO of a Bernoulli VAE with one reparameterised sample
    ``z = mu + σ·eps`` (the reconstruction term summed over all of an example's pixels)."""
    mu, logvar = encoder(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    rec = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").flatten(1).sum(-1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)
    return rec + kl


def train_vae_epochs(encoder: nn.Module, decoder: nn.Module, X: Tensor, latent_dim: int, *,
                     epochs: int, batch_size: int, lr: float, gen: torch.Generator) -> list[float]:
    """Maximise the ELBO with Adam, one reparameterised sample per example and step (noise drawn
    from ``gen``). Leaves both networks in eval mode; returns the mean negative ELBO per epoch."""
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    encoder.train()
    decoder.train()

    def loss_of(idx: Tensor) -> Tensor:
        eps = torch.randn(len(idx), latent_dim, generator=gen)  # reparameterisation noise, seeded
        return negative_elbo(encoder, decoder, X[idx], eps).mean()

    losses = train_epochs(len(X), epochs, batch_size, gen, opt, loss_of)
    encoder.eval()
    decoder.eval()
    return losses


def _step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad()
    loss.backward()
    opt.step()
