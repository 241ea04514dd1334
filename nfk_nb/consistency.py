"""A fit checks its own numerics before it returns: accurate, recomputed in float64, or refused.

Fisher vectors are centred scores ``v(x) = (g(x) - m) ⊙ D``. When the scores barely vary across
examples (``‖s‖ ≪ ‖g‖``: near-constant outputs, e.g. an untrained MobileNet whose BatchNorm statistics
squash every input to almost the same logits, or inputs that differ at the 1e-7 level), every
floating-point route to ``v`` subtracts two nearly equal numbers: the per-example gradients
themselves carry an error ``eps·‖g‖``, so no reordering of the products can recover ``s`` in
float32. Measured on such a model (tests/test_numerics.py), the float32 low-rank error over the
optimum grows with the *cancellation factor* ``c = ‖m ⊙ D‖ / rms_x ‖s(x) ⊙ D‖``:
c = 2e2 → 1.0000, 2e4 → 1.00001, 2e5 → 1.0005, 1.2e6 → 1.065, 2.3e6 → 1.83, 1.7e8 → 10.6 with
``explained_variance_ratio_.sum() = 2358``. The remedy is precision, so:

1. :func:`check_cancellation` (after the Fisher pass, before any sketch pass): ``c · eps(dtype)`` above
   :data:`CANCELLATION_LIMIT` asks for float64;
2. :func:`check_consistency` (after the embedding pass): ``Σ S² ≤ trace K`` and ``Σ ‖e(x)‖² ≤ trace K``
   within :data:`TRACE_TOL`, and the first :data:`N_CHECK_ROWS` rows of the embedding against the
   same rows recomputed from exact float64 per-example gradients (relative to ``‖v(x)‖``, within
   :data:`ROW_TOL`);
3. :func:`fit_with_precision_guard` turns a failure of either into one warning and a float64 refit,
   or, when the fit already ran in float64, an ``NFKError`` naming the cause and the fix;
   :func:`precise_enough` does the same for the exact path (``fisher_vectors``, ``fisher_kernel``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from .batch import slice_batch
from .errors import NFKError

T = TypeVar("T")

# c·eps above which the products are recomputed in float64: at c·eps = 2e-2 (float32, c = 2e5) the
# low-rank error was 1.0005× the optimum; 2e-3 leaves a 10× margin and costs nothing on models
# whose scores vary (digits MLP and GAN discriminator: c ≈ 1-200, i.e. c·eps < 3e-5).
CANCELLATION_LIMIT = 2e-3
# Σ S² and Σ ‖e‖² may exceed trace K only by rounding.
TRACE_TOL = 1e-3
# Embedding rows from the products vs exact float64 gradients, relative to ‖v(x)‖: float32 fits of
# healthy models agree to ~1e-6.
ROW_TOL = 1e-3
N_CHECK_ROWS = 4
# Reduced precision asked for (dtype=torch.bfloat16 / float16) is held to its own rounding: errors up
# to this many eps pass (bf16 rows of a small transformer were 0.45 eps off the float64 ones).
REDUCED_EPS = 2.0


def tolerance(dtype: torch.dtype, base: float) -> float:
    """``base``, or ``REDUCED_EPS · eps`` for dtypes coarser than that (bf16, fp16 on request)."""
    return max(base, REDUCED_EPS * torch.finfo(dtype).eps)


def next_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision a failed fit is recomputed in: float32 after bf16/fp16, else float64."""
    return torch.float32 if torch.finfo(dtype).eps > torch.finfo(torch.float32).eps else torch.float64


class PrecisionWarning(UserWarning):
    """A fit was recomputed in float64 because the compute dtype could not resolve the scores."""


