"""A digest of *all* the data of a fit, streamed over the batches of its first full pass.

A checkpoint used to identify the data by their size and their first batch, so data changed after
the first batch (same size) resumed into a wrong embedding (14% away from a fresh fit). Hashing all
the data up front would cost one more pass; instead the first full pass that the fit makes anyway
hashes every batch it reads (:meth:`nfk_nb.datasource.DataSource.digest_next_pass`). A resumed fit
compares the digest saved with the checkpoint's state to the one it streams on its own first pass,
and refuses to continue when they differ, before any result is returned.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from .errors import NFKError


def update_digest(h: Any, batch: Any) -> None:
    """Feed one batch (a tensor, or tuples, lists and dicts of them) into the hash ``h``."""
    if isinstance(batch, torch.Tensor):
        t = batch.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(batch, dict):
        for key in sorted(batch, key=str):
            h.update(f"<{key}>".encode())
            update_digest(h, batch[key])
    elif isinstance(batch, (tuple, list)):
        h.update(f"({len(batch)}|".encode())
        for part in batch:
            update_digest(h, part)
        keys = getattr(batch, "keys", None)  # a keyed batch: its names count too
        if keys is not None and not callable(keys):
            h.update(repr(list(keys)).encode())
    else:
        h.update(repr(batch).encode())


class PassDigest:
    """Collects the digest of one full pass; checks it against the one a checkpoint recorded.

    Parameters
    ----------
    expected : str, optional
        The digest saved in the checkpoint being resumed (``None``: nothing to compare).
    where : str
        The checkpoint's path, for the message.
    """

    def __init__(self, expected: str | None = None, where: str = "the checkpoint") -> None:
        self.expected, self.where = expected, where
        self.value: str | None = None

    @staticmethod
    def new_hash() -> Any:
        return hashlib.sha256()

    def done(self, digest: str) -> None:
        """Record this pass's digest; refuse data that differ from the checkpoint's."""
        self.value = digest
        if self.expected is not None and digest != self.expected:
            raise NFKError(
                f"The data differ from those {self.where} was written for (same size, other values or "
                f"order); delete the checkpoint or pass the data it was made with."
            )
