"""IPython extension: the nfk line and cell magics, and enabling them for every session.

``%nfk`` is the line magic, ``%%nfk`` the cell magic. (``nfk-nb --help`` shows the first line
above through argparse, so it must not contain a percent sign.)

Load it in a session with ``%load_ext nfk_nb`` (``%unload_ext nfk_nb`` removes it). To load it in
every IPython session and Jupyter kernel, either run::

    nfk-nb enable-extension [--profile NAME] [--ipython-dir DIR]     # (--disable undoes it)

which appends a marked block to ``<ipython-dir>/profile_<NAME>/ipython_config.py`` (idempotent), or
add the standard IPython setting to that file yourself::

    c.InteractiveShellApp.extensions.append("nfk_nb")

Defaults come from traitlets config, e.g. ``%config NFKMagics.rank = 32`` in a notebook or
``c.NFKMagics.rank = 32`` in ``ipython_config.py``; ``%config NFKMagics`` lists them.

A session::

    In [1]: %load_ext nfk_nb
    In [2]: %nfk fit net (X_train, y_train) --rank 32 -o est      # fitted LowRankNFK, summary shown
    In [3]: %nfk embed est X_test -o E_test                         # (597, 32) tensor
    In [4]: %nfk probe est y_train --test E_test y_test             # linear-probe accuracy
    In [5]: %nfk spectrum est                                       # singular values, explained variance
    In [6]: %nfk explore est X_test --labels y_test --images 8,8    # neighbours in NFK space
    In [7]: %nfk help fit                                           # every option of a subcommand

MODEL, DATA, EST, EMB and LABELS are names or Python expressions in the notebook's namespace
(``X[:100]``, ``(X, y)``); brackets keep spaces together. As in every IPython magic, ``$name`` and
``{expr}`` are replaced by their values first, so notebook parameters work: ``--rank $rank``.
Every bad input raises ``UsageError`` with one sentence, which also makes papermill stop on a
failing ``%nfk`` cell.
"""

from __future__ import annotations

import argparse
import json
import keyword
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from torch import nn
from torch.utils.data import DataLoader, Dataset
from traitlets import Bool, Enum, Float, Int, Unicode

from .display import ProbeResult, register_formatters, show_figure, unregister_formatters
from .errors import NFKError
from .fisher import DEFAULT_DAMPING
from .likelihoods import VAE, Classifier, EnergyModel, Likelihood, Regressor
from .lowrank import LowRankNFK

KINDS = ("classifier", "gan", "vae", "regression")
FAMILY_TO_KIND = {"classifier": "classifier", "energy": "gan", "vae": "vae", "regression": "regression"}
SUBCOMMANDS = ("fit", "embed", "kernel", "spectrum", "probe", "explore", "save", "load", "help")
MAX_HEATMAP = 2000  # larger kernels are shown by their top-left block


