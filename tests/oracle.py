"""An independent oracle: per-example gradients by plain autograd loops, Fisher vectors, kernel.

Nothing here calls the package. Tests state their own truth as literals (parameter tensors, the
damping value, σ) and write each family's ``log p̃`` out by hand; the oracle only differentiates it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn


def param_grads(params: Sequence[Tensor], logp_one: Callable[[object], Tensor],
                examples: Iterable[object]) -> Tensor:
    """Rows ``∇_θ log p̃(x_i)`` over the given parameter tensors, one ``autograd.grad`` per example."""
    rows = []
    for ex in examples:
        grads = torch.autograd.grad(logp_one(ex), list(params), allow_unused=True)
        rows.append(torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)
        ]))
    return torch.stack(rows)


def per_example_grads(model: nn.Module, names: list[str], logp_one, examples) -> Tensor:
    """:func:`param_grads` over the named parameters of ``model``."""
    params = dict(model.named_parameters())
    return param_grads([params[n] for n in names], logp_one, examples)


def fisher_vectors(G_data: Tensor, G_ref: Tensor, centered: bool, kind: str, damping: float) -> Tensor:
    """``(g - m) D``: ``m`` the mean reference gradient when centred, ``D = (diag I + λ·mean I)^{-1/2}``
    on the reference set, or ``D = 1`` for ``kind="identity"``."""
    m = G_ref.mean(0) if centered else torch.zeros(G_ref.shape[1], dtype=G_ref.dtype)
    if kind == "identity":
        scale = torch.ones_like(m)
    else:
        diag = ((G_ref - m) ** 2).mean(0)
        damped = diag + damping * diag.mean()
        scale = torch.where(damped > 0, damped.clamp_min(1e-300).rsqrt(), torch.zeros_like(damped))
    return (G_data - m) * scale


def top_eigen_projection(K: Tensor, k: int) -> Tensor:
    """The best rank-``k`` approximation of the PSD matrix ``K``: ``U_k Λ_k U_kᵀ``."""
    vals, vecs = torch.linalg.eigh(K)
    U, lam = vecs[:, -k:], vals[-k:]
    return (U * lam) @ U.T


def rel(a: Tensor, b: Tensor) -> float:
    """Relative Frobenius distance ``‖a - b‖ / ‖b‖``."""
    return float((a - b).norm() / b.norm())


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
