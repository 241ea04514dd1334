"""``nfk_nb.sketch`` on dense matrices, with no model: the randomised SVD against the exact SVD."""

from __future__ import annotations

import pytest
import torch

from nfk_nb.sketch import (
    MatrixProducts,
    Omega,
    gaussian_test_matrix,
    randomized_svd,
    range_sketch,
    single_pass_sketch,
    svd_flip,
    top_singular,
)

pytestmark = pytest.mark.usefixtures("float64_default")


def decaying(n: int = 80, P: int = 50, decay: float = 0.7, seed: int = 0) -> torch.Tensor:
    """An n×P matrix with singular values decay**i and random singular vectors."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, P, generator=g))[0]
    W = torch.linalg.qr(torch.randn(P, P, generator=g))[0]
    return U @ torch.diag(decay ** torch.arange(P, dtype=torch.float64)) @ W.T


def subspace_error(Wt: torch.Tensor, Wt_exact: torch.Tensor) -> float:
    """Largest sine of the principal angles between the row spaces of two k×P orthonormal sets."""
    s = torch.linalg.svdvals(Wt @ Wt_exact.T)
    return float((1 - s.min() ** 2).clamp_min(0).sqrt())


def test_range_finder_matches_the_exact_svd_when_the_sketch_covers_the_range():
    V = decaying(P=20)
    _, S_exact, Wt_exact = torch.linalg.svd(V, full_matrices=False)
    Wt, S = randomized_svd(MatrixProducts.dense(V), 20, 5, oversample=15, power_iters=0, n=len(V))
    torch.testing.assert_close(S, S_exact[:5], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(Wt, svd_flip(Wt_exact[:5]), rtol=1e-8, atol=1e-10)


def test_power_iterations_improve_a_small_sketch():
    V = decaying(decay=0.9, seed=1)
    _, S_exact, Wt_exact = torch.linalg.svd(V, full_matrices=False)
    errors = []
    for q in (0, 1, 3):
        Wt, S = randomized_svd(MatrixProducts.dense(V), V.shape[1], 5, oversample=2, power_iters=q, seed=4)
        errors.append((float((S - S_exact[:5]).abs().max()), subspace_error(Wt, Wt_exact[:5])))
    (s0, w0), (s1, w1), (s3, w3) = errors
    assert s3 < s1 < s0 and w3 < w1 < w0  # each power iteration sharpens both


def test_range_sketch_resumes_to_the_same_result_and_saves_every_pass():
    V = decaying(seed=2)
    products = MatrixProducts.dense(V)
    saved = []
    omega = Omega(8, V.shape[1], seed=3)
    B = range_sketch(products, omega, 2, save=lambda j, M: saved.append((j, M)))
    assert [j for j, _ in saved] == [1, 2, 3, 4, 5, 6] and torch.equal(saved[-1][1], B)
    resumed = range_sketch(products, omega, 2, resume=saved[2])
    assert torch.equal(resumed, B)


def test_single_pass_sketch_is_exact_for_a_matrix_of_low_rank():
    g = torch.Generator().manual_seed(5)
    V = torch.randn(60, 4, generator=g) @ torch.randn(4, 30, generator=g)  # rank 4
    _, S_exact, Wt_exact = torch.linalg.svd(V, full_matrices=False)

    def sweep(omega, draw):
        psi = draw(len(V))
        return V @ omega.T, psi.T @ V, psi

    Wt, S = top_singular(single_pass_sketch(sweep, Omega(6, 30, seed=0)), 4)
    torch.testing.assert_close(S, S_exact[:4], rtol=1e-9, atol=1e-10)
    assert subspace_error(Wt, Wt_exact[:4]) < 1e-6


def test_single_pass_sketch_is_close_on_a_decaying_spectrum():
    V = decaying(decay=0.5, seed=6)
    _, S_exact, _ = torch.linalg.svd(V, full_matrices=False)

    def sweep(omega, draw):
        psi = draw(len(V))
        return V @ omega.T, psi.T @ V, psi

    _, S = top_singular(single_pass_sketch(sweep, Omega(12, V.shape[1], seed=1)), 3)
    torch.testing.assert_close(S, S_exact[:3], rtol=1e-3, atol=0)


def test_svd_flip_is_deterministic_and_keeps_the_rows():
    g = torch.Generator().manual_seed(7)
    Wt = torch.randn(4, 9, generator=g)
    flipped = svd_flip(Wt)
    top = flipped.gather(1, flipped.abs().argmax(1, keepdim=True))
    assert (top > 0).all()
    torch.testing.assert_close(flipped.abs(), Wt.abs())
    assert torch.equal(svd_flip(-Wt), flipped) and torch.equal(svd_flip(flipped), flipped)
    assert flipped.is_contiguous()


def test_same_seed_same_directions_other_seed_others():
    a = gaussian_test_matrix(3, 7, seed=11, dtype=torch.float32)
    assert a.dtype == torch.float32
    assert torch.equal(a, gaussian_test_matrix(3, 7, seed=11, dtype=torch.float32))
    assert not torch.equal(a, gaussian_test_matrix(3, 7, seed=12, dtype=torch.float32))
