"""``%nfk fit MODEL DATA`` / ``%%nfk fit``: fit a ``LowRankNFK``; returns the fitted estimator.

Fit a low-rank NFK (LowRankNFK) of MODEL on DATA; returns the fitted estimator. As %%nfk fit, the cell
body runs first and must define `model` and `data` (or the names given by --model/--data).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from ..lowrank import LowRankNFK
from ..options import HELP
from .parser import Parser, add_fisher_options, add_model_options, add_out, nonnegative_int, positive_int

if TYPE_CHECKING:
    from .core import NFKMagics


def add_arguments(p: Parser) -> None:
    p.add_argument("MODEL", nargs="?", help="torch module, (encoder, decoder) tuple or nfk_nb likelihood")
    p.add_argument("DATA", nargs="?", help="tensor, (X, y) tuple, Dataset or DataLoader")
    p.add_argument("--model", dest="model_name", metavar="NAME",
                   help="cell mode: the name the cell body gives the model (default: model)")
    p.add_argument("--data", dest="data_name", metavar="NAME",
                   help="cell mode: the name the cell body gives the data (default: data)")
    p.add_argument("--labels", metavar="NAME", help="labels or targets to pair with DATA, as (DATA, LABELS)")
    add_model_options(p)
    g = p.add_argument_group("low-rank approximation")
    g.add_argument("--rank", metavar="K", type=positive_int, default=None,
                   help=f"{HELP['rank']} (default: NFKMagics.rank)")
    g.add_argument("--power-iters", metavar="Q", type=nonnegative_int, default=None,
                   help=f"{HELP['power_iters']} (default: NFKMagics.power_iters)")
    g.add_argument("--oversample", metavar="P", type=nonnegative_int, default=None,
                   help=f"{HELP['oversample']} (default: NFKMagics.oversample)")
    g.add_argument("--workers", metavar="N", type=positive_int, default=None,
                   help="fit in N local processes (nfk_nb.launch.fit_workers; default: NFKMagics.workers)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_fisher_options(p)
    add_out(p)


def run(m: NFKMagics, args: argparse.Namespace, cell: str | None = None) -> LowRankNFK:
    from .core import core_errors

    if cell is not None:
        m.shell.ex(cell)  # the user's cell body, in the user namespace
        model_expr = args.MODEL or args.model_name or "model"
        data_expr = args.DATA or args.data_name or "data"
    else:
        if args.model_name or args.data_name:
            raise UsageError("--model/--data name what a %%nfk fit cell defines; on a line write "
                             "%nfk fit MODEL DATA.")
        if args.MODEL is None or args.DATA is None:
            raise UsageError("%nfk fit needs MODEL and DATA: %nfk fit MODEL DATA [options].")
        model_expr, data_expr = args.MODEL, args.DATA
    lik = m.likelihood(m.value(model_expr, "MODEL"), model_expr, args)
    data = m.data(data_expr, args.labels)
    m.check_labels(lik, data)
    workers = m.pick(args.workers, "workers")
    names = ("rank", "fisher", "damping", "power_iters", "oversample", "batch_size", "device", "seed")
    with core_errors("Fitting the NFK"):
        est = LowRankNFK(lik, progress=m.progress and not args.quiet,
                         **{name: m.pick(getattr(args, name), name) for name in names})
        est.check_settings()  # every option is checked before any computation
        if workers > 1:
            from .. import launch

            launch.fit_workers(est, data, workers=workers)
        else:
            est.fit(data)
    return est
