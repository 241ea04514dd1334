"""Sums and gathers over processes. A single process is the identity; ``torch.distributed`` plugs in.

The low-rank fit touches other processes only through :class:`Reducer`: sums over examples
(VJP products, score moments, counts) and gathers of the small N×l sketch for its QR. When
``torch.distributed`` is initialised, :func:`get_reducer` returns a :class:`TorchDistributedReducer`
and ``LowRankNFK.fit(X_local)`` treats ``X_local`` as this process's shard:

* per-example products (JVPs) stay local; sums over examples are all-reduced;
* the sketch ``Y`` (N×l) is gathered in rank order, so its QR, the small SVD and the random test
  matrix (same seed) are the same on every rank: the fitted state is identical everywhere;
* sampler draws (energy models) are made in full on every rank, each keeping a disjoint slice.

``fit_transform`` returns this rank's rows; ``transform`` needs no other process; rank 0 can save.
Checkpoints are per rank (``path.rank{r}``), and ranks that stopped at different stages start over
together. :data:`COMM_STATS` counts the values each process moved.

Every method of a reducer is a collective: all ranks call it, in the same order. Backends: gloo
for CPU tensors, NCCL for CUDA (tensors are moved to the backend's device and back). Joining a process
group lives in ``nfk_nb.process_group``, launchers in ``nfk_nb.launch``.
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


# Values moved by this process's collectives since the last reset (for benchmarks and tests):
# "sum" counts all-reduced elements, "gather" the elements received by all-gathers (padding included).
COMM_STATS: dict[str, int] = {"sum": 0, "gather": 0, "collectives": 0}


def reset_comm_stats() -> dict[str, int]:
    """Zero :data:`COMM_STATS` and return the counts it held."""
    old = dict(COMM_STATS)
    for key in COMM_STATS:
        COMM_STATS[key] = 0
    return old


class TorchDistributedReducer(Reducer):
    """Reducer over the default ``torch.distributed`` process group.

    Parameters
    ----------
    group : ProcessGroup, optional
        The process group (default: the global one).
    """

    def __init__(self, group: object | None = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        # NCCL only moves CUDA tensors and gloo is used here for CPU ones; a mixed group
        # ("cpu:gloo,cuda:nccl") takes tensors where they are
        self.comm_device: torch.device | None
        if "nccl" in backend and "gloo" in backend:
            self.comm_device = None
        elif "nccl" in backend:
            self.comm_device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.comm_device = torch.device("cpu")

    def _device(self, t: Tensor) -> torch.device:
        return t.device if self.comm_device is None else self.comm_device

    def _to_comm(self, t: Tensor) -> Tensor:
        # a private, contiguous copy: collectives work in place and must not alter the caller's tensor
        return t.detach().to(self._device(t), copy=True).contiguous()

    def sum(self, t: Tensor) -> Tensor:
        """All-reduce (SUM) ``t``; returns a new tensor on ``t``'s device."""
        buf = self._to_comm(t)
        self._dist.all_reduce(buf, op=self._dist.ReduceOp.SUM, group=self.group)
        COMM_STATS["sum"] += buf.numel()
        COMM_STATS["collectives"] += 1
        return buf.to(t.device)

    def _sizes(self, n: int, like: Tensor) -> list[int]:
        mine = torch.tensor([n], dtype=torch.int64, device=self._device(like))
        sizes = [torch.zeros_like(mine) for _ in range(self.world_size)]
        self._dist.all_gather(sizes, mine, group=self.group)
        return [int(s.item()) for s in sizes]

    def gather_rows(self, t: Tensor) -> Tensor:
        """All-gather row blocks of uneven sizes: pad to the largest, gather, trim, concatenate."""
        sizes = self._sizes(len(t), t)
        biggest = max(sizes)
        buf = torch.zeros((biggest, *t.shape[1:]), dtype=t.dtype, device=self._device(t))
        buf[: len(t)] = t.detach().to(buf.device)
        parts = [torch.empty_like(buf) for _ in range(self.world_size)]
        self._dist.all_gather(parts, buf, group=self.group)
        COMM_STATS["gather"] += buf.numel() * self.world_size
        COMM_STATS["collectives"] += 1
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(t.device)

    def local_rows(self, full: Tensor, n_local: int) -> Tensor:
        """Rows ``[offset, offset + n_local)`` of ``full``, offset = rows of the lower ranks."""
        sizes = self._sizes(n_local, full)
        start = sum(sizes[: self.rank])
        if sum(sizes) != len(full):
            raise RuntimeError(
                f"local_rows: the gathered matrix has {len(full)} rows but the shards add up to "
                f"{sum(sizes)}."
            )
        return full[start : start + n_local]


def get_reducer() -> Reducer:
    """The reducer for the current process group (single-process when none is initialised)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributedReducer()
    return Reducer()


def same_on_all_ranks(reducer: Reducer, value: int) -> bool:
    """Whether every rank passed the same integer (a collective: ``Σv² · W == (Σv)²`` iff all equal)."""
    s = reducer.sum(torch.tensor([float(value), float(value) ** 2], dtype=torch.float64))
    return bool(s[0] ** 2 == reducer.world_size * s[1])
