"""The two matrix-free products with the N×P Fisher-vector matrix ``V = (G - 1 mᵀ) D``.

``D = I^{-1/2}`` (a diagonal, see ``fisher.py``). Over a data source, batch by batch:

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
from .fisher import FisherEstimate, accumulation_dtype
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
        self.acc_dtype = accumulation_dtype(op.dtype)
        self.scale = fisher.scale.to(op.device, self.acc_dtype)
        self.mean = fisher.mean.to(op.device, self.acc_dtype)

    def matvec(self, U: Tensor) -> Tensor:
        """``V Uᵀ`` for ``U`` of shape (k, P); returns (n_local, k)."""
        T = U.to(self.op.device, self.acc_dtype) * self.scale
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
            total += self.op.vjp(self.op.to_batch(batch), a.to(self.op.dtype)).to(self.acc_dtype)
            start += b
            self.tick(b)
        total -= A.sum(0)[:, None] * self.mean[None, :]
        return self.reducer.sum(total * self.scale)
