"""Matplotlib views of NFK results: spectrum, embedding scatter, kernel heatmap, neighbour grid.

Every function builds a :class:`matplotlib.figure.Figure` directly (no pyplot state), so it works
headless, in tests and under papermill, and returns it; display it in a notebook as the last
expression of a cell, or save it with ``fig.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .errors import NFKError
from .evaluate import as_numpy


def project_2d(E: Any) -> np.ndarray:
    """2-D coordinates of an (N, k) embedding: itself when k <= 2, else its top two principal components."""
    E = as_numpy(E).astype(np.float64)
    if E.ndim != 2:
        raise NFKError(f"The embedding must be 2-D (examples × features), got shape {E.shape}.")
    if E.shape[1] == 1:
        return np.concatenate([E, np.zeros_like(E)], 1)
    if E.shape[1] == 2:
        return E
    C = E - E.mean(0)
    _, _, Vt = np.linalg.svd(C, full_matrices=False)
    Vt = Vt[:2] * np.sign(Vt[:2, [0]] + (Vt[:2, [0]] == 0))  # deterministic signs
    return C @ Vt.T


def effective_rank(S: Any) -> float:
    """Participation ratio ``(Σ λ)² / Σ λ²`` of the eigenvalues ``λ = S²`` (1 = one direction)."""
    lam = as_numpy(S).astype(np.float64) ** 2
    return float(lam.sum() ** 2 / (lam**2).sum()) if lam.sum() > 0 else 0.0


def plot_spectrum(est: Any, explained: Any = None, title: str | None = None) -> Figure:
    """Singular values and cumulative explained variance of a fitted ``LowRankNFK``.

    A spectrum where the first few components hold nearly all of ``trace(K)`` means a few parameter
    coordinates dominate the Fisher vectors (often damping that is too small, see docs/design.md); a
    flat one means the kernel spreads over many directions and a larger rank pays off. The
    annotation gives both numbers: the fraction of the trace captured and the effective rank.

    Parameters
    ----------
    est : LowRankNFK or array-like
        A fitted estimator, or the singular values themselves.
    explained : array-like, optional
        Explained-variance ratios (taken from ``est`` when it is an estimator).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: singular values (log scale) and cumulative explained variance.
    """
    subtitle = ""
    if hasattr(est, "singular_values_"):
        S, ratio = as_numpy(est.singular_values_), as_numpy(est.explained_variance_ratio_)
        subtitle = f"fisher={est.fisher}, damping={est.damping:g}, N={est.n_samples_fit_}"
    elif hasattr(est, "rank") and hasattr(est, "lik"):
        raise NFKError("The estimator is not fitted yet: run %nfk fit (or est.fit(X)) first.")
    else:
        S = as_numpy(est)
        ratio = None if explained is None else as_numpy(explained)
    if S.ndim != 1 or len(S) == 0:
        raise NFKError(f"Expected a 1-D array of singular values, got shape {S.shape}.")
    k = np.arange(1, len(S) + 1)
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.semilogy(k, np.maximum(S, 1e-300), "o-", ms=3)
    ax1.set_xlabel("component")
    ax1.set_ylabel("singular value")
    ax1.set_title("singular values of V")
    ax1.grid(True, alpha=0.3)
    if ratio is not None:
        cum = np.cumsum(ratio)
        ax2.plot(k, cum, "o-", ms=3, color="C1")
        ax2.set_ylim(0, 1.02)
        ax2.axhline(1.0, color="0.6", lw=0.8, ls="--")
        ax2.set_ylabel("cumulative fraction of trace(K)")
        note = (f"top {len(S)}: {cum[-1]:.1%} of trace\nfirst: {ratio[0]:.1%}\n"
                f"effective rank {effective_rank(S):.1f} of {len(S)}")
    else:
        lam = S**2
        ax2.plot(k, np.cumsum(lam) / lam.sum(), "o-", ms=3, color="C1")
        ax2.set_ylabel("cumulative fraction (of the computed components)")
        note = f"effective rank {effective_rank(S):.1f}"
    ax2.text(0.97, 0.05, note, transform=ax2.transAxes, ha="right", va="bottom", fontsize=9,
             bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax2.set_xlabel("rank k")
    ax2.set_title("explained variance")
    ax2.grid(True, alpha=0.3)
    fig.suptitle(title or ("NFK spectrum" + (f" ({subtitle})" if subtitle else "")), fontsize=10)
    return fig


def plot_embedding(E: Any, labels: Any = None, highlight: int | None = None,
                   neighbours: Sequence[int] | None = None, title: str | None = None,
                   ax: Any = None) -> Figure:
    """Scatter of an embedding in 2-D (top two principal components when k > 2), coloured by label.

    Parameters
    ----------
    E : (N, k) tensor or array
    labels : (N,) array-like, optional
        Class labels (a legend is drawn for up to 20 classes) or continuous values (a colour bar).
    highlight : int, optional
        Index of a point to mark (a black star).
    neighbours : sequence of int, optional
        Indices to circle (e.g. the highlighted point's nearest neighbours).
    title : str, optional
    ax : matplotlib Axes, optional
        Draw into this axes instead of a new figure.
    """
    xy = project_2d(E)
    if ax is None:
        fig = Figure(figsize=(5.2, 4.4), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7)
    else:
        lab = as_numpy(labels)
        if len(lab) != len(xy):
            raise NFKError(f"The embedding has {len(xy)} rows but there are {len(lab)} labels.")
        classes, codes = np.unique(lab, return_inverse=True)
        if len(classes) <= 20:  # discrete: one colour (and marker past ten) per class, with a legend
            for i, c in enumerate(classes):
                m = codes == i
                ax.scatter(xy[m, 0], xy[m, 1], s=8, alpha=0.7, color=f"C{i % 10}",
                           marker="o" if i < 10 else "^", label=str(c))
            ax.legend(fontsize=8.5, markerscale=1.5, loc="best", ncol=2 if len(classes) > 10 else 1)
        else:
            values = lab.astype(float) if lab.dtype.kind in "iufb" else codes.astype(float)
            sc = ax.scatter(xy[:, 0], xy[:, 1], s=8, c=values, cmap="viridis")
            fig.colorbar(sc, ax=ax)
    if neighbours is not None and len(neighbours):
        nb = np.asarray(list(neighbours), dtype=int)
        ax.scatter(xy[nb, 0], xy[nb, 1], s=60, facecolors="none", edgecolors="k", linewidths=1.2)
    if highlight is not None:
        ax.scatter(xy[highlight, 0], xy[highlight, 1], s=160, marker="*", color="k")
    k = as_numpy(E).shape[1]
    ax.set_xlabel("component 1" if k <= 2 else "PC 1")
    ax.set_ylabel("component 2" if k <= 2 else "PC 2")
    ax.set_title(title or f"NFK embedding ({len(xy)} points, k={k})", fontsize=10)
    return fig


def plot_kernel(K: Any, labels: Any = None, title: str | None = None) -> Figure:
    """Heatmap of a kernel matrix; with ``labels`` (square K only) rows and columns are sorted by label."""
    K = as_numpy(K).astype(np.float64)
    if K.ndim != 2:
        raise NFKError(f"The kernel must be a 2-D matrix, got shape {K.shape}.")
    order = None
    if labels is not None:
        lab = as_numpy(labels)
        if K.shape[0] != K.shape[1] or len(lab) != K.shape[0]:
            raise NFKError(f"labels ({len(lab)}) must match a square kernel, got shape {K.shape}.")
        order = np.argsort(lab, kind="stable")
        K = K[np.ix_(order, order)]
    fig = Figure(figsize=(5, 4.3), layout="constrained")
    ax = fig.subplots()
    lim = np.abs(K).max() or 1.0
    im = ax.imshow(K, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if order is not None:
        lab_sorted = lab[order]
        edges = np.flatnonzero(lab_sorted[1:] != lab_sorted[:-1]) + 0.5
        for e in edges:
            ax.axhline(e, color="k", lw=0.4)
            ax.axvline(e, color="k", lw=0.4)
    ax.set_title(title or f"kernel matrix {K.shape[0]}×{K.shape[1]}", fontsize=10)
    return fig


def example_image(images: Any, i: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Example ``i`` of ``images`` as a 2-D (grey) or (H, W, 3) array in [0, 1] for RGB.

    Flat rows are reshaped with ``shape``; (N, C, H, W) and (N, H, W[, C]) arrays need none.
    """
    X = as_numpy(images)
    a = X[i]
    if shape is not None:
        if a.size % (shape[0] * shape[1]):
            raise NFKError(f"An example of {a.size} values cannot be shown as {shape[0]}×{shape[1]} images.")
        a = a.reshape(-1, shape[0], shape[1])
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)
    elif a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    if a.ndim not in (2, 3):
        raise NFKError(f"Cannot show an example of shape {X[i].shape} as an image; pass shape=(H, W).")
    if a.ndim == 3:
        a = (a - a.min()) / (np.ptp(a) or 1.0)
    return a


