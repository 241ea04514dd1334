"""The parser shared by every ``%nfk`` subcommand: argparse whose errors are ``UsageError``s.

Also the checked option types, the option groups several subcommands share (their defaults and
choices come from :mod:`nfk_nb.options`) and :func:`split_args`, which splits a magic line.
"""

from __future__ import annotations

import argparse
import builtins
import keyword
import warnings
from collections.abc import Callable
from typing import Any

import torch
from IPython.core.error import UsageError

from ..options import DEFAULTS, FISHER_KINDS, HELP, KIND_ALIASES, MODEL_KINDS, SCORES


class HelpShown(Exception):
    """``--help`` printed the help; the magic returns quietly."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` for ``%nfk SUB`` that raises ``UsageError`` instead of exiting."""

    def __init__(self, sub: str, description: str) -> None:
        super().__init__(prog=f"%nfk {sub}", description=description, add_help=True, allow_abbrev=False)

    def error(self, message: str) -> None:  # type: ignore[override]
        sub = self.prog.split()[-1]
        raise UsageError(f"{self.prog}: {message} (see %nfk help {sub}).")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if status:
            raise UsageError((message or f"{self.prog}: invalid arguments.").strip())
        raise HelpShown


def checked(cast: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
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


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = checked(float, lambda v: v > 0, "a positive number")
nonnegative_float = checked(float, lambda v: v >= 0, "a number >= 0")


def device(text: str) -> str:
    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device (use cpu, cuda, cuda:1, mps)"
        ) from None
    return text


def shape(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W such as 8,8, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive H,W, got {text!r}")
    return h, w


def variable_name(text: str) -> str:
    """A name ``-o`` may store under: an identifier, not a keyword or a dunder; a builtin warns."""
    if not text.isidentifier() or keyword.iskeyword(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid Python variable name")
    if text.startswith("__") and text.endswith("__"):
        raise argparse.ArgumentTypeError(f"{text!r} is a special (dunder) name; choose a plain variable name")
    if hasattr(builtins, text):
        warnings.warn(f"-o {text} shadows the Python builtin {text!r} in the notebook.", UserWarning,
                      stacklevel=2)
    return text


def add_out(p: Parser) -> None:
    p.add_argument("-o", "--out", type=variable_name, metavar="NAME",
                   help="also store the result in the notebook under this variable name")


def add_model_options(p: Parser) -> None:
    g = p.add_argument_group("model family (when MODEL is a torch module)")
    g.add_argument("--kind", choices=MODEL_KINDS + tuple(KIND_ALIASES), default=None,
                   help="how to read MODEL: classifier (default: NFKMagics.kind), energy or gan (MODEL is "
                        "the discriminator; needs --sampler), vae (MODEL is an (encoder, decoder) tuple), "
                        "regression (Gaussian, needs targets); an nfk_nb likelihood is used as is")
    g.add_argument("--score", choices=SCORES, default=None,
                   help=f"{HELP['score']} (default: NFKMagics.score)")
    g.add_argument("--sampler", metavar="NAME",
                   help="callable sampler(n) returning n model samples (gan; optional for classifier)")
    g.add_argument("--sigma", metavar="SIGMA", type=positive_float, default=1.0,
                   help="noise standard deviation of --kind regression (default 1.0)")


def add_fisher_options(p: Parser) -> None:
    g = p.add_argument_group("Fisher information")
    g.add_argument("--fisher", choices=FISHER_KINDS, default=None,
                   help=f"{HELP['fisher']} (default: NFKMagics.fisher)")
    g.add_argument("--damping", metavar="LAMBDA", type=nonnegative_float, default=None,
                   help=f"{HELP['damping']} (default: NFKMagics.damping = {DEFAULTS['damping']:g})")
    g.add_argument("--batch-size", metavar="B", type=positive_int, default=None, help=HELP["batch_size"])
    g.add_argument("--device", metavar="D", type=device, default=None, help=HELP["device"])
    g.add_argument("--seed", metavar="S", type=int, default=None, help=HELP["seed"])


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
