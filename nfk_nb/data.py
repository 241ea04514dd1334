"""Bundled data: scikit-learn's digits (shipped inside scikit-learn) and generated toy sets.

Nothing here downloads: digits come from scikit-learn's package data, toy sets are generated, and
MNIST (IDX) / CIFAR-10 (binary batches) are read from files the user already has.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

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


# -- local MNIST / CIFAR-10 files (read from disk; nothing is downloaded) -------------------------

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR10_RECORD = 1 + 3 * 32 * 32


def _read_bytes(path: str | os.PathLike) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic (whatever its name)."""
    p = Path(path)
    if not p.is_file():
        raise NFKError(f"No file at {str(p)!r}.")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX array (the MNIST file format: ``00 00 TYPE NDIM``, big-endian int32 dims, data)."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise NFKError(f"{str(path)!r} is not an IDX file (bad magic number).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise NFKError(f"{str(path)!r} is truncated: its IDX header is incomplete.")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != need:
        raise NFKError(f"{str(path)!r} holds {len(raw)} bytes but its header {shape} says {need}.")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def read_mnist_idx(
    images_path: str | os.PathLike, labels_path: str | os.PathLike | None = None, *,
    flatten: bool = True, dtype: torch.dtype = torch.float32,
) -> Tensor | tuple[Tensor, Tensor]:
    """Read MNIST-style IDX files (``train-images-idx3-ubyte[.gz]`` and its labels) from disk.

    Parameters
    ----------
    images_path : path-like
        IDX file of images, shape (n, rows, cols); gzipped or not.
    labels_path : path-like, optional
        IDX file of labels, shape (n,).
    flatten : bool
        Return images as (n, rows·cols) (like :func:`load_digits`), else (n, 1, rows, cols).
    dtype : torch.dtype

    Returns
    -------
    X : Tensor, or (X, y) when ``labels_path`` is given
        Unsigned-byte images are scaled to [0, 1]; labels are int64.
    """
    images = read_idx(images_path)
    if images.ndim != 3:
        raise NFKError(f"{str(images_path)!r} has shape {images.shape}; MNIST images are (n, rows, cols).")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    X = torch.tensor(images.astype(np.float64) / scale, dtype=dtype)
    X = X.reshape(len(X), -1) if flatten else X.unsqueeze(1)
    if labels_path is None:
        return X
    labels = read_idx(labels_path)
    if labels.ndim != 1 or len(labels) != len(X):
        raise NFKError(f"{str(labels_path)!r} has shape {labels.shape}; expected ({len(X)},) labels.")
    return X, torch.tensor(labels.astype(np.int64))


