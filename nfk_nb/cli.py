"""``nfk-nb`` command line: each subcommand lives in the module that owns its feature.

* ``nfk-nb run NOTEBOOK [-p NAME VALUE ...] [--out DIR]`` / ``nfk-nb run --all``  (report.py)
* ``nfk-nb enable-extension``  – load ``%nfk`` in every IPython session        (enable_extension.py)
* ``nfk-nb fit SCRIPT ...``    – fit from a Python file, torchrun-friendly      (fit_command.py)
* ``nfk-nb strip NOTEBOOK ...`` – remove outputs before committing               (report.py)
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, function adding its arguments, function running it)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("nfk_nb.report", "add_run_arguments", "run_command"),
    "enable-extension": ("nfk_nb.enable_extension", "add_enable_arguments", "enable_command"),
    "fit": ("nfk_nb.fit_command", "add_fit_arguments", "fit_command"),
    "strip": ("nfk_nb.report", "add_strip_arguments", "strip_command"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfk-nb", description="Neural Fisher Kernel tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, add_args, _) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0].replace("%", "%%"))
        getattr(mod, add_args)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, _, run = SUBCOMMANDS[args.command]
    return int(getattr(importlib.import_module(module), run)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
