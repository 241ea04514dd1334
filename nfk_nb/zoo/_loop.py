"""The minibatch loop the zoo's trainers share: shuffled batches, one optimiser step each."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


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
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / n)
    return losses
