"""The steps of a low-rank NFK fit as free functions; ``LowRankNFK.fit_transform`` calls :func:`fit_lowrank`.

One fit, in passes over the data (each pass is one step, checkpointed when asked):

1. the Fisher estimate on the reference set (:func:`fisher_and_trace`), and ``trace K``;
2. the sketch of ``V`` (:mod:`nfk_nb.sketch`) on the matrix-free products of :mod:`nfk_nb.products`
   or, for the identity and KFAC metrics where the FLOP model says so, the exact kernel formed layer
   by layer and its eigenpairs (:mod:`nfk_nb.gram`);
3. the embedding ``E = V W_k`` of the fit data (one more pass).

Progress counts examples: Fisher passes, the trace pass, ``2q + 2`` sketch passes, the embedding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ._modes import eval_mode
from ._progress import make_bar
from .batch import Batch
from .checkpoint import FitCheckpoint, FitState, fit_identity
from .consistency import check_cancellation, check_consistency
from .datasource import DataSource
from .distributed import Reducer, get_reducer
from .errors import NFKError
from .fisher import FisherEstimate, estimate_fisher, score_moment
from .functional import LogProbOperator
from .gram import gram_fit, gram_is_cheaper
from .guards import check_fit_size, check_trace
from .kfac import estimate_factors, fisher_trace
from .likelihoods import Likelihood
from .process_group import shard_bounds
from .products import FisherVectorProducts
from .sketch import MatrixProducts, Omega, range_sketch, single_pass_sketch, top_singular
from .validation import check_finite_columns, check_finite_rows, check_inputs

Tick = Callable[[int], None]


@dataclass
class FitResult:
    """What a fit computed; the estimator turns it into its fitted attributes."""

    fisher: FisherEstimate
    trace: float
    components: Tensor  # W_kᵀ (k, P)
    singular_values: Tensor  # (k,)
    embedding: Tensor  # this process's rows of E = V W_k (n_local, k), not whitened
    n_samples: int  # over all processes
    n_params: int
    device: str


def reference_batches(lik: Likelihood, source: DataSource, batch_size: int, seed: int,
                      reducer: Reducer) -> tuple[Callable[[], Iterable[Batch]], int]:
    """The reference set of ``m`` and the Fisher information, and this process's size of it.

    Sampler draws are made in full (seeded) on every process and each keeps a disjoint slice, so the
    sums over processes are those of a single process.
    """
    if lik.reference == "sampler":
        draws = lik.draw_reference(seed)
        lo, hi = shard_bounds(len(draws), reducer.world_size, reducer.rank)
        if hi == lo:  # more processes than draws: this one only joins the sums
            return (lambda: iter(())), 0
        source = DataSource(draws[lo:hi], batch_size)
    return (lambda: iter(source)), source.n


def fisher_and_trace(op: LogProbOperator, lik: Likelihood, source: DataSource,
                     reference: tuple[Callable[[], Iterable[Batch]], int], params: dict[str, Any],
                     reducer: Reducer, tick: Tick, ckpt: FitCheckpoint | None,
                     state: FitState | None) -> tuple[FisherEstimate, float]:
    """The Fisher estimate and ``trace K = Σ ‖v(x)‖²`` over the fit data: from the checkpoint when it
    holds them, else computed (the trace comes free with the Fisher pass when the fit data are the
    reference set, else in one more per-example pass)."""
    batches, n_ref = reference
    fisher_passes = 2 if lik.centered else 1
    trace = None if state is None else state.trace
    if state is not None and state.has_fisher:
        tick(n_ref * fisher_passes)  # resumed: finished passes count as done
        fisher = FisherEstimate(state.fisher_mean.to(op.device), state.fisher_diag.to(op.device),
                                state.n_reference, params["fisher"], float(params["damping"]))
        if params["fisher"] == "kfac":  # the factors are not checkpointed: recomputed, deterministic
            fisher.kron = estimate_factors(op, batches, params["damping"], reducer)
        if trace is not None and lik.reference == "sampler":
            tick(source.n)  # the trace pass was finished before the crash
    else:
        fisher, sq = estimate_fisher(op, batches, centered=lik.centered, kind=params["fisher"],
                                     damping=params["damping"], reducer=reducer, tick=tick)
        if lik.reference != "sampler":  # the fit data are the reference set
            trace = fisher_trace(op, fisher, sq, batches(), reducer)
        if ckpt is not None:
            ckpt.save_fisher(fisher, trace)
    if trace is None:  # one more pass: ‖v(x)‖² summed over the fit data
        sq, _ = score_moment(op, iter(source), fisher.mean, 2, reducer, tick)
        trace = fisher_trace(op, fisher, sq, iter(source), reducer)
        if ckpt is not None:
            ckpt.save_fisher(fisher, trace)
    return fisher, trace


def checked_products(products: FisherVectorProducts) -> MatrixProducts:
    """The Fisher-vector products, each pass's output checked for non-finite values (cheap next to it)."""

    def times_directions(U: Tensor) -> Tensor:
        Y = products.matvec(U, consume=True)  # Ω and the power-iteration matrices are temporaries
        check_finite_rows(Y, "sketch product V Uᵀ")
        return Y

    def weighted_rows(A: Tensor) -> Tensor:
        Z = products.rmatvec(A)
        check_finite_columns(Z, products.op, "sketch product Qᵀ V")
        return Z

    return MatrixProducts(times_directions, weighted_rows)


