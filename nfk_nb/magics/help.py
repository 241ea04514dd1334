"""``%nfk help [SUBCOMMAND]``: the overview, or every option of one subcommand.

Show help on %nfk or one subcommand.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .parser import Parser

if TYPE_CHECKING:
    from .core import NFKMagics


def add_arguments(p: Parser) -> None:
    from .commands import SUBCOMMAND_NAMES

    p.add_argument("SUBCOMMAND", nargs="?", choices=[s for s in SUBCOMMAND_NAMES if s != "help"])


def run(m: NFKMagics, args: argparse.Namespace, cell: str | None = None) -> None:
    from .commands import OVERVIEW, PARSERS

    print(OVERVIEW if args.SUBCOMMAND is None else PARSERS[args.SUBCOMMAND].format_help())
