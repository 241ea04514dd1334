"""Turn what users pass as data (tensor, ``(X, y)``, Dataset, DataLoader) into re-iterable batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .data_checks import check_label_range, check_loader_order, global_index, refuse_iterable
from .errors import NFKError, NFKTypeError

Batch = tuple[Tensor, ...]


def _as_tensor(a: Any, what: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach()  # the NFK differentiates θ, never the data: input gradients are not ours
    if isinstance(a, np.ndarray) or hasattr(a, "__array__"):  # NumPy, pandas, ...
        arr = np.asarray(a)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise NFKTypeError(
                f"{what} has NumPy dtype {arr.dtype}; convert it to a numeric array first."
            )
        return torch.from_numpy(arr)
    raise NFKTypeError(
        f"{what} must be a torch.Tensor, a NumPy array, an (X, y) tuple, a Dataset or a DataLoader, "
        f"not {type(a).__name__}."
    )


def check_finite(tensors: Batch, first_index: int = 0) -> None:
    """Refuse NaN or infinite values in the floating parts of a batch, naming the first bad example."""
    for t in tensors:
        if (t.is_floating_point() or t.is_complex()) and t.dim() and t.numel():
            bad = ~torch.isfinite(t.reshape(len(t), -1)).all(1)
            if bool(bad.any()):
                row = global_index(first_index + int(bad.nonzero()[0]))
                raise NFKError(
                    f"The data contain NaN or infinite values (first at example {row}); remove or "
                    f"impute them before computing the NFK."
                )


def _as_tuple(batch: Any) -> Batch:
    if isinstance(batch, Tensor):
        return (batch.detach(),)
    if isinstance(batch, (tuple, list)):
        return tuple(_as_tensor(b, "Each part of a batch") for b in batch)
    if isinstance(batch, dict):
        raise NFKTypeError(
            "Dict batches are not supported directly: wrap the model in a custom Likelihood and "
            "yield (x, y) tuples."
        )
    return (_as_tensor(batch, "A batch"),)


class DataSource:
    """Re-iterable, ordered batches of tuples ``(x, y, ...)`` with a known number of examples.

    Parameters
    ----------
    data : Tensor, ndarray, tuple, Dataset or DataLoader
        ``(X, y)`` tuples are split together; a DataLoader is used as is (it must not shuffle,
        since rows of the embedding follow the data order).
    batch_size : int
        Batch size for tensors and Datasets.
    """

    def __init__(self, data: Any, batch_size: int = 256) -> None:
        if int(batch_size) < 1:
            raise NFKError(f"batch_size must be at least 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        self._loader: DataLoader | None = None
        self._tensors: Batch | None = None
        self._n_classes: int | None = None
        if isinstance(data, DataLoader):
            self.n = check_loader_order(data)  # rows once each, in order, on every pass
            self._loader = data
        elif isinstance(data, Dataset):
            refuse_iterable(data)
            self._loader = DataLoader(data, batch_size=self.batch_size, shuffle=False)
            self.n = len(data)  # type: ignore[arg-type]
        else:
            tensors = _as_tuple(data)
            n = len(tensors[0]) if tensors[0].dim() > 0 else 0
            for t in tensors[1:]:
                if len(t) != n:
                    raise NFKError(
                        f"The parts of the data have different lengths ({n} inputs, {len(t)} targets)."
                    )
            self._tensors = tensors
            self.n = n
            check_finite(tensors)
        if self.n == 0:
            raise NFKError("The data are empty: there is nothing to embed.")

    @property
    def has_labels(self) -> bool:
        if self._tensors is not None:
            return len(self._tensors) > 1
        return len(next(iter(self))) > 1

    def __len__(self) -> int:
        return self.n

    def limit_labels(self, n_classes: int) -> None:
        """Refuse labels outside ``0..n_classes-1``: all of them now for tensors, else batch by batch."""
        self._n_classes = int(n_classes)
        if self._tensors is not None and len(self._tensors) > 1:
            check_label_range(self._tensors[1], self._n_classes)

    def __iter__(self) -> Iterator[Batch]:
        if self._tensors is not None:
            for start in range(0, self.n, self.batch_size):
                yield tuple(t[start : start + self.batch_size] for t in self._tensors)
        else:
            assert self._loader is not None
            start = 0
            for batch in self._loader:
                batch = _as_tuple(batch)
                check_finite(batch, start)  # loaders are streamed: checked batch by batch
                if self._n_classes is not None and len(batch) > 1:
                    check_label_range(batch[1], self._n_classes, start)
                start += len(batch[0])
                yield batch
            if start != self.n:  # a sampler the order check could not foresee (e.g. it changed)
                raise NFKError(
                    f"The DataLoader yielded {start} rows but its dataset has {self.n}; every row "
                    f"must be embedded once, in order."
                )

    def first(self) -> Batch:
        """The first batch (used for shape checks)."""
        return next(iter(self))


def as_source(data: Any, batch_size: int = 256, y: Any = None) -> DataSource:
    """Wrap ``data`` (and separate targets ``y``, sklearn-style) into a :class:`DataSource`."""
    if isinstance(data, DataSource):
        return data
    if y is not None:
        if isinstance(data, (Dataset, DataLoader)):
            raise NFKError("Pass targets inside the Dataset or DataLoader, not as y.")
        data = (data, y)
    return DataSource(data, batch_size)
