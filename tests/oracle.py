"""An independent oracle: per-example gradients by plain autograd loops, Fisher vectors, kernel."""

from __future__ import annotations

import torch
from torch import nn


def per_example_grads(model: nn.Module, names: list[str], logp_one, examples) -> torch.Tensor:
    """Rows ``∇_θ log p̃(x_i)`` by one ``torch.autograd.grad`` call per example."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    rows = []
    for ex in examples:
        out = logp_one(ex)
        grads = torch.autograd.grad(out, chosen, allow_unused=True)
        rows.append(torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, chosen)
        ]))
    return torch.stack(rows)


def fisher_vectors(G_data, G_ref, centered: bool, kind: str, damping: float):
    m = G_ref.mean(0) if centered else torch.zeros(G_ref.shape[1], dtype=G_ref.dtype)
    if kind == "identity":
        scale = torch.ones_like(m)
    else:
        diag = ((G_ref - m) ** 2).mean(0)
        damped = diag + damping * diag.mean()
        scale = torch.where(damped > 0, damped.clamp_min(1e-300).rsqrt(), torch.zeros_like(damped))
    return (G_data - m) * scale


def trained_classifier(n: int = 120, d: int = 8, c: int = 4, *, hidden: int = 16, steps: int = 100,
                       seed: int = 0, dtype: torch.dtype = torch.float64):
    """A small classifier trained for a few full-batch Adam steps on separable Gaussian data, so its
    NFK has the decaying spectrum of real networks. Returns ``(net, X, y)``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    y = (X[:, :c] + 0.3 * torch.randn(n, c, generator=g, dtype=dtype)).argmax(1)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, c)).to(dtype)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, X, y
