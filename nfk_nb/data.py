"""Bundled data: scikit-learn's digits (shipped inside scikit-learn) and generated toy sets.

Nothing here downloads: digits come from scikit-learn's package data, toy sets are generated.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .errors import NFKError


def load_digits(
    n_test: int = 597, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8×8 digits (1,797 images), scaled to [0, 1], split by a seeded permutation.

    Parameters
    ----------
    n_test : int
        Size of the test split (the rest is the training split).
    seed : int
        Seed of the split.
    dtype : torch.dtype

    Returns
    -------
    X_train, y_train, X_test, y_test : Tensor
        Inputs of shape (n, 64) in [0, 1]; integer labels 0..9.
    """
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    X = torch.tensor(bunch.data / 16.0, dtype=dtype)
    y = torch.tensor(bunch.target, dtype=torch.long)
    if not 0 <= n_test < len(X):
        raise NFKError(f"n_test must be between 0 and {len(X) - 1}, got {n_test}.")
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]


def make_moons(n: int = 512, noise: float = 0.1, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Two interleaved half-circles in 2-D (a generated toy set), labels 0/1."""
    rng = np.random.default_rng(seed)
    n1 = n // 2
    t1, t2 = rng.uniform(0, np.pi, n1), rng.uniform(0, np.pi, n - n1)
    a = np.stack([np.cos(t1), np.sin(t1)], 1)
    b = np.stack([1 - np.cos(t2), 0.5 - np.sin(t2)], 1)
    X = np.concatenate([a, b]) + rng.normal(0, noise, (n, 2))
    y = np.concatenate([np.zeros(n1), np.ones(n - n1)])
    perm = rng.permutation(n)
    return torch.tensor(X[perm], dtype=dtype), torch.tensor(y[perm], dtype=torch.long)


def make_blobs(n: int = 512, centers: int = 4, dim: int = 2, spread: float = 0.5, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Gaussian blobs around random centres (a generated toy set)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 3, (centers, dim))
    y = rng.integers(0, centers, n)
    X = mu[y] + rng.normal(0, spread, (n, dim))
    return torch.tensor(X, dtype=dtype), torch.tensor(y, dtype=torch.long)
