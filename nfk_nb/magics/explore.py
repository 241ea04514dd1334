"""``%nfk explore EST DATA``: the interactive nearest-neighbour explorer of an embedding.

Interactive explorer: the embedding of DATA in 2-D coloured by label; choosing a point shows its nearest
neighbours in NFK space (cosine).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from IPython.core.error import UsageError
from torch.utils.data import DataLoader, Dataset

from ..lowrank import LowRankNFK
from .parser import Parser, add_out, nonnegative_int, positive_int, shape

if TYPE_CHECKING:
    from .core import NFKMagics


def add_arguments(p: Parser) -> None:
    p.add_argument("EST", help="fitted LowRankNFK, or an N×k embedding of DATA")
    p.add_argument("DATA", help="the inputs (X, or (X, y) whose y become the labels)")
    p.add_argument("--labels", metavar="Y", help="labels colouring the points")
    p.add_argument("--images", type=shape, metavar="H,W", help="show inputs as H×W images, e.g. 8,8")
    p.add_argument("--neighbours", metavar="K", type=positive_int, default=None,
                   help="how many neighbours to show (default: NFKMagics.neighbours)")
    p.add_argument("--index", metavar="I", type=nonnegative_int, default=0, help="the point selected first")
    add_out(p)


def run(m: NFKMagics, args: argparse.Namespace, cell: str | None = None) -> Any:
    from ..widgets import EmbeddingExplorer
    from .core import core_errors

    obj = m.value(args.EST, "EST")
    data = m.data(args.DATA)
    X = data[0] if isinstance(data, (tuple, list)) else data
    if isinstance(data, (Dataset, DataLoader)) and args.images:
        raise UsageError("--images needs DATA as a tensor (or (X, y)), not a Dataset or DataLoader.")
    if args.images:
        h, w = args.images
        per_input = int(np.prod(tuple(X.shape[1:])))
        if per_input != h * w:
            raise UsageError(f"--images {h},{w} needs {h * w} values per input, but DATA has {per_input}.")
    if isinstance(obj, LowRankNFK):
        est = m.estimator(args.EST)
        m.check_labels(est.lik, data)
        n = m.n_rows(data)
    elif isinstance(obj, (torch.Tensor, np.ndarray)) and obj.ndim == 2:
        est, n = None, len(obj)
    else:
        raise UsageError(f"EST {args.EST!r} is a {type(obj).__name__}, not a fitted LowRankNFK or an N×k "
                         f"embedding.")
    if args.index >= n:
        raise UsageError(f"--index {args.index} is out of range for {n} points.")
    labels = None
    if args.labels is not None:
        labels = m.labels(args.labels, n, "--labels")
    elif isinstance(data, (tuple, list)) and len(data) > 1:
        labels = data[1]
    with core_errors("Embedding"):
        E = obj if est is None else est.transform(data)
    with core_errors("The explorer"):
        return EmbeddingExplorer(E, labels, X if args.images else None, args.images,
                                 n_neighbours=m.pick(args.neighbours, "neighbours"), index=args.index)
