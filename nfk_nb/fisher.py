"""Fisher information estimators and the Fisher-vector scaling ``I^{-1/2}``.

Scores are ``s(x) = g(x) - m`` with ``g = ∇_θ log p̃`` and ``m`` the partition term (zero for
normalised families). On the reference set R (sampler draws or the fit data):

* ``m = mean_{x∈R} g(x)``                               (first pass, only when centred)
* ``I_diag = mean_{x∈R} s(x)²``                         (second pass)
* ``"diagonal"``: ``I^{-1/2} = (I_diag + damping · mean(I_diag))^{-1/2}``; a coordinate with zero
  damped information gets scale 0 (it carries nothing), never NaN.
* ``"identity"``: ``I = 1`` (the plain gradient kernel).
* ``"kfac"``: Kronecker factors ``A ⊗ G`` per ``nn.Linear`` / ``nn.Conv`` layer (``kfac.py``), the
  damped diagonal for every other parameter.

Damping is *relative* to the mean diagonal: with an absolute epsilon, coordinates that carry almost
no information on the reference set dominate the kernel (docs/design.md, "Choices that matter").
Sums are over examples so that a data shard per process plus a sum over processes gives the same
answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .data_checks import global_index
from .distributed import Reducer
from .errors import NFKError
from .functional import LogProbOperator
from .likelihoods import Batch
from .options import DEFAULT_DAMPING, FISHER_KINDS, MAX_DAMPING, check_fisher  # noqa: F401 - re-exported


@dataclass
class FisherEstimate:
    """Partition term, Fisher diagonal and the resulting scaling, all of length ``P``."""

    mean: Tensor
    diag: Tensor
    n_reference: int
    kind: str = "diagonal"
    damping: float = DEFAULT_DAMPING
    kron: Any = None  # kfac.KroneckerFactors for fisher="kfac"

    def whiten_(self, M: Tensor, space: Any) -> Tensor:
        """``M ← M I^{-1/2}`` in place for rows ``M`` (n, P) laid out as ``space``; returns ``M``.

        The diagonal scaling, and for ``"kfac"`` the Kronecker factors on each layer's block.
        """
        blocks = None if self.kron is None else self.kron.blocks(M, space.names, space.numels)
        if self.kind != "identity":  # identity: scale 1 (except kfac's layer blocks, set below)
            M *= self._scale_for(M)
        if blocks is not None:
            self.kron.whiten_(M, space.names, space.numels, blocks)
        return M

    def _scale_for(self, M: Tensor) -> Tensor:
        """:attr:`scale` in ``M``'s dtype and device, computed once per estimate (it is P long and
        ``whiten_`` runs once per product pass: recomputing it took ~0.3 s a pass at P = 11.2M)."""
        key = (self.diag.data_ptr(), self.diag._version, self.kind, self.damping, M.dtype, M.device)
        cached = self.__dict__.get("_scale_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.scale.to(M))
            self.__dict__["_scale_cache"] = cached
        return cached[1]

    @property
    def scale(self) -> Tensor:
        """``I^{-1/2}`` as a vector (the diagonal of the whitening)."""
        if self.kind == "identity":
            return torch.ones_like(self.diag)
        damped = self.diag + self.damping * self.diag.mean()
        safe = torch.where(damped > 0, damped, torch.ones_like(damped))
        return torch.where(damped > 0, safe.rsqrt(), torch.zeros_like(damped))


def _finite_or_raise(g: Tensor, op: LogProbOperator, first_index: int) -> None:
    bad = ~torch.isfinite(g)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise NFKError(
            f"The score of example {global_index(first_index + row)} is not finite in parameter "
            f"'{op.space.name_at(col)}'; check the model and the data for overflow."
        )


def _moment_dtype(op: LogProbOperator) -> torch.dtype:
    """float64 for the moments, except on devices without it (Apple MPS)."""
    return torch.float32 if op.device.type == "mps" else torch.float64


def _moment_float64(op: LogProbOperator, prepared: Batch, mean: Tensor | None, power: int,
                    first_index: int) -> Tensor:
    """The moment of one batch from float64 per-example gradients, naming an example that breaks it."""
    g = op.per_example_grads(prepared).to(_moment_dtype(op))
    _finite_or_raise(g, op, first_index)
    d = (g if mean is None else g - mean.to(g)) ** power
    bad = ~torch.isfinite(d).all(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        if bool(torch.isfinite(g[row] ** power).all()):  # its own score is fine: the mean is not
            raise NFKError(
                f"The centred scores overflow float64 moments from example {global_index(first_index + row)} "
                f"on: the mean score is dominated by an example with extreme values; check the data."
            )
        raise NFKError(
            f"The score of example {global_index(first_index + row)} is too large for even float64 "
            f"moments; check the model and the data for extreme values."
        )
    return d.sum(0)


def score_moment(
    op: LogProbOperator,
    batches: Iterable[Batch],
    mean: Tensor | None,
    power: int,
    reducer: Reducer,
    tick: Callable[[int], None] = lambda n: None,
) -> tuple[Tensor, int]:
    """``Σ_x (g(x) - mean)^power`` over the batches and all processes, with the example count.

    Sums are float64: one extreme but finite example (an input of 1e20 in float32) must not overflow
    the moments into ``inf`` and turn every Fisher vector into zero.
    """
    total = torch.zeros(op.P, dtype=_moment_dtype(op), device=op.device)
    n = 0
    for batch in batches:
        prepared = op.to_batch(batch)
        s = op.score_moment(prepared, mean, power)  # never the flat B×P copy (functional.py)
        if not bool(torch.isfinite(s).all()):  # overflow, or a bad gradient: redo it in float64
            s = _moment_float64(op, prepared, mean, power, n)
        total += s
        b = len(prepared[0])
        n += b
        tick(b)
    return reducer.sum(total), reducer.count(n)


def estimate_fisher(
    op: LogProbOperator,
    reference: Callable[[], Iterable[Batch]],
    *,
    centered: bool,
    kind: str = "diagonal",
    damping: float = DEFAULT_DAMPING,
    reducer: Reducer | None = None,
    tick: Callable[[int], None] = lambda n: None,
) -> tuple[FisherEstimate, Tensor]:
    """Estimate ``m`` and the Fisher diagonal on a reference set.

    Parameters
    ----------
    op : LogProbOperator
    reference : callable
        Returns a fresh iterable of batches (called once per pass).
    centered : bool
        Whether ``m`` is estimated (else ``m = 0``).
    kind, damping
        See the module docstring.
    reducer : Reducer, optional
        Sums over processes.

    Returns
    -------
    FisherEstimate, Tensor
        The estimate, and ``Σ_{x∈R} s(x)²`` (the per-coordinate sum, used for ``trace K``).
    """
    check_fisher(kind, damping)
    reducer = reducer or Reducer()
    acc_dtype = op.acc_dtype
    mean = torch.zeros(op.P, dtype=acc_dtype, device=op.device)
    if centered:
        total, n = score_moment(op, reference(), None, 1, reducer, tick)
        mean = (total / n).to(acc_dtype)
    sq, n = score_moment(op, reference(), mean if centered else None, 2, reducer, tick)
    kron = None
    if kind == "kfac":
        from .kfac import estimate_factors

        kron = estimate_factors(op, reference, damping, reducer)
    return FisherEstimate(mean, sq / n, n, kind, float(damping), kron), sq
