"""notebooks/05_semi_supervised.ipynb under papermill with small parameters.

Bounds come from runs at SMALL with model seeds 0, 1, 2 (3 labelled draws each, 5 labels per class);
measured values are in the comments and each bound leaves a margin below the lowest one. They state
what holds at this scale:

* the GAN discriminator's NFK embedding beats the discriminator's own features (the paper's claim);
* it is roughly on par with raw pixels, not better (the paper's claim fails here): only "not far
  behind" is asserted;
* the mean-code VAE score gives a far better NFK than the one-sample ELBO (Monte-Carlo noise).

Null baselines at k=16 through the same draws (recorded by the notebook), seeds 0 / 1 / 2, logistic:
a random projection of the pixels 0.787 / 0.733 / 0.738 (GAN NFK +0.067 / +0.135 / +0.121); the
identity-Fisher NFK of the untrained discriminator 0.843 / 0.844 / 0.853 (GAN NFK +0.011 / +0.023 /
+0.006: a near tie; with label spreading -0.020 / +0.001 / -0.025, which does not hold).
"""

from __future__ import annotations

import pytest

from tests.nbrun import parameters_source, run_notebook

pytestmark = pytest.mark.notebook

NAME = "05_semi_supervised.ipynb"
SMALL = {"vae_epochs": 30, "gan_epochs": 60, "n_draws": 3, "labels_per_class": [5], "rank": 16,
         "n_samples": 512}


def test_semi_supervised_is_committed_clean_and_parameterised():
    source = parameters_source(NAME)
    for name in (*SMALL, "seed", "device"):
        assert f"{name} =" in source


@pytest.mark.timeout(180)
def test_semi_supervised_runs_with_small_parameters(tmp_path):
    rec = run_notebook(NAME, tmp_path, {**SMALL, "seed": 1}, timeout=150)
    # raw pixels need no model: 0.869 (logistic) and 0.952 (spreading) at every seed
    assert rec["logistic_pixels_5_mean"] > 0.8
    assert rec["spreading_pixels_5_mean"] > 0.9
    # GAN NFK (identity) beats the discriminator's penultimate features:
    # logistic +0.074 to +0.088, label spreading +0.069 to +0.126
    assert rec["logistic_gan_nfk_minus_penultimate_5"] > 0.03
    assert rec["spreading_gan_nfk_minus_penultimate_5"] > 0.03
    # ... but does not beat the raw pixels: logistic -0.024 to -0.007, spreading -0.062 to -0.052
    assert rec["logistic_gan_nfk_minus_pixels_5"] > -0.05
    assert rec["spreading_gan_nfk_minus_pixels_5"] > -0.10
    # over the null baselines: a random projection of the pixels (logistic +0.067 to +0.135, label
    # spreading +0.012 to +0.104) and, barely, the untrained discriminator's NFK (logistic only)
    assert rec["logistic_gan_nfk_minus_null_random_projection_5"] > 0.04
    assert rec["spreading_gan_nfk_minus_null_random_projection_5"] > 0.0
    assert rec["logistic_gan_nfk_minus_null_untrained_gan_nfk_5"] > 0.0
    # the mean-code VAE NFK (0.800-0.821) is far better than the one-sample ELBO NFK (0.458-0.623)
    assert rec["logistic_vae_nfk_meancode_5_mean"] > 0.7
    assert rec["logistic_vae_nfk_meancode_5_mean"] > rec["logistic_vae_nfk_elbo_5_mean"] + 0.1
