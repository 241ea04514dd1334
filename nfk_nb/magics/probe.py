"""``%nfk probe EMB LABELS``: linear-probe accuracy, cross-validated or on a held-out set.

Linear-probe accuracy (logistic regression on standardised features): cross-validated on EMB, or trained
on EMB and scored on --test EMB2 LABELS2.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from IPython.core.error import UsageError

from ..display import ProbeResult
from ..lowrank import LowRankNFK
from .parser import Parser, add_out, positive_int

if TYPE_CHECKING:
    from .core import NFKMagics


def add_arguments(p: Parser) -> None:
    p.add_argument("EMB", help="N×k embedding, or a fitted LowRankNFK (its fit embedding)")
    p.add_argument("LABELS", help="N labels")
    p.add_argument("--test", nargs=2, metavar=("EMB2", "LABELS2"), help="held-out embedding and labels")
    p.add_argument("--cv", metavar="K", type=positive_int, default=5,
                   help="cross-validation folds without --test (default 5)")
    add_out(p)


def _embedding(m: NFKMagics, expr: str, what: str) -> Any:
    E = m.value(expr, what)
    if isinstance(E, LowRankNFK):
        E = m.estimator(expr, what).embedding_
    if not isinstance(E, (torch.Tensor, np.ndarray)):
        raise UsageError(f"{what} {expr!r} is a {type(E).__name__}, not an embedding (N×k tensor) or "
                         f"a fitted LowRankNFK.")
    if E.ndim != 2:
        raise UsageError(f"{what} {expr!r} must be 2-D (examples × features), got shape {tuple(E.shape)}.")
    return E


def run(m: NFKMagics, args: argparse.Namespace, cell: str | None = None) -> ProbeResult:
    from ..evaluate import linear_probe
    from .core import core_errors

    if not args.test and args.cv < 2:
        raise UsageError(f"--cv needs at least 2 folds, got {args.cv}; or use --test EMB2 LABELS2.")
    E = _embedding(m, args.EMB, "EMB")
    y = m.labels(args.LABELS, len(E), "LABELS")
    if args.test:
        Et = _embedding(m, args.test[0], "EMB2")
        if Et.shape[1] != E.shape[1]:
            raise UsageError(f"EMB2 has {Et.shape[1]} features but EMB has {E.shape[1]}.")
        yt = m.labels(args.test[1], len(Et), "LABELS2")
        with core_errors("The linear probe"):
            acc = linear_probe(E, y, Et, yt)
        return ProbeResult(acc, "test", len(E), len(Et), E.shape[1], 0)
    if int(np.bincount(np.unique(y.numpy(), return_inverse=True)[1]).min()) < args.cv:
        raise UsageError(f"Some class has fewer than --cv {args.cv} examples; lower --cv or use "
                         f"--test EMB2 LABELS2.")
    with core_errors("The linear probe"):
        acc = linear_probe(E, y, cv=args.cv)
    return ProbeResult(acc, "cv", len(E), 0, E.shape[1], args.cv)
