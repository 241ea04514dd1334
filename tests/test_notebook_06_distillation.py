"""notebooks/06_distillation.ipynb under papermill with small parameters.

Bounds come from runs at SMALL with teacher_seed 0, 1, 2 (student seeds 0, 1, 2 each); measured values
are in the comments, and each bound leaves a margin below the lowest one:

* NFK matching beats plain training on the few labels by a wide margin (the paper's claim, holds);
* logit distillation does too, and NFK matching is within a few points of it, not above it (the
  paper's claim that NFK distillation beats logit KD does not hold at this scale);
* at these small parameters NFK targets are at best slightly better than an equal-size PCA of the
  teacher's penultimate features (at the defaults: +0.018 to +0.026 on average), so only "not worse"
  is asserted here.

Null baselines (recorded by the notebook): the same NFK-matching student trained on targets that need
no trained teacher, paired by seed. Teacher seeds 0 / 1 / 2, NFK student minus
* a random projection of the pixels: +0.158 / +0.178 / +0.205 on average, worst seed +0.102;
* the untrained teacher's rank-16 NFK: +0.082 / +0.072 / +0.080 on average, worst seed +0.057.
"""

from __future__ import annotations

import pytest

from tests.nbrun import parameters_source, run_notebook

pytestmark = pytest.mark.notebook

NAME = "06_distillation.ipynb"
SMALL = {"teacher_epochs": 20, "student_epochs": 15, "seeds": [0, 1, 2]}


def test_distillation_is_committed_clean_and_parameterised():
    source = parameters_source(NAME)
    for name in (*SMALL, "rank", "beta", "temperature", "labels_per_class", "device"):
        assert f"{name} =" in source


@pytest.mark.timeout(180)
def test_distillation_runs_with_small_parameters(tmp_path):
    rec = run_notebook(NAME, tmp_path, SMALL, timeout=150)
    for key in ("plain", "logit", "nfk", "features", "logit_nfk"):
        assert len(rec[f"acc_{key}"]) == len(SMALL["seeds"])
    assert rec["teacher_accuracy"] > 0.95  # measured 0.966-0.972
    assert rec["probe_nfk_targets"] > 0.95  # the targets carry the classes: 0.994-0.997
    # distillation matters: the plain student is far below the teacher (0.855 vs 0.966-0.972)
    assert rec["acc_plain_mean"] < rec["teacher_accuracy"] - 0.05
    # NFK matching beats plain training: +0.075 to +0.090 on average, worst seed +0.055
    assert rec["nfk_minus_plain_mean"] > 0.04
    assert rec["nfk_minus_plain_min"] > 0.02
    # logit KD beats plain training: +0.083 to +0.090
    assert rec["logit_minus_plain_mean"] > 0.04
    # NFK matching is close to logit KD but not better: -0.008 to 0.000 on average
    assert rec["nfk_minus_logit_mean"] > -0.03
    # over the null targets (see the module docstring)
    assert rec["nfk_minus_null_random_projection_mean"] > 0.10
    assert rec["nfk_minus_null_random_projection_min"] > 0.05
    assert rec["nfk_minus_null_untrained_nfk_mean"] > 0.04
    assert rec["nfk_minus_null_untrained_nfk_min"] > 0.03
    # NFK targets vs teacher-feature PCA of the same size: +0.003 to +0.025 on average
    assert rec["nfk_minus_features_mean"] > -0.01