class InconsistentFit(NFKError):
    """A fit failed its numerical self-check; ``cause`` says which check and by how much."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def cancellation_factor(mean: Tensor, diag: Tensor, scale: Tensor) -> float:
    """``‖m ⊙ D‖ / rms_x ‖s(x) ⊙ D‖``: how much larger the raw scores are than their variation."""
    d2 = scale.double() ** 2
    signal = float((diag.double() * d2).sum())
    offset = float((mean.double() ** 2 * d2).sum())
    if offset == 0.0:
        return 0.0
    return float("inf") if signal <= 0.0 else (offset / signal) ** 0.5


def check_cancellation(fisher, dtype: torch.dtype) -> float:
    """Raise :class:`InconsistentFit` when centring in ``dtype`` would cancel; return the factor."""
    c = cancellation_factor(fisher.mean, fisher.diag, fisher.scale)
    if c * torch.finfo(dtype).eps > tolerance(dtype, CANCELLATION_LIMIT):
        raise InconsistentFit(
            f"the scores barely vary across examples (‖∇log p̃‖ is {c:.2g}× their spread, "
            f"cancellation factor)"
        )
    return c


def check_consistency(products, source, Wt: Tensor, S: Tensor, embedding: Tensor, trace: float,
                      reducer) -> None:
    """Check a finished fit against ``trace K`` and against exact per-example gradients.

    Parameters
    ----------
    products : FisherVectorProducts
        The products the fit used (operator, Fisher estimate).
    source : DataSource
        This process's fit data.
    Wt, S : Tensor
        Components ``(k, P)`` and singular values ``(k,)``.
    embedding : Tensor
        Un-whitened embedding of this process's rows, ``(n_local, k)``.
    trace : float
        ``trace K`` over all processes.
    reducer : Reducer
        Sums over processes: every process takes the same decision.

    Raises
    ------
    InconsistentFit
        Naming the failed check.
    """
    acc = torch.float64
    limit = trace * (1 + TRACE_TOL) + 1e-300
    s2 = float((S.to(acc) ** 2).sum())
    e2 = float(reducer.sum(embedding.to(acc).square().sum().reshape(1))[0])
    row_err = _row_error(products, source, Wt, embedding)
    row_tol = tolerance(products.op.dtype, ROW_TOL)
    failed = torch.tensor([float(row_err > row_tol)], dtype=acc, device=embedding.device)
    failed = float(reducer.sum(failed)[0]) > 0
    if s2 > limit:
        raise InconsistentFit(f"Σ S² is {s2 / trace:.4g}× trace K (at most 1 for a consistent fit)")
    if e2 > limit:
        raise InconsistentFit(f"Σ ‖e(x)‖² is {e2 / trace:.4g}× trace K (at most 1 for a consistent fit)")
    if failed:
        raise InconsistentFit(
            f"embedding rows differ from exact float64 per-example gradients by {row_err:.2g} of "
            f"‖v(x)‖ (tolerance {row_tol:g})"
        )


def _row_error(products, source, Wt: Tensor, embedding: Tensor) -> float:
    """Largest relative error of the first rows of ``embedding`` against ``Wt v(x)`` in float64."""
    if len(embedding) == 0:
        return 0.0
    from .functional import LogProbOperator

    op = products.op
    first = source.first()
    n = min(N_CHECK_ROWS, len(embedding), len(first[0]))
    batch = slice_batch(first, 0, n)
    # plain torch.func gradients (not the fit's own product path), in float64
    exact = LogProbOperator(op.lik, op.device, torch.float64)
    exact.loop_examples_like(op)  # the fallback found in the fit needs no second warning
    V = exact.per_example_grads(exact.to_batch(batch))
    V = products.fisher.whiten_(V.sub_(products.fisher.mean.to(V)), exact.space)
    # W_k v(x) block by block: a float64 copy of all of Wt would be 2× the k×P components
    want = torch.zeros(len(V), len(Wt), dtype=V.dtype, device=V.device)
    step = 1 << 16
    for start in range(0, V.shape[1], step):
        want += V[:, start : start + step] @ Wt[:, start : start + step].to(V).T
    got = embedding[:n].to(V)
    err = (got - want).norm(dim=1) / V.norm(dim=1).clamp_min(1e-300)
    return float(err.max())


def fit_with_precision_guard(fit: Callable[[torch.dtype | None], T], dtype: torch.dtype) -> T:
    """``fit(None)``; after an :class:`InconsistentFit`, one warning and a refit in more precision.

    The refit runs in float64, or in float32 when ``dtype`` was bfloat16 / float16 (asked for), and
    in float64 if that fails too.

    Parameters
    ----------
    fit : callable
        Runs the whole fit; its argument overrides the compute dtype (None: the default, which is
        ``dtype``; a higher precision for the refit).
    dtype : torch.dtype
        The compute dtype ``fit(None)`` uses.

    Raises
    ------
    NFKError
        The fit is inconsistent in float64 too: cause and fix.
    """
    current: torch.dtype | None = None
    while True:
        try:
            return fit(current)
        except InconsistentFit as exc:
            used = current or dtype
            if used == torch.float64:
                raise _refusal(exc) from None
            current = next_dtype(used)
            cost = "about twice the time on a CPU, more on most GPUs" if current == torch.float64 else (
                "float32 products")
            warnings.warn(
                f"nfk_nb: {exc.cause} in {_name(used)}; recomputing the fit in {_name(current)} "
                f"({cost}).",
                PrecisionWarning,
                stacklevel=4,
            )


def precise_enough(op, fisher, refit: Callable[[Any], Any]) -> tuple[Any, Any]:
    """For the exact path: ``(op, fisher)``, recomputed in more precision while centring would cancel.

    Parameters
    ----------
    op : LogProbOperator
        The operator the Fisher estimate was computed with.
    fisher : FisherEstimate
    refit : callable
        ``refit(new_op)`` returns the Fisher estimate computed with another operator.

    Raises
    ------
    NFKError
        The scores cancel even in float64.

    Notes
    -----
    The check needs the Fisher diagonal; the exact ``fisher="identity"`` path does not estimate it,
    so it is not checked there.
    """
    from .layerwise import make_operator

    if not bool(fisher.diag.any()):  # fisher="identity" on the exact path skips the second moment
        return op, fisher
    while True:
        try:
            check_cancellation(fisher, op.dtype)
            return op, fisher
        except InconsistentFit as exc:
            if op.dtype == torch.float64:
                raise _refusal(exc) from None
            higher = next_dtype(op.dtype)
            warnings.warn(f"nfk_nb: {exc.cause} in {_name(op.dtype)}; recomputing in {_name(higher)}.",
                          PrecisionWarning, stacklevel=3)
            op = make_operator(op.lik, op.device, higher, op.chunk_size)
            fisher = refit(op)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _refusal(exc: InconsistentFit) -> NFKError:
    return NFKError(
            f"The NFK cannot be computed accurately for this model and data: {exc.cause}, even in "
            f"float64. The model's scores hardly depend on the input (check that it is trained and "
            f"that BatchNorm running statistics are sensible), or use a score without a partition "
            f"term (e.g. Classifier(score='label'))."
    )
