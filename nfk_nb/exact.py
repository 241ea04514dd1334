"""The exact path: dense Fisher vectors ``V`` (N×P) and the kernel ``K = V_X V_Zᵀ``.

For small models and as the oracle of the low-rank path. ``m`` and the Fisher information come from
the likelihood's reference set (sampler draws, else ``X``), exactly as in :class:`LowRankNFK`. Work
that would not fit in memory is refused before anything is allocated.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from ._modes import eval_mode
from .consistency import precise_enough
from .datasource import DataSource, as_source
from .distributed import Reducer
from .errors import NFKError, NFKMemoryError
from .fisher import DEFAULT_DAMPING, FisherEstimate, check_fisher, estimate_fisher, score_moment
from .fitting import reference_batches
from .functional import LogProbOperator, compute_dtype, default_device
from .layerwise import make_operator
from .likelihoods import Likelihood
from .validation import check_source


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CUDA: free device memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_memory(n_elements: int, dtype: torch.dtype, device: torch.device, what: str,
                 max_memory: int | None = None) -> None:
    """Refuse when ``n_elements`` of ``dtype`` exceed half the free memory (or ``max_memory``)."""
    need = n_elements * torch.empty((), dtype=dtype).element_size()
    budget = max_memory if max_memory is not None else available_memory(device) // 2
    if need > budget:
        raise NFKMemoryError(
            f"The exact {what} needs about {need / 2**30:.1f} GiB but the budget is "
            f"{budget / 2**30:.1f} GiB; use nfk_nb.LowRankNFK, which needs O((N + P) k) memory."
        )


def _setup(lik: Likelihood, device: Any, dtype: torch.dtype | None) -> LogProbOperator:
    if not isinstance(lik, Likelihood):
        raise NFKError(f"lik must be an nfk_nb likelihood, not {type(lik).__name__}.")
    return make_operator(lik, default_device(device), dtype or compute_dtype(lik.model))


def _fisher(lik: Likelihood, op: LogProbOperator, source: DataSource, fisher: str,
            damping: float, seed: int, batch_size: int) -> FisherEstimate:
    reference, n = reference_batches(lik, source, batch_size, seed, Reducer())  # as a low-rank fit's
    if fisher == "identity":  # only the partition term is needed, not the second moment
        check_fisher(fisher, damping)
        mean = torch.zeros(op.P, dtype=op.acc_dtype, device=op.device)
        if lik.centered:
            total, n = score_moment(op, reference(), None, 1, Reducer())
            mean = (total / n).to(mean)
        return FisherEstimate(mean, torch.zeros_like(mean), n, fisher, float(damping))
    est, _ = estimate_fisher(op, reference, centered=lik.centered, kind=fisher, damping=damping)
    return est


def _estimate(lik: Likelihood, op: LogProbOperator, source: DataSource, fisher: str, damping: float,
              seed: int, batch_size: int) -> tuple[LogProbOperator, FisherEstimate]:
    """The Fisher estimate of both public functions, redone in float64 when the scores are
    near-constant in the compute dtype (or refused): the operator it holds for, and the estimate."""
    est = _fisher(lik, op, source, fisher, damping, seed, batch_size)
    return precise_enough(op, est, lambda o: _fisher(lik, o, source, fisher, damping, seed, batch_size))


def _vectors(op: LogProbOperator, source: DataSource, est: FisherEstimate) -> Tensor:
    acc = op.acc_dtype
    mean = est.mean.to(acc)
    rows = [est.whiten_(op.per_example_grads(op.to_batch(b)).to(acc) - mean, op.space) for b in source]
    return torch.cat(rows)


def fisher_vectors(
    lik: Likelihood,
    X: Any,
    *,
    fisher: str = "diagonal", damping: float = DEFAULT_DAMPING,  # the Fisher estimate
    batch_size: int = 256, device: Any = None, dtype: torch.dtype | None = None,  # how it is computed
    seed: int = 0, max_memory: int | None = None,
) -> Tensor:
    """Dense Fisher vectors ``v(x) = I^{-1/2} (∇ log p̃(x) - m)``, shape (N, P), on the CPU.

    Parameters
    ----------
    lik : Likelihood
    X : tensor, (X, y), Dataset or DataLoader
    fisher, damping
        As in :class:`~nfk_nb.LowRankNFK`.
    batch_size, device, dtype, seed
        Batching, compute device/dtype and the seed of sampler draws.
    max_memory : int, optional
        Byte budget (default: half the free memory); larger work raises ``NFKMemoryError``.
    """
    source = as_source(X, batch_size)
    op = _setup(lik, device, dtype)
    check_memory(source.n * op.P, op.acc_dtype, op.device, "Fisher vectors",
                 max_memory)
    with eval_mode(lik.model):
        check_source(op, source)
        op, est = _estimate(lik, op, source, fisher, damping, seed, batch_size)
        return _vectors(op, source, est).cpu()


def fisher_kernel(
    lik: Likelihood,
    X: Any,
    Z: Any = None,
    *,
    fisher: str = "diagonal", damping: float = DEFAULT_DAMPING,  # the Fisher estimate
    batch_size: int = 256, device: Any = None, dtype: torch.dtype | None = None,  # how it is computed
    seed: int = 0, max_memory: int | None = None,
) -> Tensor:
    """Exact NFK ``K(x, z) = v(x)ᵀ v(z)`` between ``X`` (N) and ``Z`` (M, default ``X``): (N, M).

    ``m`` and the Fisher information are estimated on the likelihood's reference set: sampler
    draws, or ``X`` (never ``Z``), matching :meth:`LowRankNFK.fit` on ``X``.
    """
    source = as_source(X, batch_size)
    other = source if Z is None else as_source(Z, batch_size)
    op = _setup(lik, device, dtype)
    acc = op.acc_dtype
    m = other.n
    with eval_mode(lik.model):
        check_source(op, source)
        if Z is not None:
            check_source(op, other)
        width = op.P
        if getattr(op, "layers", None):  # layer-wise: the numbers stored per example (gram.py)
            from .gram import feature_size

            op.probe(op.to_batch(source.first()))
            width = feature_size(op, fisher) if op.layers else op.P
        check_memory((source.n + (0 if Z is None else m)) * width + source.n * m, acc, op.device,
                     "Fisher kernel", max_memory)
        op, est = _estimate(lik, op, source, fisher, damping, seed, batch_size)
        if getattr(op, "layers", None):  # layer-wise: no P-sized row per example where possible
            from .gram import layerwise_kernel

            return layerwise_kernel(op, source, None if Z is None else other, est).cpu()
        VX = _vectors(op, source, est)
        VZ = VX if Z is None else _vectors(op, other, est)
        return (VX @ VZ.T).cpu()
