"""Saving and loading fitted estimators: tensors in safetensors, metadata as JSON in its header.

Never unpickles: safetensors stores raw tensor bytes and the metadata is plain JSON. The file carries a
format name and version, the package version, the estimator's settings, a fingerprint of θ (names and
shapes), a SHA-256 of the tensors and one of the metadata; a truncated or altered file fails one of
them. Files are written to a temporary file in the same folder, flushed to disk and renamed, so a crash
(even SIGKILL) leaves either the old file or the new one under the final name, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import NFKError, NFKWriteError
from .meta_checks import MAX_DEPTH, json_depth

FORMAT = "nfk_nb.lowrank"
FORMAT_VERSION = 2  # 2 adds the metadata checksum; version 1 files (tensor checksum only) still load
_CHECKSUM_KEYS = ("checksum", "meta_checksum")
_MAX_HEADER = 100 * 2**20  # a header this large is not one of ours


def tensors_checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too
    return h.hexdigest()


def jsonable(value: Any) -> Any:
    """A JSON-friendly stand-in for a setting (dtypes and other objects become strings)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return repr(value)


def meta_checksum(meta: dict[str, Any]) -> str:
    """SHA-256 of the metadata as canonical JSON (sorted keys), without the checksum fields."""
    body = {k: v for k, v in meta.items() if k not in _CHECKSUM_KEYS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success flush it to disk and rename it to ``path``.

    On any error (or interrupt) the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # what a killed earlier save left behind
    tmp = _create_temporary(path)
    mode = os.stat(tmp).st_mode & 0o777  # 0o666 less the umask; a writer may recreate the file 0o600
    try:
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


_HOST = socket.gethostname().replace(".", "_") or "host"
_STALE_S = 24 * 3600.0  # a temporary of another machine (shared file system) this old is abandoned
_LEGACY_STALE_S = 3600.0  # same for names without an owner (nfk_nb before host-pid names)


def _create_temporary(path: Path) -> str:
    """An empty new file ``.<name>.<host>-<pid>.<random>.tmp`` beside ``path``.

    Created with mode 0o666 so the process umask applies, like any file the user writes (mkstemp's
    0o600 would make saved files private whatever the umask). The host and pid let a later save tell
    an abandoned temporary (its process is gone) from one that another process is still writing.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a temporary file beside {str(path)!r}.")


def _abandoned(tmp: Path) -> bool:
    """Whether nobody writes ``tmp`` any more: its process is gone (this host), or it is old."""
    host, _, pid = tmp.name.split(".")[-3].rpartition("-") if tmp.name.count(".") >= 4 else ("", "", "")
    if host == _HOST and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, owned by someone else
            pass
        return False
    # another machine's (shared file system), or an older nfk_nb's mkstemp name without an owner
    limit = _STALE_S if pid.isdigit() else _LEGACY_STALE_S
    try:
        return time.time() - tmp.stat().st_mtime > limit
    except OSError:
        return False


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove temporary files for ``path`` that killed saves left behind (never one being written)."""
    path = Path(path)
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            if _abandoned(tmp):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def save_state(
    path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any], fmt: str = FORMAT
) -> None:
    """Write tensors (moved to the CPU) and JSON metadata, plus checksums, atomically.

    Parameters
    ----------
    path : path-like
    tensors : dict of str to Tensor
    meta : dict
        JSON-serialisable metadata.
    fmt : str
        Format name, checked by :func:`load_state` (estimators and checkpoints differ).
    """
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = json.loads(json.dumps({**meta, "format": fmt, "format_version": FORMAT_VERSION}))
    header["checksum"] = tensors_checksum(cpu)
    header["meta_checksum"] = meta_checksum(header)
    try:
        with atomic_path(path) as tmp:  # written straight to disk: no second copy in memory
            save_file(cpu, tmp, metadata={"nfk_nb": json.dumps(header)})
    except (OSError, SafetensorError) as exc:
        raise write_error(path, exc) from None


def write_error(path: str | os.PathLike, exc: BaseException) -> NFKWriteError:
    """One sentence for a failed write (a full disk, a read-only folder): what, where, why."""
    code = getattr(exc, "errno", None)
    found = re.search(r"\(os error (\d+)\)", str(exc))  # safetensors wraps the OS error in its text
    if code is None and found:
        code = int(found.group(1))
    reason = getattr(exc, "strerror", None) or (os.strerror(code) if code else str(exc))
    err = NFKWriteError(f"Cannot write {str(path)!r}: {reason}; any file there before is unchanged.")
    err.errno, err.strerror = code, reason
    return err


def _read_header(path: Path) -> Any:
    """The nfk_nb metadata in the safetensors header, without reading the tensors."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"only {len(head)} bytes")
        header_len = int.from_bytes(head, "little")
        if header_len > _MAX_HEADER:
            raise ValueError(f"a header of {header_len} bytes")
        try:
            header = json.loads(f.read(header_len))
            meta = json.loads(header["__metadata__"]["nfk_nb"])
        except RecursionError:
            raise ValueError("its metadata are nested too deeply") from None
    if json_depth(meta) > MAX_DEPTH:
        raise ValueError(f"its metadata are nested deeper than {MAX_DEPTH} levels")
    return meta


def _read(path: Path) -> tuple[dict[str, Tensor], Any]:
    meta = _read_header(path)
    tensors = load_file(path, device="cpu")  # validates the layout; never unpickles
    return tensors, meta


def read_meta(
    path: str | os.PathLike, fmt: str = FORMAT, what: str = "saved NFK estimator"
) -> dict[str, Any]:
    """The JSON metadata of a file written by :func:`save_state` (settings, likelihood, ...), cheaply.

    Only the header is read, so checksums are not verified (:func:`load_state` does that).

    Raises
    ------
    NFKError
        The file is missing, unreadable, or not an nfk_nb file of format ``fmt``.
    """
    path = Path(path)
    if not path.is_file():
        raise NFKError(f"No {what} at {str(path)!r}.")
    try:
        meta = _read_header(path)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise NFKError(f"{str(path)!r} is not a {what} written by nfk_nb.")
    return meta


def load_state(
    path: str | os.PathLike, fmt: str = FORMAT, what: str = "saved NFK estimator"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a file written by :func:`save_state`; tensors come back on the CPU.

    Raises
    ------
    NFKError
        The file is missing, not an nfk_nb file of format ``fmt``, from a newer nfk_nb, truncated, or
        altered (tensor or metadata checksum mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise NFKError(f"No {what} at {str(path)!r}.")
    try:
        tensors, meta = _read(path)
    except (SafetensorError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise NFKError(
            f"{str(path)!r} is not a readable {what} (truncated, altered or another kind of file): {exc}."
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise NFKError(
            f"{str(path)!r} is not a {what} (its format is {found!r}, expected {fmt!r})."
        )
    version = meta.get("format_version")
    if type(version) is not int or version < 1:  # True is an int to isinstance
        raise NFKError(f"{str(path)!r} has no valid format_version (an integer >= 1): it was altered.")
    if version > FORMAT_VERSION:
        raise NFKError(
            f"{str(path)!r} uses format version {version}; this nfk_nb reads up to "
            f"{FORMAT_VERSION}: upgrade nfk_nb."
        )
    if tensors_checksum(tensors) != meta.get("checksum"):
        raise NFKError(f"{str(path)!r} failed its checksum: the tensors were altered or truncated.")
    if version >= 2 and meta_checksum(meta) != meta.get("meta_checksum"):
        raise NFKError(f"{str(path)!r} failed its metadata checksum: the settings were altered.")
    return tensors, meta
