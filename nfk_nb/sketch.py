"""Randomised SVD of a matrix known only through its products: free functions, no model inside.

Halko, Martinsson & Tropp (2011), Algorithm 4.4, and the single-pass sketch of Tropp, Yurtsever, Udell
& Cevher (2017), over any :class:`MatrixProducts` of an n×P matrix ``V`` (rows may be sharded over
processes: a :class:`~nfk_nb.distributed.Reducer` gathers the small n×l sketch for its QR). With
``l = rank + oversample`` columns::

    Y = V Ωᵀ                        Ω: l×P Gaussian from a generator seeded with ``seed``
    repeat power_iters times:  Z = orth(Qᵀ V),  Y = V Zᵀ      (Q = orth(Y))
    B = Qᵀ V  (l×P),   B = Ũ S Wᵀ   (thin SVD; each row of Wᵀ gets its largest entry positive)

:func:`range_sketch` returns ``B`` (2q + 2 passes), :func:`single_pass_sketch` an estimate of it from
one sweep, and :func:`top_singular` its top ``rank`` singular values and right singular vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .distributed import Reducer


class MatrixProducts(NamedTuple):
    """The two products of an n×P matrix ``V`` the sketches need (n may be this process's rows).

    ``times_directions(U)`` is ``V Uᵀ`` for ``U`` (k×P), shape (n, k); ``weighted_rows(A)`` is
    ``Aᵀ V`` for ``A`` (n×k), shape (k, P), summed over processes.
    """

    times_directions: Callable[[Tensor], Tensor]
    weighted_rows: Callable[[Tensor], Tensor]

    @classmethod
    def dense(cls, V: Tensor) -> MatrixProducts:
        """The products of an explicit matrix (for tests and small problems)."""
        return cls(lambda U: V @ U.T.to(V), lambda A: A.T.to(V) @ V)


def orth(Y: Tensor) -> Tensor:
    """Orthonormal basis of the columns of ``Y`` (reduced QR)."""
    return torch.linalg.qr(Y, mode="reduced")[0]


# Columns per block when the rows of an l×P matrix are orthonormalised in place.
ORTH_BLOCK = 1 << 16


def orth_rows_(Z: Tensor) -> Tensor:
    """Orthonormalise the rows of a wide ``Z`` (l×P, l ≪ P) in place; returns ``Z``.

    CholeskyQR2 with a float64 Gram matrix: ``Z Zᵀ = L Lᵀ``, ``Z ← L⁻¹ Z``, twice, block by block
    of columns. ``qr(Z.T)`` needed two more l×P buffers (its working copy and Q): with the sketch of a
    ResNet-18-size model that is 2.2 GB. The rows span the same space as QR's (only that matters
    between power iterations); when the Gram matrix is not positive definite (rank-deficient ``Z``),
    Householder QR is used after all.
    """
    for _ in range(2):
        G = torch.zeros(len(Z), len(Z), dtype=torch.float64, device=Z.device)
        for start in range(0, Z.shape[1], ORTH_BLOCK):
            block = Z[:, start : start + ORTH_BLOCK].double()
            G += block @ block.T
        L, info = torch.linalg.cholesky_ex(G)
        if int(info) != 0:
            return Z.copy_(orth(Z.T).T)
        for start in range(0, Z.shape[1], ORTH_BLOCK):
            block = Z[:, start : start + ORTH_BLOCK]
            block.copy_(torch.linalg.solve_triangular(L, block.double(), upper=False))
    return Z


# Columns of Ω are drawn this many elements at a time: the draw never holds more than one chunk
# besides Ω itself (drawing l×P in float64 and casting held 3× Ω's float32 size: 3.55 GB RSS for
# l = 26, P = 11.2M).
OMEGA_CHUNK = 1 << 22


def gaussian_test_matrix(rows: int, cols: int, seed: int, dtype: torch.dtype,
                         device: torch.device | str = "cpu") -> Tensor:
    """A seeded ``rows × cols`` standard Gaussian matrix in ``dtype`` on ``device``, drawn in chunks.

    Drawn in float32 on the CPU generator, chunk by chunk of columns, and copied into the output:
    the values depend only on the seed and the shape (the same for float32 and float64 fits, on
    every device and process), and the draw holds one chunk besides the output.
    """
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty(rows, cols, dtype=dtype, device=device)
    step = max(1, OMEGA_CHUNK // max(rows, 1))
    for start in range(0, cols, step):
        stop = min(cols, start + step)
        out[:, start:stop] = torch.randn(rows, stop - start, generator=gen, dtype=torch.float32)
    return out


def svd_flip(Wt: Tensor) -> Tensor:
    """``Wt`` with each row's sign flipped so its largest-magnitude entry is positive (sklearn's rule)."""
    idx = Wt.abs().argmax(dim=1)
    signs = torch.sign(Wt[torch.arange(len(Wt)), idx])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (Wt * signs[:, None]).contiguous()  # row-major, as it is saved and loaded


class Omega(NamedTuple):
    """The Gaussian test matrix Ω (l×P) of a sketch, drawn when it is needed: its seed, size and where."""

    l: int
    P: int
    seed: int
    dtype: torch.dtype = torch.float64
    device: torch.device | str = "cpu"

    def draw(self) -> Tensor:
        return gaussian_test_matrix(self.l, self.P, self.seed, self.dtype, self.device)


def _orth_rows(Y: Tensor, reducer: Reducer) -> Tensor:
    """This process's rows of ``orth`` of the full (gathered) ``Y``."""
    return reducer.local_rows(orth(reducer.gather_rows(Y)), len(Y))


