"""Local dataset readers: MNIST IDX files and CIFAR-10 binary batches written here in their formats."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nfk_nb.data import read_cifar10_binary, read_idx, read_mnist_idx
from nfk_nb.errors import NFKError


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08, gz: bool = False) -> Path:
    """An IDX file as MNIST ships them: 00 00 TYPE NDIM, big-endian dims, big-endian data."""
    big = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[type_code]
    raw = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(big).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_cifar(path: Path, labels: np.ndarray, images: np.ndarray) -> Path:
    """A CIFAR-10 binary batch: per record 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    rows = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(labels), -1)], axis=1)
    path.write_bytes(rows.astype(np.uint8).tobytes())
    return path


@pytest.fixture
def mnist(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_read_mnist_idx_round_trip(tmp_path, mnist, gz):
    images, labels = mnist
    suffix = ".gz" if gz else ""
    ip = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz=gz)
    lp = write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz=gz)
    X, y = read_mnist_idx(ip, lp)
    assert X.shape == (5, 784) and X.dtype == torch.float32
    assert torch.allclose(X, torch.tensor(images.reshape(5, -1) / 255.0, dtype=torch.float32))
    assert float(X.min()) >= 0 and float(X.max()) <= 1
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    X4 = read_mnist_idx(ip, flatten=False, dtype=torch.float64)
    assert X4.shape == (5, 1, 28, 28) and X4.dtype == torch.float64
    assert X4[3, 0, 7, 11] == images[3, 7, 11] / 255.0  # row-major pixel order kept


def test_gzip_is_detected_by_content_not_name(tmp_path, mnist):
    images, _ = mnist
    p = write_idx(tmp_path / "images.bin", images, gz=True)
    assert read_mnist_idx(p).shape == (5, 784)


def test_read_idx_other_types(tmp_path):
    a = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx", a, 0x0B)), a)
    f = np.linspace(0, 1, 6, dtype=np.float32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f.idx", f, 0x0D)), f)


def test_mnist_errors(tmp_path, mnist):
    images, labels = mnist
    ip = write_idx(tmp_path / "i", images)
    with pytest.raises(NFKError, match="not an IDX file"):
        (tmp_path / "bad").write_bytes(b"\x89PNG....")
        read_mnist_idx(tmp_path / "bad")
    with pytest.raises(NFKError, match="bytes but its header"):
        (tmp_path / "short").write_bytes(ip.read_bytes()[:-10])
        read_mnist_idx(tmp_path / "short")
    with pytest.raises(NFKError, match="expected \\(5,\\) labels"):
        read_mnist_idx(ip, write_idx(tmp_path / "l", labels[:4]))
    with pytest.raises(NFKError, match="MNIST images are"):
        read_mnist_idx(write_idx(tmp_path / "l1", labels))
    with pytest.raises(NFKError, match="No file"):
        read_mnist_idx(tmp_path / "missing")


def test_read_cifar10_binary_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    labels = np.array([3, 0, 9, 3])
    p1 = write_cifar(tmp_path / "data_batch_1.bin", labels, images)
    X, y = read_cifar10_binary(p1)
    assert X.shape == (4, 3, 32, 32) and y.tolist() == labels.tolist()
    assert torch.allclose(X, torch.tensor(images / 255.0, dtype=torch.float32))
    assert X[2, 1, 5, 6] == pytest.approx(images[2, 1, 5, 6] / 255.0)  # green plane, row 5, col 6
    p2 = write_cifar(tmp_path / "data_batch_2.bin", labels[:2], images[:2])
    X2, y2 = read_cifar10_binary([str(p1), p2], flatten=True)
    assert X2.shape == (6, 3072) and y2.tolist() == labels.tolist() + labels[:2].tolist()
    gz = tmp_path / "test_batch.bin.gz"
    gz.write_bytes(gzip.compress(p1.read_bytes()))
    assert torch.equal(read_cifar10_binary(gz)[0], X)


def test_cifar_errors(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(NFKError, match="not a multiple of 3073"):
        read_cifar10_binary(tmp_path / "odd.bin")
    (tmp_path / "lbl.bin").write_bytes(bytes([12]) + b"\x00" * 3072)
    with pytest.raises(NFKError, match="Labels above 9"):
        read_cifar10_binary(tmp_path / "lbl.bin")
    with pytest.raises(NFKError, match="at least one file"):
        read_cifar10_binary([])
