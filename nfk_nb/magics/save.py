"""``%nfk save EST PATH``: save a fitted estimator (safetensors, never pickled).

Save a fitted estimator (safetensors, never pickled).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from .parser import Parser

if TYPE_CHECKING:
    from .core import NFKMagics


def add_arguments(p: Parser) -> None:
    p.add_argument("EST", help="fitted LowRankNFK")
    p.add_argument("PATH", help="file to write, e.g. est.nfk")


def run(m: NFKMagics, args: argparse.Namespace, cell: str | None = None) -> None:
    from ..display import fit_summary_text
    from .core import core_errors

    est = m.estimator(args.EST)
    path = Path(args.PATH).expanduser()
    with core_errors("Saving"):
        try:
            est.save(path)
        except OSError as exc:
            raise UsageError(f"Cannot write {str(path)!r}: {exc.strerror or exc}.") from None
    print(f"Saved {fit_summary_text(est)} to {path}")
