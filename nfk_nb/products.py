"""The two matrix-free products with the N×P Fisher-vector matrix ``V = (G - 1 mᵀ) D``.

``D = I^{-1/2}`` (a diagonal, or per layer a Kronecker product for ``"kfac"``; see ``fisher.py``).
Over a data source, batch by batch:

* ``V Uᵀ`` for directions ``U`` (k×P): JVPs along ``D u`` minus ``mᵀ D u``          -> (n_local, k)
* ``Aᵀ V`` for weights ``A`` (n_local×k): VJPs of ``Σ a_i log p̃(x_i)`` minus
  ``(Σ a_i) mᵀ``, times ``D``, summed over processes                                 -> (k, P)

Neither ever forms ``V``: memory is O((N + P) k).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .distributed import Reducer
from .fisher import FisherEstimate
from .functional import LogProbOperator
from .likelihoods import Batch


class FisherVectorProducts:
    """``V Uᵀ`` and ``Aᵀ V`` for one data source (this process's shard)."""

    def __init__(
        self,
        op: LogProbOperator,
        batches: Callable[[], Iterable[Batch]],
        fisher: FisherEstimate,
        reducer: Reducer | None = None,
        tick: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.op, self.batches, self.fisher = op, batches, fisher
        self.reducer = reducer or Reducer()
        self.tick = tick
        self.acc_dtype = op.acc_dtype
        self.mean = fisher.mean.to(op.device, self.acc_dtype)

    def matvec(self, U: Tensor, consume: bool = False) -> Tensor:
        """``V Uᵀ`` for ``U`` of shape (k, P); returns (n_local, k).

        ``consume=True`` lets the product overwrite ``U`` (the sketch's Ω and power-iteration
        matrices are temporaries): it saves one ``k × P`` copy, the size of the whole sketch.
        """
        T = self.fisher.whiten_(U.to(self.op.device, self.acc_dtype, copy=not consume), self.op.space)
        offset = T @ self.mean  # (k,)  mᵀ D u for each direction
        T = T.to(self.op.dtype)
        rows = []
        for batch in self.batches():
            y = self.op.jvp(self.op.to_batch(batch), T).to(self.acc_dtype)
            rows.append(y - offset)
            self.tick(len(y))
        return torch.cat(rows)

    def rmatvec(self, A: Tensor) -> Tensor:
        """``Aᵀ V`` for ``A`` of shape (n_local, k); returns (k, P), summed over processes."""
        A = A.to(self.op.device, self.acc_dtype)
        total = torch.zeros(A.shape[1], self.op.P, dtype=self.acc_dtype, device=self.op.device)
        start = 0
        for batch in self.batches():
            b = len(batch[0])
            a = A[start : start + b]
            self.op.vjp(self.op.to_batch(batch), a.to(self.op.dtype), out=total)
            start += b
            self.tick(b)
        return self._finish_rows(total, A.sum(0))

    def _finish_rows(self, total: Tensor, weight_sums: Tensor) -> Tensor:
        """``(Σ a_i g_i - (Σ a_i) m) ⊙ D``, summed over processes (in place on ``total``)."""
        total.addr_(weight_sums, self.mean, alpha=-1)
        self.fisher.whiten_(total, self.op.space)
        return self.reducer.sum(total)

    def sweep(self, U: Tensor, draw: Callable[[int], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``V Uᵀ`` and ``Ψ V`` in one pass over the data (the single-pass sketch).

        Parameters
        ----------
        U : Tensor (k, P)
            Directions of the range sketch.
        draw : callable
            ``draw(b)`` returns the next ``b`` rows of ``Ψᵀ`` (b, m), one row per local example.

        Returns
        -------
        Y : Tensor (n_local, k)
            ``V Uᵀ``.
        W : Tensor (m, P)
            ``Ψ V``, summed over processes.
        Psi : Tensor (n_local, m)
            The rows of ``Ψᵀ`` that were drawn (needed to solve for the core matrix).
        """
        T = self.fisher.whiten_(U.to(self.op.device, self.acc_dtype, copy=True), self.op.space)
        offset = T @ self.mean
        T = T.to(self.op.dtype)
        dev, acc = self.op.device, self.acc_dtype
        psi = [draw(0).to(dev, acc)]  # (0, m): a shard without examples still joins the sums
        rows = [torch.zeros(0, len(U), dtype=acc, device=dev)]
        total = torch.zeros(psi[0].shape[1], self.op.P, dtype=acc, device=dev)
        for batch in self.batches():
            b = len(batch[0])
            moved = self.op.to_batch(batch)  # loaded and moved once for both products
            rows.append(self.op.jvp(moved, T).to(acc) - offset)
            self.tick(b)
            a = draw(b).to(dev, acc)
            self.op.vjp(moved, a.to(self.op.dtype), out=total)
            psi.append(a)
            self.tick(b)
        Psi = torch.cat(psi)
        return torch.cat(rows), self._finish_rows(total, Psi.sum(0)), Psi
