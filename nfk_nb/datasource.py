"""Turn what users pass as data into re-iterable batches.

Data may be a tensor, an ``(X, y)`` tuple, a dict of tensors (or a Hugging Face ``BatchEncoding``),
a Dataset (of tuples or of dicts) or a DataLoader (yielding tuples or dicts). Dict batches travel as
:class:`~nfk_nb.batch.KeyedBatch` tuples, so the model is called as ``model(**batch)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .batch import Batch, KeyedBatch, from_mapping, has_labels, labels_of, like
from .data_checks import check_label_range, check_loader_order, global_index, refuse_iterable
from .data_digest import PassDigest, update_digest
from .errors import NFKError, NFKTypeError


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
    if isinstance(batch, KeyedBatch):
        return batch
    if isinstance(batch, Mapping):  # dict, BatchEncoding (a UserDict), ...
        return from_mapping(batch, _as_tensor)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2 and isinstance(batch[0], Mapping):  # (encoding, labels)
            return from_mapping({**batch[0], "labels": batch[1]}, _as_tensor)
        return tuple(_as_tensor(b, "Each part of a batch") for b in batch)
    return (_as_tensor(batch, "A batch"),)


class DataSource:
    """Re-iterable, ordered batches of tuples ``(x, y, ...)`` with a known number of examples.

    Parameters
    ----------
    data : Tensor, ndarray, tuple, dict, Dataset or DataLoader
        ``(X, y)`` tuples and dicts of tensors (all with the examples on the first axis) are split
        together; a DataLoader is used as is (it must not shuffle, since rows of the embedding
        follow the data order).
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
                    raise NFKError(_length_message(tensors, n, len(t)))
            self._tensors = tensors
            self.n = n
            check_finite(tensors)
        if self.n == 0:
            raise NFKError("The data are empty: there is nothing to embed.")

    @property
    def has_labels(self) -> bool:
        return has_labels(self._tensors if self._tensors is not None else next(iter(self)))

    def __len__(self) -> int:
        return self.n

    def limit_labels(self, n_classes: int) -> None:
        """Refuse labels outside ``0..n_classes-1``: all of them now for tensors, else batch by batch."""
        self._n_classes = int(n_classes)
        labels = None if self._tensors is None else labels_of(self._tensors)
        if labels is not None:
            check_label_range(labels, self._n_classes)

    def digest_next_pass(self, on_done: Callable[[str], None]) -> None:
        """Hash every batch of the next complete pass and call ``on_done(hex digest)`` at its end.

        Used by checkpoints to identify all of the data at no extra pass (see ``data_digest.py``);
        passes abandoned early (``first()``) do not count.
        """
        self._on_pass = on_done

    def __iter__(self) -> Iterator[Batch]:
        on_done = self.__dict__.get("_on_pass")
        if on_done is None:
            yield from self._iter_batches()
            return
        h = PassDigest.new_hash()
        for batch in self._iter_batches():
            update_digest(h, batch)
            yield batch
        if self.__dict__.get("_on_pass") is on_done:  # the first full pass: report it once
            self._on_pass = None
            on_done(h.hexdigest())

    def _iter_batches(self) -> Iterator[Batch]:
        if self._tensors is not None:
            for start in range(0, self.n, self.batch_size):
                yield like(self._tensors, (t[start : start + self.batch_size] for t in self._tensors))
        else:
            assert self._loader is not None
            start = 0
            for batch in self._loader:
                batch = _as_tuple(batch)
                check_finite(batch, start)  # loaders are streamed: checked batch by batch
                labels = labels_of(batch)
                if self._n_classes is not None and labels is not None:
                    check_label_range(labels, self._n_classes, start)
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


def _length_message(tensors: Batch, n: int, other: int) -> str:
    if isinstance(tensors, KeyedBatch):
        sizes = ", ".join(f"{k}: {len(t) if t.dim() else 0}" for k, t in zip(tensors.keys, tensors))
        return f"The values of the data dict have different numbers of examples ({sizes})."
    return f"The parts of the data have different lengths ({n} inputs, {other} targets)."


def as_source(data: Any, batch_size: int = 256, y: Any = None) -> DataSource:
    """Wrap ``data`` (and separate targets ``y``, sklearn-style) into a :class:`DataSource`."""
    if isinstance(data, DataSource):
        return data
    if y is not None:
        if isinstance(data, (Dataset, DataLoader)):
            raise NFKError("Pass targets inside the Dataset or DataLoader, not as y.")
        data = (data, y)
    return DataSource(data, batch_size)
