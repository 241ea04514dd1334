"""Joining a ``torch.distributed`` process group, and splitting rows over its ranks (one place for both).

Every launcher goes through :func:`init_process_group`: ``nfk-nb fit`` under torchrun or SLURM
(:func:`init_from_env`) and the local workers of ``nfk_nb.launch.run_workers``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an even contiguous split of ``n`` rows (the first ``n % world_size``
    ranks get one more), so concatenating the shards in rank order gives back the data."""
    base, extra = divmod(int(n), int(world_size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Sizes of the shards of :func:`shard_bounds`, in rank order."""
    return [hi - lo for lo, hi in (shard_bounds(n, world_size, r) for r in range(world_size))]


def default_backend(device: torch.device | str | None = None) -> str:
    """``"nccl"`` for CUDA devices (when NCCL is built in), else ``"gloo"``."""
    import torch.distributed as dist

    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def env_rank_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables, else SLURM's, else ``(0, 1, 0)``."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def init_from_env(device: str | torch.device | None = None, timeout_s: float = 600.0) -> torch.device:
    """Join the process group described by the environment; returns this process's device.

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
    under ``srun`` without torchrun the ``SLURM_*`` variables are used (``MASTER_ADDR`` and
    ``MASTER_PORT`` must then be exported by the batch script). One GPU per process:
    ``cuda:LOCAL_RANK`` when CUDA is present (NCCL), else the CPU (gloo). A world of one process
    initialises nothing. ``timeout_s`` bounds every collective, so a lost peer ends the job.
    """
    import torch.distributed as dist

    rank, world, local_rank = env_rank_info()
    if device is None:
        dev = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        init_process_group(dev, rank, world, timeout_s)
    return dev


def init_process_group(device: torch.device | str, rank: int, world_size: int, timeout_s: float) -> None:
    """Join the default process group (NCCL for CUDA devices, else gloo; ``MASTER_ADDR``/``MASTER_PORT``
    from the environment); ``timeout_s`` bounds every collective, so a lost peer ends the job."""
    import torch.distributed as dist

    dist.init_process_group(default_backend(device), rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
