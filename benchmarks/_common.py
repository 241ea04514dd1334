"""Shared pieces of the benchmarks: measuring, the alternatives to ``LowRankNFK``, tables.

Every comparison runs all its alternatives in one process on the same model, data and rank, so the
ratios in a table were measured under the same machine load. Reported per alternative:

* ``wall`` and ``cpu`` seconds (``time.process_time``: less sensitive to other users of the machine);
* ``peak MB``: the growth of the process's resident set during the call (``VmHWM`` is reset through
  ``/proc/self/clear_refs`` before each call; on CUDA, ``torch.cuda.max_memory_allocated``);
* ``err/opt``: ``‖K - E Eᵀ‖_F`` divided by the optimal rank-k error ``‖K - K_k‖_F`` (1 is optimal).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import nfk_nb as nfk
from nfk_nb.fisher import DEFAULT_DAMPING

# -- measuring ------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _trim() -> None:
    """Hand freed heap memory back to the OS, so the next block's growth counts what it needs."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _PeakRSS:
    """Peak resident-set growth over a block: ``VmHWM`` reset when possible, else polled."""

    def __enter__(self) -> _PeakRSS:
        gc.collect()
        _trim()
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.reset = True
        except OSError:
            self._stop = threading.Event()
            self._max = 0
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        self.base = _status_kb("VmRSS")
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _status_kb("VmRSS"))
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        if self.reset:
            peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _status_kb("VmRSS"))
        self.peak_mb = max(peak - self.base, 0) / 1024


@dataclass
class Measured:
    """One timed call: its output and what it cost."""

    name: str
    wall: float
    cpu: float
    peak_mb: float
    out: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def measure(name: str, fn: Callable[[], Any], device: torch.device | None = None) -> Measured:
    """Run ``fn()`` once and record wall time, CPU time and peak memory growth."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with _PeakRSS() as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if cuda:
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else rss.peak_mb
    return Measured(name, wall, cpu, peak, out)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads``: torch intra-op threads (default 1, see below)."""
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: on a shared, loaded machine two OpenMP threads were 5-10x "
             "slower in wall time than one, so one thread gives the steadier figures)",
    )


def apply_common_arguments(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)


def machine() -> str:
    """One line describing where the figures were measured."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load:.1f} at start"
    )


# -- the alternatives -----------------------------------------------------------------------------


def joint_log_prob(net: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """``log p̃(x) = logsumexp_y f(x)_y`` of one example, as a function of the parameters."""

    def f(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.logsumexp(functional_call(net, params, (x.unsqueeze(0),)), dim=-1)[0]

    return f


def _user_grads(net: nn.Module, X: Tensor, batch_size: int) -> Callable[[], Any]:
    """What a user writes: ``vmap(grad)`` per batch, flattened to rows of length P."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    per_example = vmap(grad(joint_log_prob(net)), in_dims=(None, 0))

    def batches() -> Any:
        for start in range(0, len(X), batch_size):
            g = per_example(params, X[start : start + batch_size])
            yield torch.cat([t.reshape(len(t), -1) for t in g.values()], dim=1)

    return batches


def exact_user_way(net: nn.Module, X: Tensor, rank: int, damping: float = DEFAULT_DAMPING,
                   batch_size: int = 256) -> dict[str, Tensor]:
    """The exact NFK the way a user writes it today: G, Fisher normalisation, Gram, ``eigh``.

    Joint score with the data as reference set and relative damping, as ``nfk.Classifier(net)``.
    Returns the kernel ``K`` and the rank-k embedding ``U_k √λ_k``.
    """
    G = torch.cat(list(_user_grads(net, X, batch_size)()))
    G -= G.mean(0)
    diag = (G**2).mean(0)
    G *= (diag + damping * diag.mean()).rsqrt()
    K = G @ G.T
    del G
    evals, evecs = torch.linalg.eigh(K)  # in K's dtype (float32), as a user would
    evals, evecs = evals.flip(0), evecs.flip(1)
    E = evecs[:, :rank] * evals[:rank].clamp_min(0).sqrt()
    return {"K": K, "E": E}


