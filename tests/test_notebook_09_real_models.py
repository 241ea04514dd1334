"""notebooks/09_real_models.ipynb at small sizes: its claims, asserted on its records.

Bounds come from runs with these parameters over seeds 0, 1, 2 (numbers in the comments); claims that
did not hold on every seed are reported in the notebook, not asserted.
"""

from __future__ import annotations

import math

import pytest

from tests.nbrun import run_one_thread

pytestmark = pytest.mark.notebook

PARAMS = dict(n_train=300, n_test=200, cnn_epochs=10, rank=16, n_per_grammar=30, lm_steps=150,
              lm_rank=12, seed=0)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return run_one_thread("09_real_models.ipynb", tmp_path_factory, PARAMS)


def test_cnn_nfk_probes_well_with_all_or_last_block_parameters(records):
    # seeds 0/1/2: CNN test accuracy 0.755 / 0.745 / 0.830; rank-16 probe all parameters 0.890 / 0.870 /
    # 0.935, last block + head 0.920 / 0.890 / 0.935
    assert records["cnn_test_accuracy"] > 0.6
    assert records["cnn_probe_accuracy_all"] > 0.8
    assert records["cnn_probe_accuracy_last_block"] > 0.8
    assert records["cnn_probe_accuracy_last_block"] > records["cnn_probe_accuracy_all"] - 0.03
    assert records["cnn_params_last_block"] < records["cnn_params_all"]
    assert records["cnn_fit_seconds_all"] > 0 and records["cnn_fit_seconds_last_block"] > 0


def test_cnn_nfk_against_its_null_baselines(records):
    # null baselines at rank 16, seeds 0/1/2: random_projection of the pixels 0.925 / 0.830 / 0.905, the
    # untrained CNN's NFK 0.900 / 0.860 / 0.915. The trained CNN's last-block NFK beat the untrained one's on
    # every seed (+0.020 / +0.030 / +0.020) but not the random projection (-0.005 / +0.060 / +0.030): only
    # the first margin is asserted; the notebook reports the second as not held.
    last = records["cnn_probe_accuracy_last_block"]
    assert last > records["cnn_probe_accuracy_null_untrained"] + 0.005
    assert last > records["cnn_probe_accuracy_null_random_projection"] - 0.03


def test_language_model_learned_and_its_nfk_finds_the_grammars(records):
    # LM test loss, seeds 0/1/2: 1.34 / 1.24 / 1.43 nats per token (uniform: log 16 = 2.77)
    assert records["lm_test_loss"] < math.log(16) - 0.5
    # leave-one-out 5-NN accuracy of the grammar (chance 0.25), seeds 0/1/2: NFK 0.983 / 0.908 / 0.950,
    # mean hidden state 0.917 / 0.900 / 0.817, bigram counts 1.000 / 0.950 / 1.000
    assert records["grammar_knn_nfk"] > 0.85
    assert records["grammar_knn_nfk"] > records["grammar_knn_hidden"] - 0.03
    assert records["grammar_knn_bigrams"] > 0.9
    # k-means ARI varies with the seed (NFK 0.87 / 0.23 / 0.69, hidden 0.38 / 0.23 / 0.14): reported only
    for key in ("grammar_ari_nfk", "grammar_ari_hidden", "grammar_ari_bigrams"):
        assert -1.0 <= records[key] <= 1.0


def test_grammar_separation_does_not_need_training(records):
    # null baselines, 5-NN: random_projection of the one-hot sequences 0.508 / 0.633 / 0.550, far below the
    # NFK (+0.32 or more); but the untrained LM's NFK 1.000 / 0.967 / 0.975 was as good or better than the
    # trained one's on every seed (ARI 0.98 / 0.40 / 0.91 vs 0.87 / 0.23 / 0.69): the separation comes from
    # the gradient features of the architecture, not from training. Asserted as measured.
    assert records["grammar_knn_nfk"] > records["grammar_knn_null_random_projection"] + 0.2
    assert records["grammar_knn_null_untrained"] > records["grammar_knn_nfk"] - 0.02
