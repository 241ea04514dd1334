"""Type and range checks of the JSON metadata read back from a saved estimator or a checkpoint.

The metadata carry a checksum, but a checksum is no signature: whoever edits a field can recompute
it. So every field that steers a computation is checked for its type and range on load, and a file
that fails is refused with one :class:`~nfk_nb.errors.NFKError` sentence naming the field, never
accepted (``whiten: "no"`` is truthy) nor crashing later (``n_reference: "abc"``). JSON nesting is
bounded too: deeply nested input would otherwise end in a ``RecursionError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import NFKError

MAX_DEPTH = 32  # far deeper than any metadata nfk_nb writes (at most ~5 levels)

Check = Callable[[Any], bool]


def json_depth(obj: Any) -> int:
    """Nesting depth of lists and dicts, computed without recursion."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            depth = max(depth, d)
            if d > MAX_DEPTH:  # no need to walk further
                return d
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return depth


def check_depth(obj: Any, where: str) -> None:
    """Refuse metadata nested deeper than :data:`MAX_DEPTH`."""
    if json_depth(obj) > MAX_DEPTH:
        raise NFKError(f"{where} has metadata nested deeper than {MAX_DEPTH} levels: it was altered.")


def integer(lo: int | None = None, hi: int | None = None) -> tuple[Check, str]:
    """An int (never a bool) within ``[lo, hi]``."""
    def ok(v: Any) -> bool:
        return type(v) is int and (lo is None or v >= lo) and (hi is None or v <= hi)
    bounds = f" >= {lo}" if hi is None and lo is not None else (f" in [{lo}, {hi}]" if lo is not None else "")
    return ok, f"an integer{bounds}"


def number(lo: float | None = None, hi: float | None = None, positive: bool = False) -> tuple[Check, str]:
    """A finite int or float (never a bool) within ``[lo, hi]`` (``> 0`` when ``positive``)."""
    def ok(v: Any) -> bool:
        return (type(v) in (int, float) and math.isfinite(v) and (lo is None or v >= lo)
                and (hi is None or v <= hi) and (not positive or v > 0))
    what = "a positive finite number" if positive else "a finite number"
    if lo is not None:
        what += f" >= {lo:g}" if hi is None else f" in [{lo:g}, {hi:g}]"
    return ok, what


def boolean() -> tuple[Check, str]:
    return (lambda v: type(v) is bool), "true or false"


def text(choices: tuple[str, ...] | None = None) -> tuple[Check, str]:
    if choices is None:
        return (lambda v: type(v) is str), "a string"
    return (lambda v: type(v) is str and v in choices), f"one of {', '.join(map(repr, choices))}"


def optional(check: tuple[Check, str]) -> tuple[Check, str]:
    ok, what = check
    return (lambda v: v is None or ok(v)), f"null or {what}"


def check_fields(meta: Any, schema: dict[str, Any], where: str, prefix: str = "") -> None:
    """Check ``meta`` against ``schema`` (field -> check, or a nested schema dict).

    Every field of the schema must be present (optional ones may be missing) with a value that passes
    its check; other fields are ignored (a newer minor version may add some).

    Raises
    ------
    NFKError
        Naming the first field that is missing or out of range.
    """
    if not isinstance(meta, dict):
        raise NFKError(f"{where}: the saved field {prefix.rstrip('.') or 'metadata'} is not an object: "
                       f"the file was altered.")
    for name, rule in schema.items():
        key = f"{prefix}{name}"
        if name not in meta:
            if not isinstance(rule, dict) and rule[0](None):
                continue  # an optional field that older versions did not write
            raise NFKError(f"{where} lacks the saved field {key!r}: the file was altered.")
        value = meta[name]
        if isinstance(rule, dict):
            check_fields(value, rule, where, f"{key}.")
            continue
        ok, what = rule
        if not ok(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise NFKError(f"{where}: the saved field {key!r} is {shown}, not {what}: the file was altered.")


def fingerprint() -> tuple[Check, str]:
    """θ's names and shapes: ``[[name, [d1, d2, ...]], ...]``."""
    def ok(v: Any) -> bool:
        return type(v) is list and all(
            type(e) is list and len(e) == 2 and type(e[0]) is str and type(e[1]) is list
            and all(type(d) is int and d >= 0 for d in e[1]) for e in v)
    return ok, "a list of [parameter name, shape]"


def estimator_fields() -> dict[str, Any]:
    """The schema of a saved :class:`~nfk_nb.LowRankNFK` (``LowRankNFK.save``)."""
    from .guards import SEED_LIMIT
    from .options import FISHER_KINDS, MAX_DAMPING, SKETCHES

    kinds, damping = text(FISHER_KINDS), number(0.0, MAX_DAMPING)
    seed = integer(1 - SEED_LIMIT, SEED_LIMIT - 1)
    return {
        "params": {
            "rank": integer(1), "fisher": kinds, "damping": damping, "power_iters": integer(0),
            "oversample": integer(0), "batch_size": integer(1), "seed": seed,
            "whiten": boolean(), "chunk_size": optional(integer(1)), "sketch": optional(text(SKETCHES)),
            "dtype": optional(text()), "device": optional(text()),
        },
        "likelihood": {"family": text()},
        "fingerprint": fingerprint(),
        "weights": optional(text()),
        "fisher": {"kind": kinds, "damping": damping, "n_reference": integer(1)},
        "fitted": {"n_samples_fit": integer(1), "n_params": integer(1), "trace": number(0.0),
                   "fit_time": number(0.0), "device": text(), "weights_digest": optional(text()),
                   "compute_dtype": optional(text(("float16", "bfloat16", "float32", "float64")))},
    }
