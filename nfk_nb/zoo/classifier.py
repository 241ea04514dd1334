"""MLP classifiers and their training loop (seeded, CPU-fast on scikit-learn digits)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._loop import train_epochs


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, seed: int = 0) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]``, seeded initialisation."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    torch.random.set_rng_state(gen_state)
    return nn.Sequential(*layers)


def train_classifier(
    net: nn.Module, X: Tensor, y: Tensor, *, epochs: int = 30, lr: float = 1e-3,
    batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0,
) -> list[float]:
    """Train with Adam and cross-entropy; returns the mean loss per epoch. Leaves ``net`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    losses = train_epochs(len(X), epochs, batch_size, gen, opt,
                          lambda idx: F.cross_entropy(net(X[idx]), y[idx]))
    net.eval()
    return losses


@torch.no_grad()
def accuracy(net: nn.Module, X: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``net`` on ``(X, y)``."""
    net.eval()
    return float((net(X).argmax(-1) == y).float().mean())


def penultimate(net: nn.Sequential, X: Tensor) -> Tensor:
    """Activations before the last layer of an ``nn.Sequential`` (the network's own features)."""
    with torch.no_grad():
        return net[:-1](X)
