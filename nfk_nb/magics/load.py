"""``%nfk load PATH MODEL``: load a saved estimator for the model it was fitted on.

Load a saved estimator for MODEL (the model it was fitted on); the model family is read from the file
unless --kind is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from ..errors import NFKError
from ..likelihoods import Likelihood
from ..lowrank import LowRankNFK
from ..options import MODEL_KINDS
from ..serialization import read_meta
from .parser import Parser, add_model_options, add_out, device

if TYPE_CHECKING:
    from .core import NFKMagics


def add_arguments(p: Parser) -> None:
    p.add_argument("PATH", help="file written by %%nfk save")
    p.add_argument("MODEL", help="torch module, (encoder, decoder) tuple or nfk_nb likelihood")
    add_model_options(p)
    p.add_argument("--device", metavar="D", type=device, default=None,
                   help="compute device for later transforms")
    add_out(p)


def run(m: NFKMagics, args: argparse.Namespace, cell: str | None = None) -> LowRankNFK:
    from .core import core_errors

    path = str(Path(args.PATH).expanduser())
    try:
        saved = dict(read_meta(path).get("likelihood") or {})
    except NFKError as exc:
        raise UsageError(str(exc)) from None
    model = m.value(args.MODEL, "MODEL")
    if args.kind is None and not isinstance(model, Likelihood):
        args.kind = saved.get("family")
        if args.kind not in MODEL_KINDS:
            raise UsageError(f"{path!r} was fitted on a custom likelihood: pass that nfk_nb likelihood "
                             f"as MODEL.")
        if args.kind == "classifier" and args.score is None:
            args.score = saved.get("score")
        if args.kind == "regression" and "sigma" in saved:
            args.sigma = float(saved["sigma"])
    lik = m.likelihood(model, args.MODEL, args)
    with core_errors("Loading"):
        return LowRankNFK.load(path, lik, device=args.device)
