"""The minibatch loops the zoo's trainers share: shuffled batches, one optimiser step each (and the
GAN's alternating discriminator / generator steps)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def _step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad()
    loss.backward()
    opt.step()