def sketch_components(
    products: FisherVectorProducts, l: int, params: dict[str, Any], reducer: Reducer,
    ckpt: FitCheckpoint | None, state: FitState | None, trace: float,
) -> tuple[Tensor, Tensor]:
    """``(W_kᵀ, S_k)`` from the sketch chosen by ``params["sketch"]``, resuming from ``state``."""
    omega = Omega(l, products.op.P, params["seed"], products.acc_dtype, products.op.device)
    if params["sketch"] == "single_pass":

        def sweep(omega: Tensor, draw: Callable[[int], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
            Y, W, Psi = products.sweep(omega, draw)
            check_finite_rows(Y, "sketch product V Uᵀ")
            check_finite_columns(W, products.op, "sketch product Ψ V")
            products.tick(len(Y) * 2 * params["power_iters"])  # the progress total counts 2q + 2 passes
            return Y, W, Psi

        B = single_pass_sketch(sweep, omega, reducer)
    else:
        resume, save = None, None
        if ckpt is not None:
            if state is not None and state.sketch is not None:
                resume = (state.sketch_passes, state.sketch.to(products.op.device))

            def save(passes: int, M: Tensor) -> None:
                ckpt.save_sketch(products.fisher, trace, passes, M)

        B = range_sketch(checked_products(products), omega, params["power_iters"], reducer=reducer,
                         resume=resume, save=save)
    return top_singular(B, params["rank"])


def fit_lowrank(lik: Likelihood, op: LogProbOperator, source: DataSource, params: dict[str, Any],
                checkpoint: str | os.PathLike | None = None) -> FitResult:
    """Fit the low-rank NFK of ``lik`` on ``source`` (this process's shard) with the estimator's ``params``.

    See :meth:`nfk_nb.LowRankNFK.fit_transform` for ``checkpoint``.
    """
    reducer = get_reducer()
    n_total, P, rank = reducer.count(source.n), op.P, params["rank"]
    check_fit_size(lik, n_total)
    if rank > min(n_total, P):
        raise NFKError(f"rank={rank} is larger than min(N, P) = min({n_total}, {P}); use rank <= "
                       f"{min(n_total, P)}.")
    l = min(rank + params["oversample"], n_total, P)
    with eval_mode(lik.model):
        check_inputs(op, source)
        ckpt, state = None, None
        if checkpoint is not None:
            identity = fit_identity(params, lik, op, source, n_total, reducer)
            ckpt = FitCheckpoint(checkpoint, identity, reducer.rank, reducer.world_size)
            state = ckpt.resume(reducer)
            ckpt.watch_data(source, state)  # all of the data, digested on the first full pass
        reference = reference_batches(lik, source, params["batch_size"], params["seed"], reducer)
        total = reference[1] * (2 if lik.centered else 1) + source.n * (
            (lik.reference == "sampler") + 2 * params["power_iters"] + 3)
        bar = make_bar(total, "NFK fit", params["progress"])
        try:
            fisher, trace = fisher_and_trace(op, lik, source, reference, params, reducer, bar.update,
                                             ckpt, state)
            check_trace(trace, n_total)
            check_cancellation(fisher, op.dtype)  # centring in this dtype would cancel: refit in float64
            products = FisherVectorProducts(op, lambda: iter(source), fisher, reducer, bar.update)
            if state is not None and state.sketch is not None:
                bar.update(source.n * state.sketch_passes)  # resumed: finished passes count as done
            passes = 2 * params["power_iters"] + 2
            if (params["sketch"] == "power" and ckpt is None and reducer.world_size == 1
                    and gram_is_cheaper(op, params["fisher"], n_total, l, rank, passes,
                                        op.to_batch(source.first()))):
                # identity / KFAC metric: the exact kernel layer by layer, then its eigenpairs (gram.py)
                Wt, S, embedding = gram_fit(op, source, fisher, products, rank, l, params["power_iters"],
                                            params["seed"])
                bar.update(source.n * passes)
            else:
                Wt, S = sketch_components(products, l, params, reducer, ckpt, state, trace)
                embedding = products.matvec(Wt)
            check_finite_rows(embedding, "embedding")
            check_consistency(products, source, Wt, S, embedding, trace, reducer)  # the post-fit seam
        finally:
            bar.close()
            getattr(op, "clear_cache", lambda: None)()
    if ckpt is not None:
        ckpt.remove()
    return FitResult(fisher, trace, Wt.cpu(), S.cpu(), embedding, n_total, P, str(op.device))
