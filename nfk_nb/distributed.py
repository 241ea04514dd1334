"""Sums and gathers over processes. A single process is the identity; ``torch.distributed`` plugs in.

The low-rank fit touches other processes only through :class:`Reducer`: sums over examples
(VJP products, score moments, counts) and gathers of the small N×l sketch for its QR.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Reducer:
    """Single-process reducer: every operation is the identity."""

    rank = 0
    world_size = 1

    def sum(self, t: Tensor) -> Tensor:
        """Sum ``t`` over processes (same shape everywhere)."""
        return t

    def gather_rows(self, t: Tensor) -> Tensor:
        """Concatenate each process's rows, in rank order, on every process."""
        return t

    def local_rows(self, full: Tensor, n_local: int) -> Tensor:
        """This process's rows of a gathered matrix."""
        return full

    def count(self, n: int) -> int:
        """Total number of examples over processes."""
        return int(self.sum(torch.tensor([n], dtype=torch.float64))[0].item())


def get_reducer() -> Reducer:
    """The reducer for the current process group (single-process when none is initialised)."""
    return Reducer()