def _draw_neighbours(axes: Sequence[Any], images: Any, idx: Sequence[int], shape: tuple[int, int] | None,
                     labels: Any, similarities: Sequence[float] | None, fontsize: float) -> None:
    lab = None if labels is None else as_numpy(labels)
    for j, (ax, i) in enumerate(zip(axes, idx)):
        ax.imshow(example_image(images, i, shape), cmap="gray_r", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        # two short lines: nine thumbnails fit a 7-inch row at 9 pt
        label = "" if lab is None else f"y={lab[i]}"
        if j == 0:
            text = f"query #{i}\n{label}"
        else:
            cos = "" if similarities is None else f"cos={similarities[j - 1]:.2f}"
            text = f"#{i} {label}\n{cos}"
        ax.set_title(text, fontsize=fontsize)
        if j == 0:
            for spine in ax.spines.values():
                spine.set_edgecolor("C3")
                spine.set_linewidth(2)


def plot_neighbours(images: Any, query_idx: int, neighbour_idx: Sequence[int],
                    shape: tuple[int, int] | None = None, labels: Any = None,
                    similarities: Sequence[float] | None = None) -> Figure:
    """A row of images: the query, then its nearest neighbours (with label and similarity if given).

    Parameters
    ----------
    images : (N, ...) tensor or array
        Flat rows reshaped with ``shape``, or (N, H, W) / (N, C, H, W) / (N, H, W, C) images.
    query_idx : int
    neighbour_idx : sequence of int
    shape : (H, W), optional
        Image shape for flat rows.
    labels : (N,) array-like, optional
    similarities : sequence of float, optional
        One per neighbour (e.g. cosine similarity).
    """
    idx = [int(query_idx), *[int(i) for i in neighbour_idx]]
    n = len(idx)
    fig = Figure(figsize=(1.25 * n, 1.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    _draw_neighbours(axes, images, idx, shape, labels, similarities, fontsize=9)
    return fig


def plot_explorer(E: Any, labels: Any = None, index: int = 0, neighbours: Sequence[int] = (),
                  images: Any = None, shape: tuple[int, int] | None = None,
                  similarities: Sequence[float] | None = None) -> Figure:
    """A still picture of the embedding explorer: the scatter with the selected point, then its
    neighbours (a row of images, or a list beside the scatter). 7.2 inches wide; text >= 9 pt.

    This is the static fallback saved with the explorer widget, which HTML reports show.
    """
    nb = [int(j) for j in neighbours]
    if images is not None:
        fig = Figure(figsize=(7.2, 5.3), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[4.1, 1.2])
        plot_embedding(E, labels, highlight=index, neighbours=nb, ax=top.subplots())
        axes = np.atleast_1d(bottom.subplots(1, 1 + len(nb)))
        _draw_neighbours(axes, images, [int(index), *nb], shape, labels, similarities, fontsize=9)
        return fig
    fig = Figure(figsize=(7.2, 4.1), layout="constrained")
    ax, side = fig.subplots(1, 2, width_ratios=[3.2, 1])
    plot_embedding(E, labels, highlight=index, neighbours=nb, ax=ax)
    side.axis("off")
    lab = None if labels is None else as_numpy(labels)
    rows = ["neighbour  label  cos"] + [
        f"#{j:<8} {'' if lab is None else lab[j]!s:>5}  "
        f"{'' if similarities is None else format(similarities[k], '.2f')}"
        for k, j in enumerate(nb)
    ]
    side.text(0, 1, "\n".join(rows), va="top", family="monospace", fontsize=9, transform=side.transAxes)
    return fig


def plot_images(images: Any, labels: Any = None, ncols: int = 8, shape: tuple[int, int] | None = None,
                title: str | None = None) -> Figure:
    """A grid of single-channel images, each titled with its label when given.

    Parameters
    ----------
    images : (N, H, W) or (N, 1, H, W) tensor or array, or flat (N, H·W) rows with ``shape``
    labels : (N,) array-like, optional
    ncols : int
        Images per row.
    shape : (H, W), optional
        Image shape for flat rows.
    title : str, optional
    """
    X = as_numpy(images)
    if shape is not None:
        X = X.reshape(len(X), *shape)
    elif X.ndim == 4 and X.shape[1] == 1:
        X = X[:, 0]
    if X.ndim != 3 or len(X) == 0:
        raise NFKError(f"Cannot show images of shape {X.shape}; pass (N, H, W) or shape=(H, W).")
    n, ncols = len(X), max(1, min(ncols, len(X)))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(1.1 * ncols, 1.25 * nrows + (0.3 if title else 0)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    lab = None if labels is None else as_numpy(labels)
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_visible(False)
            continue
        ax.imshow(X[i], cmap="gray_r", vmin=0, vmax=max(1.0, float(X.max())), interpolation="nearest")
        if lab is not None:
            ax.set_title(str(lab[i]), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
