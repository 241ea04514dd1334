"""Notebook 10 (cluttered digits, where pixels are weak) runs under papermill; what held, holds.

Bounds come from one run at PARAMS with n_seeds=3 (the notebook prints each seed's paired difference);
the test runs seed 0. Measured differences in test accuracy, seeds 0 / 1 / 2:

* GAN NFK (identity, rank 64) − raw pixels, linear probe:    +0.073 / +0.107 / +0.137
* GAN NFK (identity, rank 64) − pixel PCA-64:                +0.040 / +0.070 / +0.083
* GAN NFK (identity, rank 64) − discriminator features:      +0.037 / +0.013 / +0.023
* VAE NFK (diagonal, rank 64) − raw pixels:                  +0.063 / +0.080 / +0.103
* VAE NFK (diagonal, rank 64) − pixel PCA-64:                +0.030 / +0.043 / +0.050
* VAE NFK (diagonal, rank 64) − VAE latent mean:             +0.040 / +0.090 / +0.083
* VAE NFK (KFAC, rank 64) − raw pixels:                      +0.067 / +0.107 / +0.127
* VAE NFK (KFAC, rank 64) − VAE latent mean:                 +0.043 / +0.117 / +0.107
* NFK rank 64 − rank 16 (diagonal): GAN +0.023 / +0.020 / +0.053, VAE +0.040 / +0.020 / +0.040
* label spreading, 5 labels per class, GAN NFK (identity) − pixels: −0.115 / −0.135 / −0.102
  (the claim fails: a k-NN graph on the NFK embedding is worse than on pixels)

Not asserted because it did not hold on every seed: NFK vs the untrained network's NFK
(GAN diagonal −0.010 / −0.023 / +0.040), few-label logistic regression vs pixels (±0.04), and the
GAN's KFAC NFK vs its features (+0.037 / −0.077 / −0.043).
"""

from __future__ import annotations

import pytest

from tests.nbrun import parameters_source, run_notebook

NAME = "10_harder_task.ipynb"
PARAMS = {"seed": 0, "n_seeds": 1, "n_train": 600, "n_test": 300, "epochs": 10, "ranks": [16, 64],
          "n_samples": 256, "labels_per_class": [5], "n_draws": 2}

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_notebook(NAME, tmp_path_factory.mktemp("nb10"), PARAMS, timeout=400)


def test_parameters_cell_names_what_the_test_overrides() -> None:
    source = parameters_source(NAME)
    for name in (*PARAMS, "kinds", "device", "damping"):
        assert f"{name} =" in source, name


def test_pixels_are_weak_on_this_task(records: dict) -> None:
    # the point of the benchmark: a linear probe on raw pixels is far from the 0.965 of plain digits
    assert records["probe_pixels"] <= 0.4


def test_nfk_beats_pixels_and_pixel_pca_with_all_labels(records: dict) -> None:
    assert records["claim_gan_identity_minus_pixels_min"] >= 0.03
    assert records["claim_gan_identity_minus_pixels_pca_min"] >= 0.01
    assert records["claim_vae_diagonal_minus_pixels_min"] >= 0.03
    assert records["claim_vae_diagonal_minus_pixels_pca_min"] >= 0.01
    assert records["claim_vae_kfac_minus_pixels_min"] >= 0.03


def test_nfk_beats_the_models_own_features(records: dict) -> None:
    assert records["claim_gan_identity_minus_own_features_min"] > 0.0
    assert records["claim_vae_diagonal_minus_own_features_min"] >= 0.01
    assert records["claim_vae_kfac_minus_own_features_min"] >= 0.01


def test_rank_matters(records: dict) -> None:
    assert records["claim_gan_diagonal_rank64_minus_rank16_min"] > 0.0
    assert records["claim_vae_diagonal_rank64_minus_rank16_min"] > 0.0


def test_label_spreading_on_the_nfk_does_not_beat_pixels(records: dict) -> None:
    assert records["claim_gan_identity_minus_pixels_spreading5_min"] < 0.0


def test_records_are_complete(records: dict) -> None:
    for name in ("pixels", "gan_features", "vae_latent", "pixels_pca64", "random_projection64",
                 "gan_nfk_diagonal_rank64", "vae_nfk_identity_rank16", "gan_nfk_kfac_rank64",
                 "untrained_gan_nfk_diagonal_rank64",
                 "untrained_vae_nfk_diagonal_rank16"):
        assert 0.0 <= records[f"probe_{name}"] <= 1.0, name
        assert records[f"probe_{name}_sd"] == 0.0  # one seed
    for key in ("logistic5_pixels", "spreading5_gan_nfk_identity_rank64", "logistic5_random_projection64"):
        assert 0.0 <= records[key] <= 1.0, key
    assert records["runtime_seconds"] > 0
