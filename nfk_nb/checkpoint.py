"""Checkpoints that let a long :class:`~nfk_nb.LowRankNFK` fit survive a crash (even SIGKILL).

``est.fit(X, checkpoint=path)`` saves the fit's state after each pass over the data: the Fisher
estimate (partition term ``m`` and diagonal), the trace of ``K``, the number of finished sketch passes
and the current sketch matrix (``Y = V Ωᵀ`` or ``Z``). The random test matrix ``Ω`` is not stored: it
is regenerated from the seed. The file is safetensors + JSON (never pickle), written atomically by
:mod:`nfk_nb.serialization`, so a kill leaves the previous state intact. Rerunning the same call
resumes after the last finished pass; on the CPU the result is bitwise the same as an uninterrupted fit.

A checkpoint carries an *identity*: the estimator's settings, the likelihood, its ``log_prob``'s name
and code, the names and shapes of θ, a checksum of the model's weights and buffers, of the sampler's
reference draws, the data size and a checksum of the first batch. All of the data are identified too:
the first full pass of a fit digests every batch it reads (no extra pass), the digest is saved with the
state, and a resumed fit whose own first pass gives another digest is refused before it returns. A
checkpoint whose identity differs from the current fit's is refused, naming what differs, never
silently reused. The file is deleted when the fit succeeds. Each write stores O(P + N·l) numbers
(the Fisher diagonal and mean, and ``Y`` (N×l) or ``Z`` (l×P)); resuming on another device gives the
same result up to rounding.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from .data_digest import PassDigest
from .distributed import Reducer, same_on_all_ranks
from .errors import NFKError
from .meta_checks import check_fields, integer, number, optional, text
from .serialization import jsonable, load_state, remove_stale_temporaries, save_state, tensors_checksum

FORMAT = "nfk_nb.checkpoint"

# Readable names for the identity keys in refusal messages.
_NAMES = {
    "log_prob": "log_prob function",
    "log_prob_code": "log_prob function (its code)",
    "reference": "reference draws of the sampler",
    "model": "model (parameter names or shapes)",
    "weights": "model weights",
    "n_samples": "data size",
    "n_local": "data size on this process",
    "data": "data (first batch)",
    "world": "process group (rank, world size)",
    "compute_dtype": "compute dtype",
}


def tensors_digest(tensors: dict[str, Tensor] | list[Tensor]) -> str:
    """SHA-256 of tensor values (names, dtypes, shapes, bytes), independent of their device."""
    named = tensors if isinstance(tensors, dict) else {f"{i:06d}": t for i, t in enumerate(tensors)}
    return tensors_checksum(named)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _describe_difference(saved: dict[str, Any], now: dict[str, Any]) -> str:
    a, b = _flatten(saved), _flatten(now)
    differs = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    tops = {k.split(".")[0] for k in differs}
    # other shapes imply other weights, another data size other data: name only the first
    implied = {"weights"} if "model" in tops else set()
    implied |= {"data"} if "n_samples" in tops else set()
    order = list(_NAMES)
    diffs = []
    for key in sorted(differs, key=lambda k: (order.index(k) if k in order else len(order), k)):
        top = key.split(".")[0]
        if top not in implied:
            name = _NAMES.get(top) or key.removeprefix("params.").removeprefix("likelihood.")
            if top in ("model", "weights", "data"):
                diffs.append(f"different {name}")
            else:
                diffs.append(f"{name}: {a.get(key)!r} in the checkpoint, {b.get(key)!r} now")
    unique = list(dict.fromkeys(diffs))
    return "; ".join(unique[:3]) + ("; ..." if len(unique) > 3 else "")


@dataclass
class FitState:
    """What a checkpoint holds: the Fisher stage (``m``, diagonal, ``trace K``) and the sketch's progress."""

    fisher_mean: Tensor | None = None
    fisher_diag: Tensor | None = None
    n_reference: int = 0
    trace: float | None = None
    sketch_passes: int = 0
    sketch: Tensor | None = None
    data_digest: str | None = None  # of all the data, once a first full pass has read them

    @property
    def has_fisher(self) -> bool:
        return self.fisher_mean is not None

    @property
    def stage(self) -> int:
        """How far the fit got: 1 after the Fisher pass, +1 with the trace, +1 per sketch pass."""
        return 1 + (self.trace is not None) + self.sketch_passes


# the types and ranges of a checkpoint's state (a hostile file is refused, see meta_checks.py)
STATE_FIELDS = {"n_reference": integer(0), "trace": optional(number(0.0)), "sketch_passes": integer(0),
                "data_digest": optional(text())}


def fit_identity(params: dict[str, Any], lik: Any, op: Any, source: Any, n_total: int,
                 reducer: Reducer) -> dict[str, Any]:
    """Everything that changes a fit's numbers (see the module docstring), as JSON would return it.

    ``params`` are the estimator's settings; those that do not change the saved state (the
    likelihood object, progress, device, whiten) are left out.
    """
    skip = ("lik", "progress", "device", "whiten")
    user_fn = lik.log_prob_function or type(lik)
    identity: dict[str, Any] = {
        "params": {k: jsonable(v) for k, v in params.items() if k not in skip},
        "likelihood": lik.describe(),
        "log_prob": f"{getattr(user_fn, '__module__', '?')}.{getattr(user_fn, '__qualname__', '?')}",
        "log_prob_code": code_digest(user_fn),
        "model": op.space.fingerprint(),
        "weights": tensors_digest({**op.theta, **op.frozen}),
        "compute_dtype": str(op.dtype),
        "n_samples": n_total,
        "data": tensors_digest(list(source.first())),
    }
    if lik.reference == "sampler":  # the draws (seeded) stand for the sampler and its generator's weights
        identity["reference"] = tensors_digest([lik.draw_reference(params["seed"])])
    if reducer.world_size > 1:
        identity["n_local"] = source.n
        identity["world"] = [int(reducer.rank), reducer.world_size]
    return json.loads(json.dumps(identity))  # tuples -> lists, as they come back from JSON


