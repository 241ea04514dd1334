"""The generated cluttered-digits benchmark: seeding, geometry, split hygiene, and its plot helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nfk_nb.data import load_digits, make_cluttered_digits
from nfk_nb.errors import NFKError
from nfk_nb.plots import plot_images

PLAIN = dict(size=8, scale=(8.0, 8.0), max_rotation=0.0, max_shift=0.0, n_clutter=0, noise=0.0)


def _rows(X: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in np.round(X.reshape(len(X), -1).numpy().astype(np.float64), 6)}


def test_identity_rendering_reproduces_the_digits_and_their_split() -> None:
    # an 8×8 canvas with no scale, rotation, shift, clutter or noise is the plain digit, and the
    # source split is load_digits' split for the same seed (so test images never share a digit)
    X, y, Xt, yt = make_cluttered_digits(1203, 597, seed=5, dtype=torch.float64, **PLAIN)
    D, dy, Dt, dyt = load_digits(seed=5, dtype=torch.float64)
    assert _rows(X) == _rows(D) and _rows(Xt) == _rows(Dt)
    assert torch.equal(X[1200:], X[:3])  # more images than sources: the sources cycle
    lookup = {np.round(r.numpy(), 6).tobytes(): int(label) for r, label in zip(D.reshape(len(D), -1), dy)}
    assert all(lookup[np.round(r.numpy(), 6).tobytes()] == int(label)
               for r, label in zip(X.reshape(len(X), -1), y))
    assert sorted(yt.tolist()) == sorted(dyt.tolist())


def test_defaults_shape_range_and_seeding() -> None:
    X, y, Xt, yt = make_cluttered_digits(64, 32, seed=1)
    assert X.shape == (64, 1, 24, 24) and Xt.shape == (32, 1, 24, 24)
    assert X.dtype == torch.float32 and y.dtype == torch.long
    assert float(X.min()) >= 0.0 and float(X.max()) <= 1.0
    assert set(y.tolist()) <= set(range(10))
    again = make_cluttered_digits(64, 32, seed=1)
    other = make_cluttered_digits(64, 32, seed=2)
    assert torch.equal(X, again[0]) and torch.equal(yt, again[3])
    assert not torch.equal(X, other[0])
    flat = make_cluttered_digits(64, 32, seed=1, flatten=True)[0]
    assert torch.equal(flat, X.reshape(64, -1))


def test_shift_moves_the_digit_and_stays_on_the_canvas() -> None:
    # without clutter and noise, every digit's ink lies inside the canvas and its centre of mass
    # wanders by about max_shift pixels
    kw = dict(size=24, scale=(12.0, 12.0), max_rotation=0.0, n_clutter=0, noise=0.0)
    still = make_cluttered_digits(200, 1, max_shift=0.0, **kw)[0][:, 0]
    moved = make_cluttered_digits(200, 1, max_shift=4.0, **kw)[0][:, 0]
    grid = torch.arange(24, dtype=torch.float32)

    def centre_x(A: torch.Tensor) -> torch.Tensor:
        return (A.sum(1) * grid).sum(-1) / A.sum((1, 2))

    assert float(still[:, :, :5].sum()) == 0.0 and float(still[:, :, -5:].sum()) == 0.0
    assert float(centre_x(moved).std()) > 3 * float(centre_x(still).std()) + 1.0


def test_bad_arguments_raise_one_clear_error() -> None:
    with pytest.raises(NFKError, match="n_train"):
        make_cluttered_digits(0, 10)
    with pytest.raises(NFKError, match="scale"):
        make_cluttered_digits(10, 10, size=16, scale=(10.0, 20.0))
    with pytest.raises(NFKError, match="clutter_window"):
        make_cluttered_digits(10, 10, clutter_window=9)


def test_plot_images_grid() -> None:
    X, y, _, _ = make_cluttered_digits(10, 1)
    fig = plot_images(X, y, ncols=4, title="examples")
    axes = fig.axes
    assert len(axes) == 12 and sum(a.get_visible() for a in axes) == 10
    assert axes[0].get_title() == str(int(y[0]))
    assert axes[0].images[0].get_array().shape == (24, 24)
    flat = plot_images(X.reshape(10, -1), shape=(24, 24))  # default 8 columns: 2 rows
    assert len(flat.axes) == 16 and sum(a.get_visible() for a in flat.axes) == 10
    with pytest.raises(NFKError, match="Cannot show"):
        plot_images(torch.zeros(3, 5))
