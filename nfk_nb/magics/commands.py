"""The ``%nfk`` subcommands: one module each, one parser each, and the help text built from them."""

from __future__ import annotations

from types import ModuleType

from . import embed, explore, fit, help, kernel, load, probe, save, spectrum
from .parser import Parser

SUBCOMMANDS: dict[str, ModuleType] = {
    "fit": fit, "embed": embed, "kernel": kernel, "spectrum": spectrum, "probe": probe,
    "explore": explore, "save": save, "load": load, "help": help,
}
SUBCOMMAND_NAMES = tuple(SUBCOMMANDS)


def build_parsers() -> dict[str, Parser]:
    """One argparse parser per ``%nfk`` subcommand (errors raise ``UsageError``)."""
    parsers = {}
    for name, module in SUBCOMMANDS.items():
        # the module docstring: a usage line, then the description shown by %nfk help SUB
        parsers[name] = Parser(name, " ".join(module.__doc__.split("\n\n", 1)[1].split()))
        module.add_arguments(parsers[name])
    return parsers


PARSERS = build_parsers()

_USAGE = [
    ("%nfk fit MODEL DATA [options] [-o NAME]", "fit a low-rank NFK; returns the estimator"),
    ("%%nfk fit [options]", "same, the cell body defines `model` and `data`"),
    ("%nfk embed EST DATA [-o NAME]", "N×k embedding of DATA"),
    ("%nfk kernel EST_OR_MODEL DATA [DATA2] [--exact]", "kernel matrix and heatmap"),
    ("%nfk spectrum EST", "singular values and explained variance"),
    ("%nfk probe EMB LABELS [--test EMB2 LABELS2]", "linear-probe accuracy"),
    ("%nfk explore EST DATA [--labels Y] [--images H,W]", "nearest-neighbour explorer"),
    ("%nfk save EST PATH", "save a fitted estimator"),
    ("%nfk load PATH MODEL [-o NAME]", "load it for its model"),
    ("%nfk help [SUBCOMMAND]", "every option of a subcommand"),
]
_WIDTH = max(len(usage) for usage, _ in _USAGE) + 2

OVERVIEW = "%nfk SUBCOMMAND ARGS...  -- Neural Fisher Kernel magics (nfk_nb).\n\n" + "\n".join(
    f"  {usage:<{_WIDTH}}{what}" for usage, what in _USAGE
) + """

Names and Python expressions are evaluated in the notebook ($name and {expr} are substituted first,
e.g. --rank $rank); defaults come from %config NFKMagics (e.g. %config NFKMagics.rank = 32).
Every option of a subcommand: %nfk help SUB (e.g. %nfk help fit)."""