def range_sketch(products: MatrixProducts, omega: Omega, power_iters: int, *,
                 reducer: Reducer | None = None, resume: tuple[int, Tensor] | None = None,
                 save: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """``B = Qᵀ V`` (l×P) from the range finder with ``power_iters`` power iterations.

    The ``2 * power_iters + 2`` passes alternate ``Y = V Uᵀ`` (even) and ``Z = Aᵀ V`` (odd).

    Parameters
    ----------
    products : MatrixProducts
    omega : Omega
        Ω (l×P): ``l`` is the sketch size, ``P`` the number of columns of ``V``; drawn in its dtype
        (the products set the dtype of everything after).
    power_iters : int
    reducer : Reducer, optional
        Gathers the rows of ``Y`` over processes for its QR.
    resume : (int, Tensor), optional
        ``(finished passes, latest matrix)`` from a checkpoint.
    save : callable, optional
        ``save(finished passes, matrix)``, called after each pass.
    """
    reducer = reducer or Reducer()
    n_passes = 2 * power_iters + 2
    done, M = resume if resume is not None else (0, None)
    for j in range(done, n_passes):
        if j == 0:
            M = products.times_directions(omega.draw())  # Y = V Ωᵀ
        elif j % 2 == 1:
            # (l, P); the last one is B = Qᵀ V. Held by ``M`` alone: a second name kept the previous
            # pass's l×P matrix alive through the next ``Aᵀ V`` (1.1 GB at ResNet-18 size).
            M = products.weighted_rows(_orth_rows(M, reducer))
            if j < n_passes - 1:
                M = orth_rows_(M)
        else:
            M = products.times_directions(M)  # Y = V Zᵀ
        if save is not None:
            save(j + 1, M)
    return M


Sweep = Callable[[Tensor, Callable[[int], Tensor]], tuple[Tensor, Tensor, Tensor]]


def single_pass_sketch(sweep: Sweep, omega: Omega, reducer: Reducer | None = None) -> Tensor:
    """An estimate of ``Qᵀ V`` (l×P) from one sweep that computes ``Y = V Ωᵀ`` and ``W = Ψ V`` together.

    With ``Q = orth(Y)`` and ``m = 2l + 1`` co-range rows, ``X = (Ψ Q)⁺ W`` (Tropp et al. 2017).

    Parameters
    ----------
    sweep : callable
        ``sweep(Ω, draw) -> (Y, W, Ψᵀ)``: ``draw(b)`` gives the next ``b`` rows of ``Ψᵀ`` (b×m), one
        per row of ``V``; ``W`` is summed over processes, ``Ψᵀ`` holds the rows that were drawn.
    omega, reducer
        As in :func:`range_sketch`. Each process draws independent rows of ``Ψ``.
    """
    reducer = reducer or Reducer()
    m = 2 * omega.l + 1  # co-range size, Tropp et al.'s recommendation
    psi_gen = torch.Generator().manual_seed(int(omega.seed) + 1 + 7919 * reducer.rank)

    def draw(b: int) -> Tensor:
        return torch.randn(b, m, generator=psi_gen, dtype=torch.float64)

    Y, W, Psi = sweep(omega.draw(), draw)
    Q = _orth_rows(Y, reducer)
    PsiQ = reducer.sum(Psi.to(Q).T @ Q)  # (m, l)
    Q2, R2 = torch.linalg.qr(PsiQ)  # least squares through the small QR: W stays where it is
    return torch.linalg.solve_triangular(R2, Q2.T @ W, upper=True)


def top_singular(B: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The top ``rank`` right singular vectors (rows, signs fixed by :func:`svd_flip`) and values of ``B``.

    For a wide ``B`` (l×P, l ≪ P) from the float64 Gram matrix ``B Bᵀ = U S² Uᵀ`` and
    ``W_kᵀ = S_k⁻¹ U_kᵀ B``, block by block: only the k×P result is allocated, where the thin SVD
    of ``B`` held about two more l×P buffers (2.2 GB for a ResNet-18-size sketch). When a wanted
    singular value is below 1e-6 of the largest (its vector would be rounding), the thin SVD is used.
    """
    l, P = B.shape
    if l > P:
        _, S, Wt = torch.linalg.svd(B, full_matrices=False)
        return svd_flip(Wt[:rank]), S[:rank]
    G = torch.zeros(l, l, dtype=torch.float64, device=B.device)
    for start in range(0, P, ORTH_BLOCK):
        block = B[:, start : start + ORTH_BLOCK].double()
        G += block @ block.T
    evals, U = torch.linalg.eigh(G)
    S = evals.flip(0)[:rank].clamp_min(0).sqrt()
    if not bool(S[-1] > 1e-6 * S[0]):
        _, S, Wt = torch.linalg.svd(B, full_matrices=False)
        return svd_flip(Wt[:rank]), S[:rank]
    A = (U.flip(1)[:, :rank] / S).T  # (k, l): W_kᵀ = A B
    Wt = torch.empty(rank, P, dtype=B.dtype, device=B.device)
    for start in range(0, P, ORTH_BLOCK):
        Wt[:, start : start + ORTH_BLOCK] = A @ B[:, start : start + ORTH_BLOCK].double()
    # svd_flip's rule in place (the largest-magnitude entry of each row positive): no k×P temporaries
    largest_positive = Wt.amax(1) >= -Wt.amin(1)
    Wt.mul_(torch.where(largest_positive, 1.0, -1.0).to(Wt)[:, None])
    return Wt, S.to(B.dtype)


def randomized_svd(
    products: MatrixProducts,
    P: int,
    rank: int,
    *,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    n: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Top ``rank`` right singular vectors (k×P) and singular values of ``V`` (n×P) from its products.

    ``l = min(rank + oversample, n, P)`` columns (``n`` defaults to P).
    """
    l = min(rank + oversample, P if n is None else n, P)
    B = range_sketch(products, Omega(l, P, seed, dtype), power_iters)
    return top_singular(B, rank)
