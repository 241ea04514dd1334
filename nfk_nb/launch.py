"""Fit a low-rank NFK over several processes (``torchrun``, SLURM, or local workers from a notebook).

The fit itself is ``LowRankNFK.fit`` on each process's shard of the data (see ``nfk_nb.distributed``):
per-example products stay local, sums are all-reduced, and the fitted state is the same on every
rank. This module starts the processes and gathers the result.

From a notebook (one machine, N local processes)::

    E = nfk_nb.launch.fit_workers(est, X, workers=2)      # or  %nfk fit ... --workers 2
    est.transform(X_test)                                  # the fitted state is copied back

From the command line (``nfk_nb.fit_command``), with a Python file that defines ``likelihood`` (or
``model`` and ``kind``) and ``data`` (or ``shard(rank, world_size)``)::

    torchrun --standalone --nproc-per-node=4 -m nfk_nb fit script.py --rank 64 --out run/
    nfk-nb fit script.py --workers 4 --out run/           # the same, without torchrun

It writes ``run/embedding.safetensors`` (tensor ``embedding``, N×k, rows in data order) and
``run/estimator.safetensors`` (``LowRankNFK.load(path, lik)``), both from rank 0.

Data in the script: ``data`` is the *full* data set (tensor, ``(X, y)`` or Dataset), built the same
way on every rank; each rank keeps an even contiguous slice (rank order = row order). For data too
big to load everywhere, define ``shard(rank, world_size)`` returning this process's part instead;
shards may differ in size and are concatenated in rank order. The model must be identical on every
rank (seed it, or load a checkpoint): this is checked before fitting.

Multi-node (8 GPUs per node, N nodes; one process per GPU, NCCL, ``cuda:LOCAL_RANK``)::

    torchrun --nnodes=N --nproc-per-node=8 --rdzv-backend=c10d \\
             --rdzv-endpoint=HEAD_NODE:29500 --rdzv-id=nfk1 -m nfk_nb fit script.py --out run/

SLURM (one ``torchrun`` per node, which starts 8 workers)::

    #SBATCH --nodes=4 --ntasks-per-node=1 --gpus-per-node=8
    HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    srun torchrun --nnodes="$SLURM_NNODES" --nproc-per-node=8 --rdzv-backend=c10d \\
         --rdzv-endpoint="$HEAD:29500" --rdzv-id="$SLURM_JOB_ID" -m nfk_nb fit script.py --out run/

or one task per GPU without torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` are then read from
``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``)::

    #SBATCH --nodes=4 --ntasks-per-node=8 --gpus-per-node=8
    export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1) MASTER_PORT=29500
    srun python -m nfk_nb fit script.py --out run/

Failures: a rank that raises ends the job with that error. ``fit_workers`` watches its processes,
stops the others as soon as one fails and re-raises the first error in the caller; under
``torchrun`` the agent stops the other workers; every collective also has a timeout (``--timeout``).
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing as mp
import os
import pickle
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from .data_checks import shard_offset
from .errors import NFKError, NFKTypeError
from .orphans import Janitor, die_with_parent
from .process_group import init_process_group, shard_bounds

DEFAULT_TIMEOUT_S = 1800.0  # per collective: one data pass may take long on a CPU


class WorkerError(RuntimeError):
    """A worker process died without reporting an error (killed, out of memory), or timed out."""


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# -- progress from rank 0 to the parent's bar ---------------------------------------------------


class _PipeBar:
    """A tqdm-like bar in a worker that forwards its counts to the parent (at most ~4 per second)."""

    def __init__(self, conn: Any, total: int, desc: str) -> None:
        self.conn, self.pending, self.last = conn, 0, 0.0
        self._send(("start", int(total), str(desc)))

    def _send(self, msg: tuple) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(msg)

    def update(self, n: int = 1) -> None:
        self.pending += int(n)
        now = time.monotonic()
        if now - self.last > 0.25:
            self._send(("update", self.pending))
            self.pending, self.last = 0, now

    def close(self) -> None:
        if self.pending:
            self._send(("update", self.pending))
            self.pending = 0
        self._send(("close",))


class _PipeBarFactory:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __call__(self, total: int, desc: str = "") -> _PipeBar:
        return _PipeBar(self.conn, total, desc)


class _ParentBars:
    """Shows the bars a worker opens, with the caller's progress setting."""

    def __init__(self, progress: Any) -> None:
        self.progress, self.bar = progress, None

    def handle(self, msg: tuple) -> None:
        from ._progress import make_bar

        if msg[0] == "start":
            self.close()
            self.bar = make_bar(msg[1], msg[2], self.progress)
        elif msg[0] == "update" and self.bar is not None:
            self.bar.update(msg[1])
        elif msg[0] == "close":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- starting and watching local workers -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_main(
    fn: Callable[..., Any], rank: int, world: int, port: int, device: str, timeout_s: float,
    threads: int, workdir: str, bar_conn: Any, args: tuple, parent_pid: int = 0,
) -> None:
    import torch.distributed as dist

    die_with_parent(parent_pid or os.getppid())  # a killed caller must not leave workers running
    code = 0
    try:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if sys.platform.startswith("linux"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch.set_num_threads(threads)
        if device == "cuda":
            torch.cuda.set_device(rank)
        init_process_group(device, rank, world, timeout_s)
        progress = _PipeBarFactory(bar_conn) if bar_conn is not None else False
        result = fn(rank, world, progress, *args)
        dist.barrier()
        tmp = os.path.join(workdir, f".rank{rank}.pt")
        torch.save(result, tmp)
        os.replace(tmp, os.path.join(workdir, f"rank{rank}.pt"))
    except BaseException as exc:  # report everything, also KeyboardInterrupt, to the parent
        code = 1
        try:
            blob = pickle.dumps(exc)
        except Exception:
            blob = None
        report = {"rank": rank, "time": time.time(), "type": type(exc).__name__, "message": str(exc),
                  "traceback": traceback.format_exc(), "exc": blob}
        # written whole, then renamed: a worker stopped mid-write leaves no half report behind
        tmp = os.path.join(workdir, f".rank{rank}.err")
        with open(tmp, "wb") as f:
            pickle.dump(report, f)
        os.replace(tmp, os.path.join(workdir, f"rank{rank}.err"))
    finally:
        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()
    sys.exit(code)


def _stop(procs: Sequence[Any]) -> None:
    """SIGTERM every live worker, then SIGKILL whatever is left after 5 s."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5.0)


_PEER_LOSS = ("Connection reset by peer", "Connection closed by peer", "gloo/transport", "NCCL")


def _is_peer_loss(report: dict[str, Any]) -> bool:
    """An error that only says a peer went away (the consequence, not the cause)."""
    return report["type"] in ("DistBackendError", "DistNetworkError") or any(
        s in report["message"] for s in _PEER_LOSS)


def _raise_worker_error(workdir: Path, procs: Sequence[Any], dead: list[tuple[int, int]]) -> None:
    """Re-raise the error that caused the failure; ``dead`` lists (rank, exit code) before stopping.

    The cause is the earliest error that is not a lost connection; when there is none, a worker
    that died without a report (a crash, a kill) is the cause; else the earliest report.
    """
    reports = []
    for f in workdir.glob("rank*.err"):
        with open(f, "rb") as fh, contextlib.suppress(EOFError, pickle.UnpicklingError):
            reports.append(pickle.load(fh))
    reports.sort(key=lambda rep: rep["time"])
    causes = [rep for rep in reports if not _is_peer_loss(rep)]
    silent = [(r, code) for r, code in dead if r not in {rep["rank"] for rep in reports}]
    if not causes and silent:
        r, code = silent[0]
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise WorkerError(f"Worker rank {r} died ({how}) without reporting an error; "
                          f"the other workers were stopped.")
    first = (causes or reports)[0]
    exc = None
    if first["exc"] is not None:
        with contextlib.suppress(Exception):
            exc = pickle.loads(first["exc"])
    if not isinstance(exc, BaseException):
        exc = WorkerError(f"{first['type']}: {first['message']}")
    if hasattr(exc, "add_note"):
        exc.add_note(f"(raised on worker rank {first['rank']} of {len(procs)}; the others were stopped)")
    raise exc from _RemoteTraceback(first["traceback"])


def run_workers(
    fn: Callable[..., Any],
    rank_args: Sequence[tuple],
    *,
    device: str = "cpu",
    timeout: float | None = None,
    progress: Any = False,
) -> list[Any]:
    """Run ``fn(rank, world_size, progress, *rank_args[rank])`` in one process per rank.

    Each process joins a fresh process group (gloo on 127.0.0.1 for ``device="cpu"``, NCCL with
    ``cuda:rank`` for ``device="cuda"``). Processes are forked on Linux (so functions and models
    defined in a notebook need no pickling) unless CUDA is already initialised here, where they are
    spawned (arguments must then pickle).

    Parameters
    ----------
    fn : callable
        ``fn(rank, world_size, progress, *args)``; its result must pickle. ``progress`` is a bar
        factory on rank 0 (forwarded to this process's bar, shown with the ``progress`` setting),
        ``False`` elsewhere.
    rank_args : sequence of tuples
        One tuple of extra arguments per rank; its length is the number of processes.
    device : {"cpu", "cuda"}
    timeout : float, optional
        Seconds before every worker is stopped and :class:`WorkerError` is raised (default: none,
        but each collective times out after 30 minutes).
    progress : bool or callable
        How rank 0's progress is shown here (as ``LowRankNFK(progress=...)``).

    Returns
    -------
    list
        The results, in rank order.

    Raises
    ------
    Exception
        The first error a worker raised (same type and message), after stopping the others.
    """
    import torch.distributed as dist

    world = len(rank_args)
    if world < 1:
        raise NFKError("run_workers needs at least one worker.")
    if dist.is_available() and dist.is_initialized():
        raise NFKError("fit_workers starts its own processes; inside a torchrun job call est.fit on "
                       "each rank instead.")
    if device == "cuda" and torch.cuda.device_count() < world:
        raise NFKError(f"{world} CUDA workers need {world} GPUs; {torch.cuda.device_count()} are visible.")
    method = "fork" if sys.platform.startswith("linux") and not torch.cuda.is_initialized() else "spawn"
    ctx = mp.get_context(method)
    port = _free_port()
    threads = max(1, torch.get_num_threads() // world) if device == "cpu" else torch.get_num_threads()
    pg_timeout = float(timeout) if timeout else DEFAULT_TIMEOUT_S
    workdir = Path(tempfile.mkdtemp(prefix="nfk_workers_"))
    bar_recv, bar_send = ctx.Pipe(duplex=False) if progress else (None, None)
    bars = _ParentBars(progress)
    procs: list[Any] = []
    start = time.monotonic()
    janitor = Janitor(workdir)  # removes workdir if this process is killed
    try:
        for r in range(world):
            conn = bar_send if r == 0 else None
            p = ctx.Process(target=_worker_main, name=f"nfk-worker-{r}", daemon=True,
                            args=(fn, r, world, port, device, pg_timeout, threads, str(workdir), conn,
                                  tuple(rank_args[r]), os.getpid()))
            try:
                p.start()
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise NFKError(f"The workers are spawned (CUDA is initialised in this process), so the "
                               f"estimator and data must pickle, and they do not: {exc}") from None
            procs.append(p)
        if bar_send is not None:
            bar_send.close()  # the child holds its own copy; EOF tells us it is gone
        watch = [p.sentinel for p in procs] + ([bar_recv] if bar_recv is not None else [])

        def drain() -> None:
            nonlocal bar_recv
            try:
                while bar_recv is not None and bar_recv.poll():
                    bars.handle(bar_recv.recv())
            except (EOFError, OSError):
                watch.remove(bar_recv)
                bar_recv = None

        while True:
            ready = wait(watch, timeout=0.25)
            if bar_recv is not None and bar_recv in ready:
                drain()
            dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                _stop(procs)
                _raise_worker_error(workdir, procs, dead)
            if all(p.exitcode == 0 for p in procs):
                break
            if timeout is not None and time.monotonic() - start > timeout:
                _stop(procs)
                raise WorkerError(f"The workers gave no result within {timeout} s and were stopped.")
        drain()  # rank 0's last counts
        return [torch.load(workdir / f"rank{r}.pt", map_location="cpu", weights_only=False)
                for r in range(world)]
    finally:
        bars.close()
        _stop(procs)
        shutil.rmtree(workdir, ignore_errors=True)
        janitor.stop()


# -- fitting an estimator over local workers -----------------------------------------------------


def _split(X: Any, y: Any, workers: int) -> tuple[list[Any], int]:
    """Even contiguous shards (rank order = row order) of a tensor, an ``(X, y)`` tuple or a Dataset."""
    import numpy as np

    if y is not None:
        X = (X, y)
    if isinstance(X, Dataset) and not isinstance(X, (tuple, list)):
        n = len(X)  # type: ignore[arg-type]
        return [Subset(X, range(*shard_bounds(n, workers, r))) for r in range(workers)], n
    parts = list(X) if isinstance(X, (tuple, list)) else [X]
    parts = [torch.from_numpy(p) if isinstance(p, np.ndarray) else p for p in parts]
    if not parts or not all(isinstance(p, Tensor) for p in parts):
        raise NFKTypeError("fit_workers takes a tensor, an (X, y) tuple of tensors or a Dataset.")
    n = len(parts[0])
    if any(len(p) != n for p in parts):
        raise NFKError("The parts of the data have different lengths.")
    shards = []
    for r in range(workers):
        lo, hi = shard_bounds(n, workers, r)
        piece = tuple(p[lo:hi] for p in parts)
        shards.append(piece if len(piece) > 1 else piece[0])
    return shards, n


def _fit_shard(rank: int, world: int, progress: Any, est: Any, shard: Any,
               first_row: int = 0) -> tuple[Tensor, dict | None]:
    est.set_params(progress=progress)
    with shard_offset(first_row):  # errors name the example's row in the whole data set
        E = est.fit_transform(shard)
    return E, (est.state_dict() if rank == 0 else None)


def fit_workers(est: Any, X: Any, y: Any = None, workers: int = 2, timeout: float | None = None) -> Tensor:
    """Fit ``est`` on ``X`` with ``workers`` local processes; returns the embedding (N, k).

    ``X`` (a tensor, an ``(X, y)`` tuple or a Dataset) is split into even contiguous shards by
    rows, one per process; each process runs ``est.fit_transform`` on its shard (sums over
    examples all-reduced, see ``nfk_nb.distributed``), the rows come back in order and the fitted
    state is copied into ``est``, so ``est.transform`` works here afterwards. One progress bar
    (rank 0's) is shown with ``est.progress``. Workers use one GPU each when ``est.device`` is
    ``None`` and there are at least ``workers`` GPUs, or when it is ``"cuda"``; else the CPU (gloo),
    with the CPU threads split between them.

    Parameters
    ----------
    est : LowRankNFK
        The estimator (its settings are used as they are; it is fitted in place).
    X : Tensor, (X, y) tuple or Dataset
        The full data; at least one example per worker.
    y : Tensor, optional
        Targets, when ``X`` is a tensor.
    workers : int
        Number of processes (1 fits in this process).
    timeout : float, optional
        Seconds before the workers are stopped and :class:`WorkerError` is raised.

    Returns
    -------
    Tensor
        The embedding of all rows of ``X``, in order (also ``est.embedding_``).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise NFKError(f"workers must be a positive integer, got {workers!r}.")
    if workers == 1:
        return est.fit_transform(X, y)
    shards, n = _split(X, y, workers)
    if n < workers:
        raise NFKError(f"{n} examples cannot be split over {workers} workers; use workers <= {n}.")
    dev = None if est.device is None else torch.device(est.device)
    if dev is None:
        use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= workers
    else:
        use_cuda = dev.type == "cuda"
    worker_est = copy.copy(est)  # without its operator: each worker builds its own
    if use_cuda:
        worker_est.set_params(device=None)  # each worker's current device is cuda:rank
    starts = [shard_bounds(n, workers, r)[0] for r in range(workers)]
    results = run_workers(_fit_shard, [(worker_est, s, lo) for s, lo in zip(shards, starts)],
                          device="cuda" if use_cuda else "cpu", timeout=timeout, progress=est.progress)
    embedding = torch.cat([E for E, _ in results])
    est.load_state_dict({**results[0][1], "embedding": embedding})
    return embedding