# -- argument parsing: argparse whose errors are UsageErrors ------------------------------------------
class _HelpShown(Exception):
    """``--help`` printed the help; the magic returns quietly."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sub = self.prog.split()[-1]
        raise UsageError(f"{self.prog}: {message} (see %nfk help {sub}).")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if status:
            raise UsageError((message or f"{self.prog}: invalid arguments.").strip())
        raise _HelpShown


def _checked(cast: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that casts and checks, with one message for both failures."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _checked(float, lambda v: v > 0, "a positive number")


def _device(text: str) -> str:
    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device (use cpu, cuda, cuda:1, mps)"
        ) from None
    return text


def _shape(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W such as 8,8, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive H,W, got {text!r}")
    return h, w


def _name(text: str) -> str:
    if not text.isidentifier() or keyword.iskeyword(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid Python variable name")
    return text


def _parser(sub: str, description: str) -> _Parser:
    return _Parser(prog=f"%nfk {sub}", description=description, add_help=True, allow_abbrev=False)


def _out(p: _Parser) -> None:
    p.add_argument("-o", "--out", type=_name, metavar="NAME",
                   help="also store the result in the notebook under this variable name")


def _model_options(p: _Parser) -> None:
    g = p.add_argument_group("model family (when MODEL is a torch module)")
    g.add_argument("--kind", choices=KINDS, default=None,
                   help="how to read MODEL: classifier (default: NFKMagics.kind), gan (MODEL is the "
                        "discriminator; needs --sampler), vae (MODEL is an (encoder, decoder) tuple), "
                        "regression (Gaussian, needs targets); an nfk_nb likelihood is used as is")
    g.add_argument("--score", choices=("joint", "label", "predicted"), default=None,
                   help="classifier score: joint = logsumexp of the logits (default: NFKMagics.score), "
                        "label = log p(y|x) with the given labels, predicted = log p(argmax|x)")
    g.add_argument("--sampler", metavar="NAME",
                   help="callable sampler(n) returning n model samples (gan; optional for classifier)")
    g.add_argument("--sigma", metavar="SIGMA", type=_positive_float, default=1.0,
                   help="noise standard deviation of --kind regression (default 1.0)")


def _fisher_options(p: _Parser) -> None:
    g = p.add_argument_group("Fisher information")
    g.add_argument("--fisher", choices=("diagonal", "identity"), default=None,
                   help="Fisher estimate: diagonal (default: NFKMagics.fisher) or identity (gradient kernel)")
    g.add_argument("--damping", metavar="LAMBDA", type=_positive_float, default=None,
                   help=f"relative damping of the diagonal Fisher (default: NFKMagics.damping = "
                        f"{DEFAULT_DAMPING:g})")
    g.add_argument("--batch-size", metavar="B", type=_positive_int, default=None, help="examples per batch")
    g.add_argument("--device", metavar="D", type=_device, default=None,
                   help="compute device (default: CUDA if present)")
    g.add_argument("--seed", metavar="S", type=int, default=None,
                   help="seed of the random sketch and sampler draws")


def build_parsers() -> dict[str, _Parser]:
    """One argparse parser per ``%nfk`` subcommand (errors raise ``UsageError``)."""
    ps: dict[str, _Parser] = {}

    p = ps["fit"] = _parser("fit", "Fit a low-rank NFK (LowRankNFK) of MODEL on DATA; returns the "
                                   "fitted estimator. As %%nfk fit, the cell body runs first and must "
                                   "define `model` and `data` (or the names given by --model/--data).")
    p.add_argument("MODEL", nargs="?", help="torch module, (encoder, decoder) tuple or nfk_nb likelihood")
    p.add_argument("DATA", nargs="?", help="tensor, (X, y) tuple, Dataset or DataLoader")
    p.add_argument("--model", dest="model_name", metavar="NAME",
                   help="cell mode: the name the cell body gives the model (default: model)")
    p.add_argument("--data", dest="data_name", metavar="NAME",
                   help="cell mode: the name the cell body gives the data (default: data)")
    p.add_argument("--labels", metavar="NAME", help="labels or targets to pair with DATA, as (DATA, LABELS)")
    _model_options(p)
    g = p.add_argument_group("low-rank approximation")
    g.add_argument("--rank", metavar="K", type=_positive_int, default=None,
                   help="embedding dimension k (default: NFKMagics.rank)")
    g.add_argument("--power-iters", metavar="Q", type=_nonnegative_int, default=None,
                   help="power iterations of the randomised SVD (default: NFKMagics.power_iters)")
    g.add_argument("--oversample", metavar="P", type=_nonnegative_int, default=None,
                   help="extra sketch columns (default: NFKMagics.oversample)")
    g.add_argument("--workers", metavar="N", type=_positive_int, default=None,
                   help="fit in N local processes (nfk_nb.launch.fit_workers; default: NFKMagics.workers)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _fisher_options(p)
    _out(p)

    p = ps["embed"] = _parser("embed", "Embed DATA with a fitted estimator: an N×k tensor.")
    p.add_argument("EST", help="fitted LowRankNFK")
    p.add_argument("DATA", help="tensor, (X, y) tuple, Dataset or DataLoader")
    p.add_argument("--labels", metavar="NAME", help="labels to pair with DATA (for score='label')")
    _out(p)

    p = ps["kernel"] = _parser("kernel", "Kernel matrix between DATA and DATA2 (default DATA), shown as "
                                         "a heatmap: E1 E2ᵀ from a fitted estimator, or the exact NFK "
                                         "with --exact or when given a model.")
    p.add_argument("EST_OR_MODEL", help="fitted LowRankNFK, torch module or nfk_nb likelihood")
    p.add_argument("DATA", help="rows of the kernel")
    p.add_argument("DATA2", nargs="?", help="columns of the kernel (default: DATA)")
    p.add_argument("--exact", action="store_true",
                   help="exact NFK (dense Fisher vectors; small models only) instead of the low-rank one")
    p.add_argument("--labels", metavar="NAME", help="sort the heatmap by these labels (square kernels)")
    p.add_argument("--no-plot", action="store_true", help="return the matrix without the heatmap")
    _model_options(p)
    _fisher_options(p)
    _out(p)

    p = ps["spectrum"] = _parser("spectrum", "Singular values and cumulative explained variance of a fitted "
                                             "estimator, one figure.")
    p.add_argument("EST", help="fitted LowRankNFK")
    _out(p)

    p = ps["probe"] = _parser("probe", "Linear-probe accuracy (logistic regression on standardised "
                                       "features): cross-validated on EMB, or trained on EMB and "
                                       "scored on --test EMB2 LABELS2.")
    p.add_argument("EMB", help="N×k embedding, or a fitted LowRankNFK (its fit embedding)")
    p.add_argument("LABELS", help="N labels")
    p.add_argument("--test", nargs=2, metavar=("EMB2", "LABELS2"), help="held-out embedding and labels")
    p.add_argument("--cv", metavar="K", type=_positive_int, default=5,
                   help="cross-validation folds without --test (default 5)")
    _out(p)

    p = ps["explore"] = _parser("explore", "Interactive explorer: the embedding of DATA in 2-D coloured by "
                                           "label; choosing a point shows its nearest neighbours in NFK "
                                           "space (cosine).")
    p.add_argument("EST", help="fitted LowRankNFK, or an N×k embedding of DATA")
    p.add_argument("DATA", help="the inputs (X, or (X, y) whose y become the labels)")
    p.add_argument("--labels", metavar="Y", help="labels colouring the points")
    p.add_argument("--images", type=_shape, metavar="H,W", help="show inputs as H×W images, e.g. 8,8")
    p.add_argument("--neighbours", metavar="K", type=_positive_int, default=None,
                   help="how many neighbours to show (default: NFKMagics.neighbours)")
    p.add_argument("--index", metavar="I", type=_nonnegative_int, default=0, help="the point selected first")
    _out(p)

    p = ps["save"] = _parser("save", "Save a fitted estimator (safetensors, never pickled).")
    p.add_argument("EST", help="fitted LowRankNFK")
    p.add_argument("PATH", help="file to write, e.g. est.nfk")

    p = ps["load"] = _parser("load", "Load a saved estimator for MODEL (the model it was fitted on); the "
                                     "model family is read from the file unless --kind is given.")
    p.add_argument("PATH", help="file written by %%nfk save")
    p.add_argument("MODEL", help="torch module, (encoder, decoder) tuple or nfk_nb likelihood")
    _model_options(p)
    p.add_argument("--device", metavar="D", type=_device, default=None,
                   help="compute device for later transforms")
    _out(p)

    p = ps["help"] = _parser("help", "Show help on %nfk or one subcommand.")
    p.add_argument("SUBCOMMAND", nargs="?", choices=SUBCOMMANDS[:-1])
    return ps


PARSERS = build_parsers()

OVERVIEW = """\
%nfk SUBCOMMAND ARGS...  -- Neural Fisher Kernel magics (nfk_nb).

  %nfk fit MODEL DATA [options] [-o NAME]      fit a low-rank NFK; returns the estimator
  %%nfk fit [options]                          same, the cell body defines `model` and `data`
  %nfk embed EST DATA [-o NAME]                N×k embedding of DATA
  %nfk kernel EST_OR_MODEL DATA [DATA2] [--exact] [-o NAME]   kernel matrix and heatmap
  %nfk spectrum EST                            singular values and explained variance
  %nfk probe EMB LABELS [--test EMB2 LABELS2] [--cv K]        linear-probe accuracy
  %nfk explore EST DATA [--labels Y] [--images H,W]           nearest-neighbour explorer
  %nfk save EST PATH  /  %nfk load PATH MODEL [-o NAME]
  %nfk help [SUBCOMMAND]                       every option of a subcommand

