"""Notebook 03 (GAN discriminator NFK) runs under papermill and its recorded claims hold.

Bounds come from runs at these parameters with seeds 0, 1, 2 (damping 1e-2):
top-16 trace fraction 0.79 / 0.82 / 0.82; NFK probe at rank 8 → 32: 0.80 → 0.96, 0.83 → 0.93,
0.86 → 0.95; NFK rank-32 minus the discriminator's penultimate PCA-32: +0.012, -0.020, +0.010.
"""

from __future__ import annotations

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


def test_nfk_embedding_improves_with_rank_and_is_a_good_representation(records: dict) -> None:
    assert records["probe_nfk_rank32"] - records["probe_nfk_rank8"] >= 0.05
    assert records["probe_nfk_rank32"] >= 0.92
    # at equal dimension the NFK matches the discriminator's own features (it does not clearly beat
    # them at this scale: the notebook says so)
    assert records["probe_nfk_rank32"] >= records["probe_penultimate_pca32"] - 0.03


def test_records_are_complete(records: dict) -> None:
    for k in PARAMS["ranks"]:
        for name in ("probe_nfk", "probe_identity", "probe_kfac", "probe_pixels_pca",
                     "probe_penultimate_pca"):
            key = f"{name}_rank{k}" if name in ("probe_nfk", "probe_identity", "probe_kfac") else f"{name}{k}"
            assert 0.0 <= records[key] <= 1.0, key
    assert records["damping"] == PARAMS["damping"]
