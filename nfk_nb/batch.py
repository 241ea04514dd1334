"""Batches: tuples of tensors ``(x, y, ...)``, or keyed tuples for dict data (Hugging Face style).

A tokenizer returns a dict (``BatchEncoding``) of ``input_ids``, ``attention_mask`` and maybe
``labels``; models are called as ``model(**batch)``. Inside nfk_nb every batch is a tuple of tensors
with the examples on the first axis, so slicing, moving and ``vmap`` work the same for both kinds:
a dict batch travels as a :class:`KeyedBatch`, a tuple that remembers its keys. Code that rebuilds
a batch goes through :func:`map_batch` / :func:`like` so that the keys survive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor

Batch = tuple[Tensor, ...]
LABELS = "labels"


class KeyedBatch(tuple):
    """A tuple of tensors that remembers the dict keys it came from (``batch.keys``)."""

    keys: tuple[str, ...]

    def __new__(cls, keys: Iterable[str], values: Iterable[Tensor]) -> KeyedBatch:
        obj = super().__new__(cls, tuple(values))
        obj.keys = tuple(keys)
        if len(obj.keys) != len(obj):
            raise ValueError(f"{len(obj.keys)} keys for {len(obj)} values.")
        return obj

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (DataLoader workers)
        return (KeyedBatch, (self.keys, tuple(self)))

    def as_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.keys, self))

    def inputs(self) -> dict[str, Tensor]:
        """The keyword arguments of ``model(**inputs)``: every key except ``labels``."""
        return {k: v for k, v in zip(self.keys, self) if k != LABELS}

    def __repr__(self) -> str:
        return f"KeyedBatch({', '.join(f'{k}={tuple(v.shape)}' for k, v in zip(self.keys, self))})"


def from_mapping(data: Mapping[str, Any], convert: Callable[[Any, str], Tensor]) -> KeyedBatch:
    """A :class:`KeyedBatch` from a dict-like batch, each value passed through ``convert``."""
    return KeyedBatch(data.keys(), (convert(v, f"The value of key {k!r}") for k, v in data.items()))


def like(template: Batch, values: Iterable[Tensor]) -> Batch:
    """``values`` as a batch of the same kind as ``template`` (keys kept for a keyed batch)."""
    if isinstance(template, KeyedBatch):
        return KeyedBatch(template.keys, values)
    return tuple(values)


def map_batch(batch: Batch, fn: Callable[[Tensor], Tensor]) -> Batch:
    """``fn`` applied to every tensor of the batch, keys kept."""
    return like(batch, (fn(t) for t in batch))


def slice_batch(batch: Batch, start: int, stop: int | None = None) -> Batch:
    """Examples ``start:stop`` of a batch, keys kept."""
    return map_batch(batch, lambda t: t[start:stop])


def has_labels(batch: Batch) -> bool:
    """Whether the batch carries targets: a ``labels`` key, or a second tensor."""
    if isinstance(batch, KeyedBatch):
        return LABELS in batch.keys
    return len(batch) > 1


def labels_of(batch: Batch) -> Tensor | None:
    """The targets of a batch (``labels`` key or second tensor), or None."""
    if isinstance(batch, KeyedBatch):
        return batch.as_dict().get(LABELS)
    return batch[1] if len(batch) > 1 else None


def with_labels(batch: Batch, labels: Tensor) -> Batch:
    """The batch with its targets (``labels`` key or second tensor) replaced by ``labels``."""
    if isinstance(batch, KeyedBatch):
        return KeyedBatch(batch.keys, (labels if k == LABELS else v for k, v in zip(batch.keys, batch)))
    return (batch[0], labels, *batch[2:])