def code_digest(fn: Any) -> str:
    """SHA-256 of a function's code (bytecode, constants, names; nested code too), or of a class's
    ``log_prob`` and ``prepare``: two functions with one name but other code differ."""
    h = hashlib.sha256()

    def feed(code: Any) -> None:
        h.update(code.co_code)
        h.update(repr(code.co_names).encode())
        for const in code.co_consts:
            feed(const) if hasattr(const, "co_code") else h.update(repr(const).encode())

    parts = [getattr(fn, "log_prob", None), getattr(fn, "prepare", None)] if isinstance(fn, type) else [fn]
    for part in parts:
        code = getattr(getattr(part, "__func__", part), "__code__", None)
        if code is not None:
            feed(code)
    return h.hexdigest()


class FitCheckpoint:
    """One fit's checkpoint file.

    Parameters
    ----------
    path : path-like
        Where the state is kept. With several processes, each writes ``path.rank{r}``.
    identity : dict
        JSON-serialisable description of the fit (see the module docstring); must match on resume.
    rank, world_size : int
        This process's rank and the number of processes.
    """

    def __init__(self, path: str | os.PathLike, identity: dict[str, Any], rank: int = 0,
                 world_size: int = 1) -> None:
        path = Path(path)
        self.identity = identity
        self.path = path if world_size == 1 else path.with_name(f"{path.name}.rank{rank}")
        self.digest: PassDigest | None = None

    def watch_data(self, source: Any, state: FitState | None) -> None:
        """Digest all the data on the fit's first full pass over ``source``; when resuming, refuse
        data whose digest differs from the one saved with ``state`` (see ``data_digest.py``)."""
        self.digest = PassDigest(None if state is None else state.data_digest, repr(str(self.path)))
        source.digest_next_pass(self.digest.done)

    def load(self) -> FitState | None:
        """The saved state, or ``None`` when there is no checkpoint yet.

        Raises
        ------
        NFKError
            The file is damaged, or belongs to another fit (another model, data size or setting).
        """
        if not self.path.exists():
            return None
        tensors, meta = load_state(self.path, FORMAT, "fit checkpoint")
        saved = meta.get("identity")
        if saved != self.identity:
            raise NFKError(
                f"The checkpoint {str(self.path)!r} belongs to another fit "
                f"({_describe_difference(saved if isinstance(saved, dict) else {}, self.identity)}); "
                f"delete it or pass another checkpoint path."
            )
        info = meta.get("state")
        if not isinstance(info, dict):
            raise NFKError(f"The checkpoint {str(self.path)!r} has no fit state: it was altered.")
        # fresh (aligned) copies: tensors read in place from the file sit at an offset set by the header
        # length, and a misaligned vector changes SIMD summation order, so a resumed fit would differ
        # from an uninterrupted one in the last bits
        tensors = {k: v.clone() for k, v in tensors.items()}
        check_fields(info, STATE_FIELDS, f"The checkpoint {str(self.path)!r}", "state.")
        return FitState(tensors.get("fisher_mean"), tensors.get("fisher_diag"), info["n_reference"],
                        info["trace"], info["sketch_passes"], tensors.get("sketch"), info.get("data_digest"))

    def resume(self, reducer: Reducer) -> FitState | None:
        """:meth:`load`, agreed across processes: ranks a kill stopped one stage apart start over together
        (resuming apart would pair the wrong collectives)."""
        state = self.load()
        if reducer.world_size > 1 and not same_on_all_ranks(reducer, -1 if state is None else state.stage):
            return None
        return state

    def save_fisher(self, fisher: Any, trace: float | None) -> None:
        """Save the Fisher stage: ``m``, the diagonal and (when known) ``trace K``."""
        self.save({"fisher_mean": fisher.mean, "fisher_diag": fisher.diag},
                  {"n_reference": fisher.n_reference, "trace": trace, "sketch_passes": 0})

    def save_sketch(self, fisher: Any, trace: float | None, passes: int, sketch: Tensor) -> None:
        """Save the state after ``passes`` finished sketch passes, whose latest matrix is ``sketch``."""
        self.save({"fisher_mean": fisher.mean, "fisher_diag": fisher.diag, "sketch": sketch},
                  {"n_reference": fisher.n_reference, "trace": trace, "sketch_passes": passes})

    def save(self, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
        """Atomically replace the checkpoint with this state."""
        from . import __version__

        if self.digest is not None:  # the digest the saved state depends on (this run's or the resumed one's)
            info = {**info, "data_digest": self.digest.value or self.digest.expected}
        meta = {"package_version": __version__, "identity": self.identity, "state": info}
        save_state(self.path, tensors, meta, fmt=FORMAT)

    def remove(self) -> None:
        """Delete the checkpoint (after a successful fit) and any temporary file a kill left."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        remove_stale_temporaries(self.path)
