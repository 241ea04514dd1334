"""Data checks: loaders must keep the row order, class labels must name a class.

**Row order.** Refuse DataLoaders whose rows would not come out once each, in dataset order, on every
pass.

Rows of an embedding follow the data order, and a fit reads the data several times (Fisher passes,
sketch passes, the embedding): a loader that reorders, resamples or drops rows would pair the rows of
one pass with those of another and return a plausible but wrong embedding. So a loader is accepted
only when its indices are ``0, 1, ..., N-1`` in order, ``N = len(dataset)``:

* the known random samplers (``RandomSampler``, ``SubsetRandomSampler``, ``WeightedRandomSampler``)
  are refused by type, without drawing from them;
* any other sampler or batch sampler is checked by listing its indices twice (cheap: indices only,
  no data are loaded) and comparing them with ``range(N)``; ``drop_last`` that drops rows is named;
* iterable-style datasets are refused: they have no indices to check and may not repeat themselves.

**Example numbers** in messages are global: a process fitting one shard of the data (``fit_workers``,
torchrun) sets its shard's first row with :func:`shard_offset`, so an error names row 1000, not row
400 of the third shard.

**Labels.** A label outside ``0..C-1`` (or a fractional one) would index past the logits or be
truncated silently: :func:`check_label_range` names the first bad example.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from itertools import islice
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from torch.utils.data.sampler import BatchSampler

from .errors import NFKError

_OFFSET: ContextVar[int] = ContextVar("nfk_example_offset", default=0)


def global_index(local: int) -> int:
    """The number of a local example in the whole data set (see :func:`shard_offset`)."""
    return _OFFSET.get() + int(local)


@contextlib.contextmanager
def shard_offset(first_row: int) -> Iterator[None]:
    """Within the block, examples are numbered from ``first_row`` (this process's shard start)."""
    token = _OFFSET.set(int(first_row))
    try:
        yield
    finally:
        _OFFSET.reset(token)


_RANDOM = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)
_ITERABLE = (
    "nfk_nb needs a map-style Dataset (with __len__ and __getitem__), not an IterableDataset: a fit "
    "reads the data several times in the same order and needs their size; wrap the items in a "
    "TensorDataset or pass the tensors."
)


def refuse_iterable(data: Any) -> None:
    """Refuse an ``IterableDataset`` (alone or inside a DataLoader) with one sentence."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset):
        raise NFKError(_ITERABLE)


def _indices(loader: DataLoader) -> Iterable[int]:
    """The dataset indices one pass of ``loader`` visits, in order (no data are loaded)."""
    if loader.batch_sampler is None:  # batch_size=None: the sampler yields one index per item
        return loader.sampler
    return (i for batch in loader.batch_sampler for i in batch)


def check_loader_order(loader: DataLoader) -> int:
    """Check that ``loader`` visits every row of its dataset once, in order; return the row count.

    Parameters
    ----------
    loader : DataLoader

    Returns
    -------
    int
        ``len(loader.dataset)``.

    Raises
    ------
    NFKError
        An iterable-style dataset, a random sampler, a sampler or batch sampler that reorders, repeats
        or skips indices, or ``drop_last=True`` with a last batch that would be dropped.
    """
    refuse_iterable(loader)
    n = len(loader.dataset)  # type: ignore[arg-type]
    sampler = loader.sampler
    batch_sampler = loader.batch_sampler
    inner = batch_sampler.sampler if isinstance(batch_sampler, BatchSampler) else sampler
    for s in (sampler, inner):
        if isinstance(s, _RANDOM):
            raise NFKError(
                f"The DataLoader draws its rows at random ({type(s).__name__}); embedding rows follow the "
                f"data order, so pass a DataLoader with shuffle=False and no random sampler (take a "
                f"Subset of the dataset to fit on part of it)."
            )
    if isinstance(batch_sampler, BatchSampler) and batch_sampler.drop_last and n % batch_sampler.batch_size:
        raise NFKError(
            f"The DataLoader has drop_last=True and would drop the last {n % batch_sampler.batch_size} "
            f"of {n} rows; pass drop_last=False so that every row is embedded."
        )
    if isinstance(inner, SequentialSampler) and (
        batch_sampler is None or type(batch_sampler) is BatchSampler
    ):
        return n  # torch's own in-order samplers: nothing to draw
    for _ in range(2):  # twice: a sampler that reshuffles per pass is caught on its second pass
        _check_in_order(_indices(loader), n)
    return n


def _check_in_order(indices: Iterable[int], n: int) -> None:
    seen = 0
    for i, index in enumerate(islice(indices, n + 1)):
        if i == n or int(index) != i:
            what = (f"visits more than the {n} rows of its dataset" if i == n
                    else f"visits index {int(index)} in position {i}")
            raise NFKError(
                f"The DataLoader's sampler {what}; embedding rows follow the data order, so it must "
                f"visit indices 0..{n - 1} once each, in order (take a Subset of the dataset to fit "
                f"on part of it)."
            )
        seen += 1
    if seen < n:
        raise NFKError(
            f"The DataLoader visits only {seen} of the {n} rows of its dataset; every row must be "
            f"embedded once, in order (take a Subset of the dataset to fit on part of it)."
        )


def check_label_range(y: Tensor, n_classes: int, first_index: int = 0) -> None:
    """Refuse class labels outside ``0..n_classes-1`` or not whole numbers, naming the first example."""
    flat = y.detach().reshape(len(y), -1) if y.dim() else y.detach().reshape(1, 1)
    bad = (flat < 0) | (flat >= n_classes)
    if flat.is_floating_point() or flat.is_complex():
        bad |= flat != torch.round(flat.real)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        value, row = flat[row, col].item(), global_index(first_index + row)
        raise NFKError(
            f"Label {value!r} of example {row} is not a class index: the classifier has "
            f"{n_classes} classes, so labels must be whole numbers in 0..{n_classes - 1}."
        )
