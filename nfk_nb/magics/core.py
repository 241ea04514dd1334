"""``NFKMagics``: the ``%nfk`` / ``%%nfk`` entry point, its configurable defaults and the helpers that
turn names in the notebook into data, labels, estimators and likelihoods (with one-sentence errors).

Each subcommand lives in its own module (``nfk_nb.magics.fit``, ``.embed``, ...); :mod:`.commands`
lists them. Defaults are the estimator's (:data:`nfk_nb.options.DEFAULTS`), overridable with
``%config NFKMagics.<name> = value``.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from torch.utils.data import DataLoader, Dataset
from traitlets import Bool, Enum, Float, Int, Unicode

from ..errors import NFKError
from ..likelihoods import Likelihood, Regressor
from ..lowrank import LowRankNFK
from ..options import (
    DEFAULTS,
    FISHER_KINDS,
    KIND_ALIASES,
    MODEL_KINDS,
    SCORES,
    canonical_kind,
    make_likelihood,
)
from .commands import OVERVIEW, PARSERS, SUBCOMMANDS
from .parser import HelpShown, split_args


@contextmanager
def core_errors(action: str) -> Iterator[None]:
    """Turn errors from the core, the model or the data into one-sentence ``UsageError``s."""
    try:
        yield
    except UsageError:
        raise
    except NFKError as exc:
        raise UsageError(str(exc)) from exc
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(f"{action} failed: {type(exc).__name__}: {first}") from exc


def _is_data(obj: Any) -> bool:
    return isinstance(obj, (torch.Tensor, np.ndarray, tuple, list, Dataset, DataLoader))


def _trait(cls: type, name: str, help: str, **kw: Any) -> Any:
    return cls(DEFAULTS[name], help=help, **kw).tag(config=True)


@magics_class
class NFKMagics(Magics):
    """The ``%nfk`` magics; defaults are configurable with ``%config NFKMagics.<name> = value``."""

    rank = _trait(Int, "rank", "Default embedding dimension k of %nfk fit.", min=1)
    fisher = Enum(list(FISHER_KINDS), DEFAULTS["fisher"], help="Default Fisher estimate.").tag(config=True)
    damping = _trait(Float, "damping", "Default relative damping.", min=0.0)
    power_iters = _trait(Int, "power_iters", "Default power iterations.", min=0)
    oversample = _trait(Int, "oversample", "Default oversampling of the sketch.", min=0)
    batch_size = _trait(Int, "batch_size", "Default batch size.", min=1)
    device = Unicode(DEFAULTS["device"], allow_none=True,
                     help="Default device (None: CUDA when present).").tag(config=True)
    seed = _trait(Int, "seed", "Default seed.")
    kind = Enum(list(MODEL_KINDS + tuple(KIND_ALIASES)), "classifier",
                help="Default model family of a torch module.").tag(config=True)
    score = Enum(list(SCORES), "joint", help="Default classifier score.").tag(config=True)
    workers = Int(1, min=1, help="Default number of local processes of %nfk fit.").tag(config=True)
    progress = Bool(True, help="Show progress bars while fitting.").tag(config=True)
    neighbours = Int(8, min=1, help="Neighbours shown by %nfk explore.").tag(config=True)

    # -- entry point ------------------------------------------------------------------------------
    @line_cell_magic
    def nfk(self, line: str = "", cell: str | None = None) -> Any:
        tokens = split_args(line)
        if not tokens:
            print(OVERVIEW)
            return None
        sub, rest = tokens[0], tokens[1:]
        if sub not in SUBCOMMANDS:
            raise UsageError(f"Unknown %nfk subcommand {sub!r}: use one of {', '.join(SUBCOMMANDS)} "
                             f"(%nfk help).")
        if cell is not None and sub != "fit":
            raise UsageError(f"%%nfk only supports fit as a cell magic; use %nfk {sub} on a line.")
        try:
            args = PARSERS[sub].parse_args(rest)
        except HelpShown:
            return None
        result = SUBCOMMANDS[sub].run(self, args, cell)
        if getattr(args, "out", None):
            self.shell.user_ns[args.out] = result
        return result

    # -- helpers for the subcommands --------------------------------------------------------------
    def value(self, expr: str, what: str) -> Any:
        """Evaluate a name or expression in the user namespace, with a one-sentence error."""
        ns = self.shell.user_ns
        if expr.isidentifier() and not keyword.iskeyword(expr):
            if expr in ns:
                return ns[expr]
            raise UsageError(f"{what} {expr!r} is not defined: define it in the notebook first (names "
                             f"are case-sensitive).")
        try:
            return eval(expr, self.shell.user_global_ns, ns)  # the user's own expression, like a cell
        except NameError as exc:
            raise UsageError(f"{what} {expr!r} uses an undefined name: {exc}.") from None
        except Exception as exc:
            raise UsageError(
                f"{what} {expr!r} could not be evaluated: {type(exc).__name__}: {exc}."
            ) from None

    def data(self, expr: str, labels: str | None = None, what: str = "DATA") -> Any:
        """DATA as a tensor, array, (X, y), Dataset or DataLoader; ``labels`` pairs it with y."""
        data = self.value(expr, what)
        if not _is_data(data):
            raise UsageError(f"{what} {expr!r} is a {type(data).__name__}; pass a tensor, an array, an "
                             f"(X, y) tuple, a Dataset or a DataLoader.")
        if labels is not None:
            if isinstance(data, (tuple, list, Dataset, DataLoader)):
                raise UsageError(f"{what} {expr!r} already carries labels; drop --labels or pass X alone.")
            data = (data, self.labels(labels, len(data), "--labels"))
        return data

    def labels(self, expr: str, n: int | None, what: str) -> torch.Tensor:
        """Labels as a tensor, checked against ``n`` rows."""
        y = self.value(expr, what)
        try:
            y = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y))
        except (TypeError, ValueError, RuntimeError):
            raise UsageError(f"{what} {expr!r} is a {type(y).__name__}, not an array of labels.") from None
        if n is not None and len(y) != n:
            raise UsageError(f"{what} {expr!r} has {len(y)} entries but the data have {n} rows.")
        return y

    def estimator(self, expr: str, what: str = "EST") -> LowRankNFK:
        """A fitted ``LowRankNFK``; the error suggests no name that would overwrite a variable."""
        est = self.value(expr, what)
        if not isinstance(est, LowRankNFK):
            raise UsageError(f"{what} {expr!r} is a {type(est).__name__}, not a LowRankNFK: fit one with "
                             f"%nfk fit MODEL DATA -o {self.free_name('est')}.")
        if not est.is_fitted():
            raise UsageError(f"{what} {expr!r} is not fitted yet: run %nfk fit first.")
        return est

    def likelihood(self, model: Any, expr: str, args: Any) -> Likelihood:
        """MODEL (module, (encoder, decoder) or likelihood) and the family options -> a likelihood."""
        if isinstance(model, Likelihood):
            return model
        sampler = None
        if args.sampler is not None:
            sampler = self.value(args.sampler, "--sampler")
            if not callable(sampler):
                raise UsageError(f"--sampler {args.sampler!r} is a {type(sampler).__name__}, not a "
                                 f"callable sampler(n).")
        with core_errors("Building the likelihood"):
            kind = canonical_kind(args.kind or self.kind)
            score = args.score or (self.score if kind == "classifier" else None)
            return make_likelihood(model, kind, score=score, sampler=sampler, sigma=args.sigma)

    @staticmethod
    def check_labels(lik: Likelihood, data: Any) -> None:
        if lik.needs_labels and not isinstance(data, (tuple, list, Dataset, DataLoader)):
            what = "regression targets" if isinstance(lik, Regressor) else "labels"
            raise UsageError(f"{type(lik).__name__} needs {what}: add --labels NAME or pass DATA as (X, y).")

    def free_name(self, base: str) -> str:
        """``base``, or ``base2``, ``base3``, ...: a name no notebook variable has (suggestions must not
        overwrite the user's variables)."""
        ns, name, i = self.shell.user_ns, base, 1
        while name in ns:
            i += 1
            name = f"{base}{i}"
        return name

    @staticmethod
    def n_rows(data: Any) -> int:
        """The number of examples in DATA (a tensor, array, (X, y), Dataset or DataLoader)."""
        if isinstance(data, DataLoader):
            return len(data.dataset)  # type: ignore[arg-type]
        return len(data[0] if isinstance(data, (tuple, list)) else data)

    def pick(self, value: Any, name: str) -> Any:
        """An option's value, else the configured default."""
        return getattr(self, name) if value is None else value