Names and Python expressions are evaluated in the notebook ($name and {expr} are substituted first,
e.g. --rank $rank); defaults come from %config NFKMagics (e.g. %config NFKMagics.rank = 32)."""


def full_help() -> str:
    """The overview followed by the help of every subcommand (shown by ``%nfk?``)."""
    parts = [OVERVIEW]
    for sub in SUBCOMMANDS[:-1]:
        parts.append(PARSERS[sub].format_help())
    return "\n\n".join(parts)


def split_args(line: str) -> list[str]:
    """Split a magic line on spaces outside brackets and quotes; strip quotes around whole tokens."""
    tokens: list[str] = []
    buf: list[str] = []
    depth, quote = 0, ""
    for ch in line:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            buf.append(ch)
        elif ch in "([{":
            depth += 1
            buf.append(ch)
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise UsageError(f"Unbalanced brackets in {line.strip()!r}: a closing bracket has no "
                                 f"opening one.")
            buf.append(ch)
        elif ch.isspace() and depth == 0:
            if buf:
                tokens.append("".join(buf))
                buf = []
        else:
            buf.append(ch)
    if quote or depth:
        raise UsageError(f"Unclosed {'quote' if quote else 'bracket'} in {line.strip()!r}.")
    if buf:
        tokens.append("".join(buf))
    return [t[1:-1] if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'" else t for t in tokens]


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


def _saved_family(path: str) -> dict[str, Any]:
    """The likelihood description stored in a saved estimator's header (without reading tensors)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        return dict(json.loads(header["__metadata__"]["nfk_nb"])["likelihood"])
    except FileNotFoundError:
        raise UsageError(f"No saved NFK estimator at {path!r}.") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{path!r} is not a file written by %nfk save or LowRankNFK.save.") from None


