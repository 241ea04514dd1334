"""``%nfk embed EST DATA``: the N×k embedding of DATA by a fitted estimator.

Embed DATA with a fitted estimator: an N×k tensor.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import torch

from .parser import Parser, add_out

if TYPE_CHECKING:
    from .core import NFKMagics


def add_arguments(p: Parser) -> None:
    p.add_argument("EST", help="fitted LowRankNFK")
    p.add_argument("DATA", help="tensor, (X, y) tuple, Dataset or DataLoader")
    p.add_argument("--labels", metavar="NAME", help="labels to pair with DATA (for score='label')")
    add_out(p)


def run(m: NFKMagics, args: argparse.Namespace, cell: str | None = None) -> torch.Tensor:
    from .core import core_errors

    est = m.estimator(args.EST)
    data = m.data(args.DATA, args.labels)
    m.check_labels(est.lik, data)
    with core_errors("Embedding"):
        return est.transform(data)
