"""Notebook 03 (GAN discriminator NFK) runs under papermill and its recorded claims hold.

Bounds come from runs at these parameters with seeds 0, 1, 2 (damping 1e-2):
top-16 trace fraction 0.80 / 0.82 / 0.82; NFK probe at rank 8 → 32: 0.82 → 0.96, 0.81 → 0.93,
0.86 → 0.94; NFK rank-32 minus the discriminator's penultimate PCA-32: +0.003, -0.018, +0.000.

Null baselines at the same k (recorded by the notebook), seeds 0 / 1 / 2:
* random projection of the pixels, rank 8: 0.730 / 0.647 / 0.772 (NFK +0.092 / +0.168 / +0.089);
  rank 32: 0.968 / 0.925 / 0.940 (NFK -0.005 / +0.008 / +0.002: a tie);
* NFK of the untrained discriminator, rank 8: 0.841 / 0.801 / 0.806 (NFK -0.019 / +0.013 / +0.055);
  rank 32: 0.951 / 0.930 / 0.950 (NFK +0.012 / +0.003 / -0.008).
So only the margin over a random projection at small k is asserted: at rank 32 the trained
discriminator's NFK does not beat a random projection of the pixels, and at no rank does it reliably
beat the untrained discriminator's NFK (README says so).
"""

from __future__ import annotations

import math

import pytest

from tests.nbrun import run_notebook

PARAMS = {"epochs": 30, "ranks": [8, 16, 32], "n_samples": 256, "damping": 1e-2, "seed": 0}

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_notebook("03_gan_nfk.ipynb", tmp_path_factory.mktemp("nb03"), PARAMS, timeout=300)


def test_discriminator_nfk_is_low_rank_but_not_collapsed(records: dict) -> None:
    # most of trace(K) in 16 of 1200 directions (low rank) ...
    assert records["trace_fraction_diagonal_top16"] >= 0.70
    # ... but not the few-coordinate collapse of too little damping (0.96 at damping 0, see
    # benchmarks/damping_study.py)
    assert records["trace_fraction_diagonal_top16"] <= 0.90


def test_nfk_embedding_improves_with_rank_and_beats_a_random_projection(records: dict) -> None:
    # rank 32 - rank 8: +0.141 / +0.119 / +0.080
    assert records["probe_nfk_rank32"] - records["probe_nfk_rank8"] >= 0.05
    # at small k the NFK carries far more than a random projection of the pixels (smallest +0.089)
    assert records["probe_nfk_rank8"] - records["null_random_projection_probe_rank8"] >= 0.05
    # at equal dimension the NFK matches the discriminator's own features (it does not clearly beat
    # them at this scale: the notebook says so)
    assert records["probe_nfk_rank32"] >= records["probe_penultimate_pca32"] - 0.03


def test_records_are_complete(records: dict) -> None:
    for k in PARAMS["ranks"]:
        for key in (f"probe_nfk_rank{k}", f"probe_identity_rank{k}", f"probe_kfac_rank{k}",
                    f"probe_pixels_pca{k}", f"probe_penultimate_pca{k}",
                    f"null_random_projection_probe_rank{k}", f"null_untrained_nfk_probe_rank{k}"):
            assert math.isfinite(records[key]), key
    assert records["damping"] == PARAMS["damping"]
