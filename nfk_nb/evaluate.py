"""How good is an embedding: linear probe, kNN accuracy, kernel alignment."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .errors import NFKError


def as_numpy(a: Any) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a NumPy array."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)



def _check_pair(E: np.ndarray, y: np.ndarray, what: str) -> None:
    if E.ndim != 2:
        raise NFKError(f"The {what} embedding must be 2-D (examples × features), got shape {E.shape}.")
    if len(E) != len(y):
        raise NFKError(f"The {what} embedding has {len(E)} rows but there are {len(y)} labels.")


def linear_probe(
    E: Any, y: Any, E_test: Any = None, y_test: Any = None, *, cv: int = 5, C: float = 1.0,
    seed: int = 0, max_iter: int = 2000,
) -> float:
    """Accuracy of a logistic-regression probe on standardised features.

    With ``E_test``/``y_test`` it trains on ``(E, y)`` and scores the test split; otherwise it
    returns the mean ``cv``-fold stratified cross-validated accuracy on ``(E, y)``.
    """
    E, y = as_numpy(E), as_numpy(y)
    _check_pair(E, y, "training")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    if E_test is not None:
        E_test, y_test = as_numpy(E_test), as_numpy(y_test)
        _check_pair(E_test, y_test, "test")
        return float(model.fit(E, y).score(E_test, y_test))
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    return float(cross_val_score(model, E, y, cv=folds).mean())


def knn_accuracy(E: Any, y: Any, E_test: Any, y_test: Any, *, k: int = 5,
                 metric: str = "cosine") -> float:
    """Accuracy of a k-nearest-neighbour classifier fitted on ``(E, y)``, scored on the test split."""
    E, y, E_test, y_test = as_numpy(E), as_numpy(y), as_numpy(E_test), as_numpy(y_test)
    _check_pair(E, y, "training")
    _check_pair(E_test, y_test, "test")
    knn = KNeighborsClassifier(n_neighbors=k, metric=metric).fit(E, y)
    return float(knn.score(E_test, y_test))


def kernel_alignment(K1: Any, K2: Any) -> float:
    """Uncentred kernel alignment ``<K1, K2>_F / (‖K1‖_F ‖K2‖_F)`` (1 = same up to scale)."""
    a, b = as_numpy(K1).astype(np.float64), as_numpy(K2).astype(np.float64)
    if a.shape != b.shape:
        raise NFKError(f"Kernels of different shapes {a.shape} and {b.shape} cannot be aligned.")
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def relative_error(K_approx: Any, K: Any) -> float:
    """``‖K - K_approx‖_F / ‖K‖_F``."""
    a, b = as_numpy(K_approx).astype(np.float64), as_numpy(K).astype(np.float64)
    return float(np.linalg.norm(b - a) / np.linalg.norm(b))


def optimal_rank_error(K: Any, rank: int) -> float:
    """Frobenius error of the best rank-``rank`` approximation of a PSD kernel (Eckart–Young)."""
    ev = np.linalg.eigvalsh(as_numpy(K).astype(np.float64))[::-1]
    return float(np.sqrt((ev[rank:] ** 2).sum()))
