"""``%nfk kernel EST_OR_MODEL DATA [DATA2]``: a kernel matrix, shown as a heatmap.

Kernel matrix between DATA and DATA2 (default DATA), shown as a heatmap: E1 E2ᵀ from a fitted estimator,
or the exact NFK with --exact or when given a model.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import torch
from IPython.core.error import UsageError

from ..display import show_figure
from ..lowrank import LowRankNFK
from .parser import Parser, add_fisher_options, add_model_options, add_out

if TYPE_CHECKING:
    from .core import NFKMagics

MAX_HEATMAP = 2000  # larger kernels are shown by their top-left block


def add_arguments(p: Parser) -> None:
    p.add_argument("EST_OR_MODEL", help="fitted LowRankNFK, torch module or nfk_nb likelihood")
    p.add_argument("DATA", help="rows of the kernel")
    p.add_argument("DATA2", nargs="?", help="columns of the kernel (default: DATA)")
    p.add_argument("--exact", action="store_true",
                   help="exact NFK (dense Fisher vectors; small models only) instead of the low-rank one")
    p.add_argument("--labels", metavar="NAME", help="sort the heatmap by these labels (square kernels)")
    p.add_argument("--no-plot", action="store_true", help="return the matrix without the heatmap")
    add_model_options(p)
    add_fisher_options(p)
    add_out(p)


def run(m: NFKMagics, args: argparse.Namespace, cell: str | None = None) -> torch.Tensor:
    from ..exact import fisher_kernel
    from .core import core_errors

    obj = m.value(args.EST_OR_MODEL, "EST_OR_MODEL")
    X = m.data(args.DATA)
    Z = None if args.DATA2 is None else m.data(args.DATA2, what="DATA2")
    labels = None
    if args.labels is not None and not args.no_plot:  # checked before the kernel is computed
        if Z is not None:
            raise UsageError("--labels sorts a square kernel; drop DATA2 or --labels.")
        labels = m.labels(args.labels, m.n_rows(X), "--labels")
    if isinstance(obj, LowRankNFK):
        est = m.estimator(args.EST_OR_MODEL, "EST_OR_MODEL")
        if args.exact:
            with core_errors("The exact kernel"):
                K = fisher_kernel(est.lik, X, Z, fisher=args.fisher or est.fisher,
                                  damping=est.damping if args.damping is None else args.damping,
                                  batch_size=args.batch_size or est.batch_size,
                                  device=args.device or est.device, seed=est.seed)
        else:
            with core_errors("The low-rank kernel"):
                E1 = est.transform(X)
                K = E1 @ (E1 if Z is None else est.transform(Z)).T
    else:
        lik = m.likelihood(obj, args.EST_OR_MODEL, args)
        with core_errors("The exact kernel"):
            names = ("fisher", "damping", "batch_size", "device", "seed")
            K = fisher_kernel(lik, X, Z, **{name: m.pick(getattr(args, name), name) for name in names})
    if not args.no_plot:
        _show(K, labels)
    return K


def _show(K: torch.Tensor, labels: torch.Tensor | None) -> None:
    from ..plots import plot_kernel
    from .core import core_errors

    block = K[:MAX_HEATMAP, :MAX_HEATMAP]
    with core_errors("Plotting the kernel"):
        fig = plot_kernel(block, None if labels is None else labels[:MAX_HEATMAP])
    show_figure(fig, f"kernel heatmap {K.shape[0]}×{K.shape[1]}")