# -- the magics -------------------------------------------------------------------------------------
@magics_class
class NFKMagics(Magics):
    """The ``%nfk`` magics; defaults are configurable with ``%config NFKMagics.<name> = value``."""

    rank = Int(64, min=1, help="Default embedding dimension k of %nfk fit.").tag(config=True)
    fisher = Enum(["diagonal", "identity"], "diagonal", help="Default Fisher estimate.").tag(config=True)
    damping = Float(DEFAULT_DAMPING, min=0.0, help="Default relative damping.").tag(config=True)
    power_iters = Int(2, min=0, help="Default power iterations.").tag(config=True)
    oversample = Int(10, min=0, help="Default oversampling of the sketch.").tag(config=True)
    batch_size = Int(256, min=1, help="Default batch size.").tag(config=True)
    device = Unicode(None, allow_none=True, help="Default device (None: CUDA when present).").tag(
        config=True)
    seed = Int(0, help="Default seed.").tag(config=True)
    kind = Enum(list(KINDS), "classifier", help="Default model family of a torch module.").tag(config=True)
    score = Enum(["joint", "label", "predicted"], "joint", help="Default classifier score.").tag(config=True)
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
        except _HelpShown:
            return None
        result = getattr(self, f"_{sub}")(args, cell) if sub == "fit" else getattr(self, f"_{sub}")(args)
        if getattr(args, "out", None):
            self.shell.user_ns[args.out] = result
        return result

    # -- helpers ----------------------------------------------------------------------------------
    def _value(self, expr: str, what: str) -> Any:
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

    def _data(self, expr: str, labels: str | None = None, what: str = "DATA") -> Any:
        data = self._value(expr, what)
        if not _is_data(data):
            raise UsageError(f"{what} {expr!r} is a {type(data).__name__}; pass a tensor, an array, an "
                             f"(X, y) tuple, a Dataset or a DataLoader.")
        if labels is not None:
            if isinstance(data, (tuple, list, Dataset, DataLoader)):
                raise UsageError(f"{what} {expr!r} already carries labels; drop --labels or pass X alone.")
            data = (data, self._labels(labels, len(data), "--labels"))
        return data

    def _labels(self, expr: str, n: int | None, what: str) -> torch.Tensor:
        y = self._value(expr, what)
        try:
            y = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y))
        except (TypeError, ValueError, RuntimeError):
            raise UsageError(f"{what} {expr!r} is a {type(y).__name__}, not an array of labels.") from None
        if n is not None and len(y) != n:
            raise UsageError(f"{what} {expr!r} has {len(y)} entries but the data have {n} rows.")
        return y

    def _estimator(self, expr: str, what: str = "EST") -> LowRankNFK:
        est = self._value(expr, what)
        if not isinstance(est, LowRankNFK):
            raise UsageError(f"{what} {expr!r} is a {type(est).__name__}, not a LowRankNFK: fit one with "
                             f"%nfk fit MODEL DATA -o {expr if expr.isidentifier() else 'est'}.")
        if not hasattr(est, "components_"):
            raise UsageError(f"{what} {expr!r} is not fitted yet: run %nfk fit first.")
        return est

    def _likelihood(self, model: Any, expr: str, args: argparse.Namespace) -> Likelihood:
        """MODEL (module, (encoder, decoder) or likelihood) and the family options -> a likelihood."""
        if isinstance(model, Likelihood):
            return model
        kind = args.kind or self.kind
        if args.score is not None and kind != "classifier":
            raise UsageError(f"--score applies to classifiers only, not --kind {kind}.")
        sampler = None
        if args.sampler is not None:
            sampler = self._value(args.sampler, "--sampler")
            if not callable(sampler):
                raise UsageError(f"--sampler {args.sampler!r} is a {type(sampler).__name__}, not a "
                                 f"callable sampler(n).")
        with core_errors("Building the likelihood"):
            if kind == "vae":
                if isinstance(model, (tuple, list)) and len(model) == 2:
                    enc, dec = model
                elif hasattr(model, "encoder") and hasattr(model, "decoder"):
                    enc, dec = model.encoder, model.decoder
                else:
                    raise UsageError(f"--kind vae needs MODEL to be an (encoder, decoder) tuple; "
                                     f"{expr!r} is a {type(model).__name__}.")
                if not (isinstance(enc, nn.Module) and isinstance(dec, nn.Module)):
                    raise UsageError(f"MODEL {expr!r} must hold two torch modules (encoder, decoder).")
                return VAE(enc, dec)
            if not isinstance(model, nn.Module):
                raise UsageError(f"MODEL {expr!r} is a {type(model).__name__}, not a torch.nn.Module or an "
                                 f"nfk_nb likelihood.")
            if kind == "classifier":
                return Classifier(model, score=args.score or self.score, sampler=sampler)
            if kind == "gan":
                if sampler is None:
                    raise UsageError("--kind gan needs --sampler NAME: a function sampler(n) returning n "
                                     "generator samples.")
                return EnergyModel(model, sampler)
            return Regressor(model, sigma=args.sigma)

    def _model(self, expr: str, args: argparse.Namespace) -> Likelihood:
        return self._likelihood(self._value(expr, "MODEL"), expr, args)

    @staticmethod
    def _check_labels(lik: Likelihood, data: Any) -> None:
        if lik.needs_labels and not isinstance(data, (tuple, list, Dataset, DataLoader)):
            what = "regression targets" if isinstance(lik, Regressor) else "labels"
            raise UsageError(f"{type(lik).__name__} needs {what}: add --labels NAME or pass DATA as (X, y).")

    def _pick(self, value: Any, name: str) -> Any:
        return getattr(self, name) if value is None else value

    # -- subcommands ------------------------------------------------------------------------------
    def _fit(self, args: argparse.Namespace, cell: str | None) -> LowRankNFK:
        if cell is not None:
            self.shell.ex(cell)  # the user's cell body, in the user namespace
            model_expr = args.MODEL or args.model_name or "model"
            data_expr = args.DATA or args.data_name or "data"
        else:
            if args.model_name or args.data_name:
                raise UsageError("--model/--data name what a %%nfk fit cell defines; on a line write "
                                 "%nfk fit MODEL DATA.")
            if args.MODEL is None or args.DATA is None:
                raise UsageError("%nfk fit needs MODEL and DATA: %nfk fit MODEL DATA [options].")
            model_expr, data_expr = args.MODEL, args.DATA
        lik = self._model(model_expr, args)
        data = self._data(data_expr, args.labels)
        self._check_labels(lik, data)
        workers = self._pick(args.workers, "workers")
        with core_errors("Fitting the NFK"):
            est = LowRankNFK(
                lik, rank=self._pick(args.rank, "rank"), fisher=self._pick(args.fisher, "fisher"),
                damping=self._pick(args.damping, "damping"),
                power_iters=self._pick(args.power_iters, "power_iters"),
                oversample=self._pick(args.oversample, "oversample"),
                batch_size=self._pick(args.batch_size, "batch_size"),
                device=self._pick(args.device, "device"), seed=self._pick(args.seed, "seed"),
                progress=self.progress and not args.quiet,
            )
            if workers > 1:
                _fit_workers()(est, data, workers=workers)
            else:
                est.fit(data)
        return est

    def _embed(self, args: argparse.Namespace) -> torch.Tensor:
        est = self._estimator(args.EST)
        data = self._data(args.DATA, args.labels)
        self._check_labels(est.lik, data)
        with core_errors("Embedding"):
            return est.transform(data)

    def _kernel(self, args: argparse.Namespace) -> torch.Tensor:
        obj = self._value(args.EST_OR_MODEL, "EST_OR_MODEL")
        X = self._data(args.DATA)
        Z = None if args.DATA2 is None else self._data(args.DATA2, what="DATA2")
        if isinstance(obj, LowRankNFK):
            est = self._estimator(args.EST_OR_MODEL, "EST_OR_MODEL")
            if args.exact:
                with core_errors("The exact kernel"):
                    K = _exact_kernel(est.lik, X, Z, fisher=args.fisher or est.fisher,
                                      damping=args.damping or est.damping,
                                      batch_size=args.batch_size or est.batch_size,
                                      device=args.device or est.device, seed=est.seed)
            else:
                with core_errors("The low-rank kernel"):
                    E1 = est.transform(X)
                    E2 = E1 if Z is None else est.transform(Z)
                    K = E1 @ E2.T
        else:
            lik = self._likelihood(obj, args.EST_OR_MODEL, args)
            with core_errors("The exact kernel"):
                K = _exact_kernel(lik, X, Z, fisher=self._pick(args.fisher, "fisher"),
                                  damping=self._pick(args.damping, "damping"),
                                  batch_size=self._pick(args.batch_size, "batch_size"),
                                  device=self._pick(args.device, "device"),
                                  seed=self._pick(args.seed, "seed"))
        if not args.no_plot:
            from .plots import plot_kernel

            labels = None
            if args.labels is not None:
                if Z is not None:
                    raise UsageError("--labels sorts a square kernel; drop DATA2 or --labels.")
                labels = self._labels(args.labels, K.shape[0], "--labels")
            block = K[:MAX_HEATMAP, :MAX_HEATMAP]
            with core_errors("Plotting the kernel"):
                fig = plot_kernel(block, None if labels is None else labels[:MAX_HEATMAP])
            show_figure(fig, f"kernel heatmap {K.shape[0]}×{K.shape[1]}")
        return K

    def _spectrum(self, args: argparse.Namespace) -> Any:
        from .plots import plot_spectrum

        est = self._estimator(args.EST)
        return plot_spectrum(est)

    def _probe(self, args: argparse.Namespace) -> ProbeResult:
        def embedding(expr: str, what: str) -> Any:
            E = self._value(expr, what)
            if isinstance(E, LowRankNFK):
                E = self._estimator(expr, what).embedding_
            if not isinstance(E, (torch.Tensor, np.ndarray)):
                raise UsageError(f"{what} {expr!r} is a {type(E).__name__}, not an embedding (N×k tensor) or "
                                 f"a fitted LowRankNFK.")
            if E.ndim != 2:
                raise UsageError(f"{what} {expr!r} must be 2-D (examples × features), got shape "
                                 f"{tuple(E.shape)}.")
            return E

        if not args.test and args.cv < 2:
            raise UsageError(f"--cv needs at least 2 folds, got {args.cv}; or use --test EMB2 LABELS2.")
        E = embedding(args.EMB, "EMB")
        y = self._labels(args.LABELS, len(E), "LABELS")
        from .evaluate import linear_probe

        with core_errors("The linear probe"):
            if args.test:
                Et = embedding(args.test[0], "EMB2")
                if Et.shape[1] != E.shape[1]:
                    raise UsageError(f"EMB2 has {Et.shape[1]} features but EMB has {E.shape[1]}.")
                yt = self._labels(args.test[1], len(Et), "LABELS2")
                acc = linear_probe(E, y, Et, yt)
                return ProbeResult(acc, "test", len(E), len(Et), E.shape[1], 0)
            if args.cv > 1 and int(np.bincount(np.unique(y.numpy(), return_inverse=True)[1]).min()) < args.cv:
                raise UsageError(f"Some class has fewer than --cv {args.cv} examples; lower --cv or use "
                                 f"--test EMB2 LABELS2.")
            acc = linear_probe(E, y, cv=args.cv)
            return ProbeResult(acc, "cv", len(E), 0, E.shape[1], args.cv)

    def _explore(self, args: argparse.Namespace) -> Any:
        from .widgets import EmbeddingExplorer

        obj = self._value(args.EST, "EST")
        data = self._data(args.DATA)
        X = data[0] if isinstance(data, (tuple, list)) else data
        if isinstance(data, (Dataset, DataLoader)) and args.images:
            raise UsageError("--images needs DATA as a tensor (or (X, y)), not a Dataset or DataLoader.")
        if isinstance(obj, LowRankNFK):
            est = self._estimator(args.EST)
            self._check_labels(est.lik, data)
            with core_errors("Embedding"):
                E = est.transform(data)
        elif isinstance(obj, (torch.Tensor, np.ndarray)) and obj.ndim == 2:
            E = obj
        else:
            raise UsageError(f"EST {args.EST!r} is a {type(obj).__name__}, not a fitted LowRankNFK or an N×k "
                             f"embedding.")
        labels = None
        if args.labels is not None:
            labels = self._labels(args.labels, len(E), "--labels")
        elif isinstance(data, (tuple, list)) and len(data) > 1:
            labels = data[1]
        n = len(E)
        if args.index >= n:
            raise UsageError(f"--index {args.index} is out of range for {n} points.")
        images = X if args.images else None
        with core_errors("The explorer"):
            return EmbeddingExplorer(E, labels, images, args.images,
                                     n_neighbours=self._pick(args.neighbours, "neighbours"), index=args.index)

    def _save(self, args: argparse.Namespace) -> None:
        est = self._estimator(args.EST)
        path = Path(args.PATH).expanduser()
        with core_errors("Saving"):
            try:
                est.save(path)
            except OSError as exc:
                raise UsageError(f"Cannot write {str(path)!r}: {exc.strerror or exc}.") from None
        print(f"Saved {fit_line(est)} to {path}")

    def _load(self, args: argparse.Namespace) -> LowRankNFK:
        path = str(Path(args.PATH).expanduser())
        saved = _saved_family(path)
        model = self._value(args.MODEL, "MODEL")
        if args.kind is None and not isinstance(model, Likelihood):
            args.kind = FAMILY_TO_KIND.get(saved.get("family", ""), None)
            if args.kind is None:
                raise UsageError(f"{path!r} was fitted on a custom likelihood: pass that nfk_nb likelihood "
                                 f"as MODEL.")
            if args.kind == "classifier" and args.score is None:
                args.score = saved.get("score")
            if args.kind == "regression" and "sigma" in saved:
                args.sigma = float(saved["sigma"])
        lik = self._likelihood(model, args.MODEL, args)
        with core_errors("Loading"):
            return LowRankNFK.load(path, lik, device=args.device)

    def _help(self, args: argparse.Namespace) -> None:
        print(OVERVIEW if args.SUBCOMMAND is None else PARSERS[args.SUBCOMMAND].format_help())


