"""Figures checked through their artists (headless, no pyplot)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from nfk_nb.errors import NFKError
from nfk_nb.plots import (
    effective_rank,
    plot_embedding,
    plot_kernel,
    plot_neighbours,
    plot_spectrum,
    project_2d,
)


def fitted(S):
    S = torch.tensor(S, dtype=torch.float64)
    trace = float((S**2).sum()) * 1.25  # the computed components hold 80% of the trace
    return SimpleNamespace(singular_values_=S, explained_variance_ratio_=S**2 / trace, fisher="diagonal",
                           damping=1e-3, n_samples_fit_=100)


def test_effective_rank():
    assert effective_rank(np.ones(7)) == pytest.approx(7.0)
    assert effective_rank([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert 1.0 < effective_rank([3.0, 1.0, 0.5]) < 3.0


def test_spectrum_shows_singular_values_and_cumulative_variance():
    est = fitted([4.0, 2.0, 1.0, 0.5])
    fig = plot_spectrum(est)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax1, ax2 = fig.axes
    np.testing.assert_allclose(ax1.lines[0].get_ydata(), [4.0, 2.0, 1.0, 0.5])
    assert ax1.get_yscale() == "log"
    cum = ax2.lines[0].get_ydata()
    np.testing.assert_allclose(cum, np.cumsum(est.explained_variance_ratio_.numpy()))
    assert cum[-1] == pytest.approx(0.8)
    note = " ".join(t.get_text() for t in ax2.texts)
    assert "80.0% of trace" in note and f"effective rank {effective_rank([4.0, 2.0, 1.0, 0.5]):.1f}" in note
    assert "damping=0.001" in fig._suptitle.get_text()
    # a flat spectrum and a spiked one are told apart by the annotation
    flat = " ".join(t.get_text() for t in plot_spectrum(fitted([1.0] * 8)).axes[1].texts)
    spiked = " ".join(t.get_text() for t in plot_spectrum(fitted([100.0] + [0.1] * 7)).axes[1].texts)
    assert "effective rank 8.0" in flat and "effective rank 1.0" in spiked


def test_spectrum_from_raw_values_and_errors():
    fig = plot_spectrum(torch.tensor([3.0, 1.0]))
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [0.9, 1.0])
    with pytest.raises(NFKError, match="not fitted"):
        plot_spectrum(SimpleNamespace(rank=3, lik=None))
    with pytest.raises(NFKError, match="1-D"):
        plot_spectrum(np.ones((2, 2)))


def test_project_2d_is_pca():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(100, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    xy = project_2d(E)
    C = E - E.mean(0)
    S = np.linalg.svd(C, compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(xy, axis=0), S[:2], rtol=1e-10)
    np.testing.assert_allclose(project_2d(E[:, :2]), E[:, :2])
    np.testing.assert_array_equal(project_2d(E), xy)  # deterministic signs


def test_embedding_scatter_by_label():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(60, 4))
    y = np.repeat(np.arange(3), 20)
    fig = plot_embedding(E, y, highlight=5, neighbours=[1, 2])
    ax = fig.axes[0]
    # one collection per class, then the neighbour rings and the highlighted star
    assert len(ax.collections) == 5
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2"]
    xy = project_2d(E)
    np.testing.assert_allclose(ax.collections[0].get_offsets(), xy[y == 0])
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), xy[[5]])
    # many distinct values: a colour bar instead of a legend
    fig = plot_embedding(E, np.linspace(0, 1, 60))
    assert fig.axes[0].get_legend() is None and len(fig.axes) == 2
    with pytest.raises(NFKError, match="labels"):
        plot_embedding(E, y[:10])


def test_kernel_heatmap_sorted_by_label():
    K = np.arange(16, dtype=float).reshape(4, 4)
    K = K + K.T
    labels = np.array([1, 0, 1, 0])
    fig = plot_kernel(K, labels)
    img = fig.axes[0].images[0].get_array()
    order = [1, 3, 0, 2]
    np.testing.assert_allclose(img, K[np.ix_(order, order)])
    lim = np.abs(K).max()
    assert fig.axes[0].images[0].get_clim() == (-lim, lim)  # symmetric colour scale around 0
    np.testing.assert_allclose(plot_kernel(torch.tensor(K[:2])).axes[0].images[0].get_array(), K[:2])
    with pytest.raises(NFKError, match="square"):
        plot_kernel(K[:2], labels)


def test_neighbour_grid():
    images = torch.arange(5 * 64, dtype=torch.float32).reshape(5, 64)
    fig = plot_neighbours(images, 2, [4, 0], shape=(8, 8), labels=[7, 8, 9, 10, 11],
                          similarities=[0.9, 0.5])
    assert len(fig.axes) == 3
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), images[2].reshape(8, 8))
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), images[4].reshape(8, 8))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("query") and "y=9" in titles[0]
    assert "#4" in titles[1] and "cos=0.90" in titles[1] and "y=11" in titles[1]
    # (N, C, H, W) images need no shape
    fig = plot_neighbours(torch.rand(3, 3, 4, 4), 0, [1])
    assert fig.axes[0].images[0].get_array().shape == (4, 4, 3)
    with pytest.raises(NFKError, match="cannot be shown"):
        plot_neighbours(images, 0, [1], shape=(7, 7))
    with pytest.raises(NFKError, match="shape=\\(H, W\\)"):
        plot_neighbours(images, 0, [1])


def test_figures_are_displayed_at_twice_their_display_resolution():
    from nfk_nb.display import FIGURE_DPI, figure_png_2x

    fig = plot_spectrum(np.array([3.0, 2.0, 1.0]))
    png, size = figure_png_2x(fig)
    w, h = (int.from_bytes(png[o:o + 4], "big") for o in (16, 20))
    assert (w // 2, h // 2) == (size["width"], size["height"])
    assert abs(size["width"] - 9 * FIGURE_DPI) < 0.1 * 9 * FIGURE_DPI  # a 9-inch figure, tight bbox
