"""``%nfk spectrum EST``: singular values and cumulative explained variance, one figure.

Singular values and cumulative explained variance of a fitted estimator, one figure.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .parser import Parser, add_out

if TYPE_CHECKING:
    from .core import NFKMagics


def add_arguments(p: Parser) -> None:
    p.add_argument("EST", help="fitted LowRankNFK")
    add_out(p)


def run(m: NFKMagics, args: argparse.Namespace, cell: str | None = None) -> Any:
    from ..plots import plot_spectrum

    return plot_spectrum(m.estimator(args.EST))