def jl_sketch_way(net: nn.Module, X: Tensor, rank: int, dim: int, damping: float = DEFAULT_DAMPING,
                  batch_size: int = 256, seed: int = 0) -> Tensor:
    """TRAK-style: Fisher vectors projected by a Gaussian JL matrix (P×dim), then an SVD.

    Streams per-example gradients (never N×P): one pass for the Fisher moments, one to project.
    Returns the rank-k embedding ``U_k S_k`` of the N×dim sketch.
    """
    batches = _user_grads(net, X, batch_size)
    s1 = s2 = None
    for g in batches():
        s1 = g.sum(0) if s1 is None else s1 + g.sum(0)
        s2 = (g * g).sum(0) if s2 is None else s2 + (g * g).sum(0)
    n = len(X)
    mean = s1 / n
    diag = (s2 / n - mean**2).clamp_min(0)
    scale = (diag + damping * diag.mean()).rsqrt()
    gen = torch.Generator().manual_seed(seed)
    R = torch.randn(len(mean), dim, generator=gen) / math.sqrt(dim)
    sketch = torch.cat([((g - mean) * scale) @ R for g in batches()])
    U, S, _ = torch.linalg.svd(sketch, full_matrices=False)
    return U[:, :rank] * S[:rank]


def lowrank_way(lik: nfk.Likelihood, X: Any, rank: int, **kwargs: Any) -> Tensor:
    """``LowRankNFK(lik, rank, **kwargs).fit_transform(X)`` (no progress bar)."""
    est = nfk.LowRankNFK(lik, rank=rank, progress=False, **kwargs)
    return est.fit_transform(X)


def kernel_error(E: Tensor, K: Tensor, optimal: float) -> float:
    """``‖K - E Eᵀ‖_F / optimal`` in float64."""
    E = E.double()
    return float(torch.linalg.matrix_norm(K.double() - E @ E.T) / optimal)


def optimal_error(evals: Tensor, rank: int) -> float:
    """Eckart–Young: the Frobenius error of the best rank-k approximation of a PSD kernel."""
    return float(evals[rank:].clamp_min(0).pow(2).sum().sqrt())


def forward_seconds(net: nn.Module, X: Tensor, batch_size: int = 256, repeats: int = 5) -> float:
    """Median CPU time of one plain (no-grad) forward pass over ``X`` in batches.

    CPU time, like the fits it is compared with: on a loaded machine wall times swing several-fold.
    """
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.process_time()
            for start in range(0, len(X), batch_size):
                net(X[start : start + batch_size])
            times.append(time.process_time() - t0)
    times = sorted(times[1:])
    return times[len(times) // 2]


# -- tables ---------------------------------------------------------------------------------------


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain-text table (Markdown pipe syntax, so it pastes into the README)."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if v != v:
                return "-"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print(f"\n### {title}\n")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
    print(flush=True)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx = torch.tensor([math.log(x) for x in xs], dtype=torch.float64)
    ly = torch.tensor([math.log(y) for y in ys], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


def digits_inputs() -> tuple[Tensor, Tensor]:
    """All 1,797 digits (train split first), float32 in [0, 1], and labels."""
    from nfk_nb.data import load_digits

    Xtr, ytr, Xte, yte = load_digits()
    return torch.cat([Xtr, Xte]), torch.cat([ytr, yte])


def trained_mlp(sizes: Sequence[int], X: Tensor, y: Tensor, epochs: int = 10) -> nn.Module:
    """A seeded MLP trained briefly with Adam (eval mode)."""
    from nfk_nb.zoo.classifier import mlp, train_classifier

    net = mlp(list(sizes), seed=0)
    train_classifier(net, X, y, epochs=epochs, seed=0)
    return net
