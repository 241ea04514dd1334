"""Saving and loading fitted estimators: tensors in safetensors, metadata as JSON in its header.

Never unpickles. The file carries a format version, the package version, the estimator's settings,
a fingerprint of θ (names and shapes) and a SHA-256 of the tensors; it is written to a temporary file
and renamed, so a crash never leaves half a file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from .errors import NFKError

FORMAT = "nfk_nb.lowrank"
FORMAT_VERSION = 1


def tensors_checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and JSON metadata (plus checksum) atomically."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION,
              "checksum": tensors_checksum(cpu)}
    atomic_write_bytes(path, st_save(cpu, metadata={"nfk_nb": json.dumps(header)}))


def load_state(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a file written by :func:`save_state`; tensors come back on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise NFKError(f"No saved NFK estimator at {str(path)!r}.")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        meta_all = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {})
        meta = json.loads(meta_all["nfk_nb"])
    except (SafetensorError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise NFKError(
            f"{str(path)!r} is not a readable nfk_nb file (truncated or altered): {exc}."
        ) from None
    if meta.get("format") != FORMAT:
        raise NFKError(f"{str(path)!r} is not an nfk_nb LowRankNFK file.")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise NFKError(
            f"{str(path)!r} uses format version {meta['format_version']}; this nfk_nb reads up to "
            f"{FORMAT_VERSION}: upgrade nfk_nb."
        )
    if tensors_checksum(tensors) != meta.get("checksum"):
        raise NFKError(f"{str(path)!r} failed its checksum: the tensors were altered or truncated.")
    return tensors, meta