def read_cifar10_binary(
    path: str | os.PathLike | Sequence[str | os.PathLike], *, flatten: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Read CIFAR-10 *binary* batches (``data_batch_N.bin``, ``test_batch.bin``) from disk.

    Each record is 1 label byte then 3,072 pixel bytes (1,024 red, 1,024 green, 1,024 blue, rows in
    order). The pickled "python version" of CIFAR-10 is deliberately not supported: unpickling runs
    arbitrary code.

    Parameters
    ----------
    path : path-like or sequence of them
        One batch file, or several read in order and concatenated (gzipped or not).
    flatten : bool
        Return images as (n, 3072), else (n, 3, 32, 32).
    dtype : torch.dtype

    Returns
    -------
    X, y : Tensor
        Images scaled to [0, 1]; labels 0..9 (int64).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise NFKError("read_cifar10_binary needs at least one file.")
    records = []
    for p in paths:
        raw = _read_bytes(p)
        if not raw or len(raw) % CIFAR10_RECORD:
            raise NFKError(
                f"{str(p)!r} holds {len(raw)} bytes, not a multiple of {CIFAR10_RECORD} "
                f"(1 label byte + 3072 pixel bytes): not a CIFAR-10 binary batch."
            )
        records.append(np.frombuffer(raw, np.uint8).reshape(-1, CIFAR10_RECORD))
    data = np.concatenate(records)
    labels = data[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise NFKError(f"Labels above 9 found in {[str(p) for p in paths]}: not CIFAR-10 binary batches.")
    X = torch.tensor(data[:, 1:].astype(np.float64) / 255.0, dtype=dtype)
    if not flatten:
        X = X.reshape(-1, 3, 32, 32)
    return X, torch.tensor(labels)


# -- a generated benchmark that is hard for pixels -----------------------------------------------

def _place(images: Tensor, size: int, scale_px: Tensor, angle: Tensor, centre: Tensor) -> Tensor:
    """Draw (n, 8, 8) images on (n, size, size) canvases: scaled to ``scale_px`` pixels, rotated by
    ``angle`` (radians), centred at ``centre`` (normalised canvas coordinates in [-1, 1])."""
    n = len(images)
    cos, sin = torch.cos(angle), torch.sin(angle)
    inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # R(-angle)
    A = inv * (size / scale_px).reshape(n, 1, 1)  # canvas -> digit coordinates
    b = -(A @ centre.unsqueeze(-1))
    grid = torch.nn.functional.affine_grid(torch.cat([A, b], -1), [n, 1, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(images.unsqueeze(1), grid, align_corners=False).squeeze(1)


def make_cluttered_digits(
    n_train: int = 1200,
    n_test: int = 600,
    *,
    size: int = 24,
    scale: tuple[float, float] = (10.0, 14.0),
    max_rotation: float = 15.0,
    max_shift: float | None = 3.0,
    n_clutter: int = 2,
    clutter_window: int = 3,
    clutter_contrast: float = 0.5,
    noise: float = 0.1,
    seed: int = 0,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A benchmark on which raw pixels are weak: scikit-learn digits on a cluttered canvas.

    Each image is one 8×8 digit from scikit-learn's bundled set, resized to a random width in
    ``scale`` pixels, rotated by a random angle in ±``max_rotation`` degrees and placed at a random
    position (fully inside) on a ``size``×``size`` canvas; ``n_clutter`` stroke fragments
    (``clutter_window``×``clutter_window`` crops of other digits, placed and scaled the same way)
    are drawn over it, then Gaussian pixel noise of standard deviation ``noise`` is added and the
    result clipped to [0, 1]. Translation destroys the pixel alignment that makes digits easy for a
    linear model, and the fragments look like parts of digits. At the defaults a logistic-regression
    probe on the raw pixels scores 0.18 ± 0.01 and on their best PCA 0.30 ± 0.02 (notebook 10, three
    seeds), against 0.965 on the plain digits.

    The 1,797 source digits are first split by a seeded permutation into 1,200 training and 597
    test sources, so no test image shares its digit (or a clutter fragment) with a training image;
    each split's images draw their sources from that split (cycling through it when more images than
    sources are asked for). Everything depends only on ``seed``; the global RNG is untouched.

    Parameters
    ----------
    n_train, n_test : int
        Number of generated training and test images.
    size : int
        Canvas side in pixels.
    scale : (float, float)
        Range of the digit's rendered width in pixels (the 8×8 digit is resampled bilinearly).
    max_rotation : float
        Largest absolute rotation, in degrees.
    n_clutter : int
        Fragments of other digits per image.
    clutter_window : int
        Side of the square crop (in source pixels, of 8) that makes a fragment.
    clutter_contrast : float
        Intensity of the fragments relative to the digit (1: as dark as the digit's strokes).
    noise : float
        Standard deviation of the additive Gaussian pixel noise.
    seed : int
        Seed of the split and of every random draw.
    flatten : bool
        Return images as (n, size²), else (n, 1, size, size).
    dtype : torch.dtype

    Returns
    -------
    X_train, y_train, X_test, y_test : Tensor
        Images in [0, 1]; integer labels 0..9 of the centre digit.
    """
    from sklearn.datasets import load_digits as _load

    if n_train < 1 or n_test < 1:
        raise NFKError(f"n_train and n_test must be at least 1, got {n_train} and {n_test}.")
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi <= size:
        raise NFKError(f"scale must be a range (lo, hi) with 0 < lo <= hi <= size={size}, got {scale}.")
    if not 1 <= clutter_window <= 8 or n_clutter < 0 or noise < 0 or max_rotation < 0:
        raise NFKError("clutter_window must be in 1..8, and n_clutter, noise, max_rotation non-negative.")
    bunch = _load()
    digits = torch.tensor(bunch.data / 16.0, dtype=torch.float64).reshape(-1, 8, 8)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(digits), generator=gen)
    splits = {"train": perm[597:], "test": perm[:597]}

    def render(sources: Tensor, n: int) -> tuple[Tensor, Tensor]:
        order = sources[torch.randperm(len(sources), generator=gen)]
        idx = order[torch.arange(n) % len(order)]

        def draw(images: Tensor, shift: float | None) -> Tensor:
            m = len(images)
            px = lo + (hi - lo) * torch.rand(m, generator=gen, dtype=torch.float64)
            degrees = (2 * torch.rand(m, generator=gen, dtype=torch.float64) - 1) * max_rotation
            angle = degrees * torch.pi / 180
            # keep the rotated digit's bounding box inside the canvas
            half = px * (angle.cos().abs() + angle.sin().abs()) / 2
            room = ((size / 2 - half) / (size / 2)).clamp(min=0)
            if shift is not None:
                room = room.clamp(max=shift / (size / 2))
            room = room.unsqueeze(-1)
            centre = (2 * torch.rand(m, 2, generator=gen, dtype=torch.float64) - 1) * room
            return _place(images, size, px, angle, centre)

        canvas = draw(digits[idx], max_shift)
        if n_clutter:
            other = sources[torch.randint(len(sources), (n * n_clutter,), generator=gen)]
            frags = torch.zeros(n * n_clutter, 8, 8, dtype=torch.float64)
            corner = torch.randint(9 - clutter_window, (n * n_clutter, 2), generator=gen)
            for j, (r, c) in enumerate(corner.tolist()):
                w = clutter_window
                frags[j, r : r + w, c : c + w] = digits[other[j], r : r + w, c : c + w]
            clutter = draw(frags, None).reshape(n, n_clutter, size, size).amax(1) * clutter_contrast
            canvas = torch.maximum(canvas, clutter)
        canvas = canvas + noise * torch.randn(canvas.shape, generator=gen, dtype=torch.float64)
        return canvas.clamp(0, 1), labels[idx]

    X_train, y_train = render(splits["train"], n_train)
    X_test, y_test = render(splits["test"], n_test)
    shape = (-1, size * size) if flatten else (-1, 1, size, size)
    return X_train.reshape(shape).to(dtype), y_train, X_test.reshape(shape).to(dtype), y_test