NFKMagics.nfk.__doc__ = full_help()


def fit_line(est: LowRankNFK) -> str:
    from .display import fit_summary_text

    return fit_summary_text(est)


def _fit_workers() -> Callable[..., Any]:
    """``nfk_nb.launch.fit_workers``, or a UsageError when multi-process fitting is not available."""
    try:
        from . import launch
    except ModuleNotFoundError as exc:
        if exc.name not in ("nfk_nb.launch", "launch"):
            raise
        launch = None  # type: ignore[assignment]
    fn = getattr(launch, "fit_workers", None)
    if fn is None:
        raise UsageError("Multi-process fitting is unavailable in this installation (nfk_nb.launch."
                         "fit_workers is missing); drop --workers.")
    return fn


def _exact_kernel(lik: Likelihood, X: Any, Z: Any, **kwargs: Any) -> torch.Tensor:
    from .exact import fisher_kernel

    return fisher_kernel(lik, X, Z, **kwargs)


# -- extension hooks ---------------------------------------------------------------------------------
def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nfk_nb``: register ``%nfk`` / ``%%nfk`` and the rich displays."""
    unload_ipython_extension(ipython)  # loading twice must not register two configurables
    ipython.register_magics(NFKMagics(shell=ipython))
    register_formatters(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nfk_nb``: remove the magics, their configurable and the displays."""
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        fn = manager.magics[kind].get("nfk")
        if fn is not None and isinstance(getattr(fn, "__self__", None), NFKMagics):
            manager.magics[kind].pop("nfk")
    manager.registry.pop("NFKMagics", None)
    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, NFKMagics)]
    unregister_formatters(ipython)


# -- `nfk-nb enable-extension` -------------------------------------------------------------------------
BEGIN = "# >>> nfk_nb: load %nfk in every IPython session and Jupyter kernel (nfk-nb enable-extension) >>>"
END = "# <<< nfk_nb <<<"
BLOCK = f"""{BEGIN}
c = get_config()  # noqa: F821 - provided by IPython's config loader
c.InteractiveShellApp.extensions.append("nfk_nb")
{END}
"""


def add_enable_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nfk-nb enable-extension``."""
    parser.description = ("Load the %nfk magics in every IPython session and Jupyter kernel by adding "
                          "nfk_nb to c.InteractiveShellApp.extensions in the profile's ipython_config.py.")
    parser.add_argument("--profile", default="default", help="IPython profile name (default: default)")
    parser.add_argument("--ipython-dir", default=None,
                        help="IPython directory (default: $IPYTHONDIR or ~/.ipython)")
    parser.add_argument("--disable", action="store_true", help="remove the block instead of adding it")


def config_path(profile: str = "default", ipython_dir: str | None = None) -> Path:
    """``<ipython_dir>/profile_<profile>/ipython_config.py``."""
    if ipython_dir is None:
        from IPython.paths import get_ipython_dir

        ipython_dir = get_ipython_dir()
    return Path(ipython_dir).expanduser() / f"profile_{profile}" / "ipython_config.py"


def enable_command(args: argparse.Namespace) -> int:
    """Add (or with ``--disable`` remove) the nfk_nb block of the profile's config; idempotent."""
    path = config_path(args.profile, args.ipython_dir)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    present = BEGIN in text
    if args.disable:
        if present:
            head, _, tail = text.partition(BEGIN)
            _, _, tail = tail.partition(END)
            path.write_text(head.rstrip("\n") + ("\n" if head.strip() else "") + tail.lstrip("\n"),
                            encoding="utf-8")
            print(f"Removed nfk_nb from {path}")
        else:
            print(f"nfk_nb was not enabled in {path}; nothing to do")
        return 0
    if present:
        print(f"nfk_nb is already enabled in {path}")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    path.write_text(text + sep + BLOCK, encoding="utf-8")
    print(f"Enabled nfk_nb in {path}: %nfk is available in new IPython sessions and kernels")
    return 0

