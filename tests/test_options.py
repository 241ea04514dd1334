"""One source of options: the estimator, the %nfk magics and ``nfk-nb fit`` share defaults and choices."""

from __future__ import annotations

import argparse
import inspect

import pytest
import torch
from torch import nn

import nfk_nb as nfk
from nfk_nb import options
from nfk_nb.errors import NFKError
from nfk_nb.fit_command import add_fit_arguments
from nfk_nb.magics import PARSERS, NFKMagics


def _choices(parser: argparse.ArgumentParser, dest: str) -> tuple:
    return tuple(next(a for a in parser._actions if a.dest == dest).choices)


def test_estimator_signature_is_the_defaults():
    signature = inspect.signature(nfk.LowRankNFK)
    assert {k: p.default for k, p in signature.parameters.items() if k != "lik"} == options.DEFAULTS


def test_magics_traits_default_to_the_estimator():
    traits = NFKMagics.class_traits(config=True)
    shared = set(traits) & set(options.DEFAULTS)
    assert shared >= {"rank", "fisher", "damping", "power_iters", "oversample", "batch_size", "device",
                      "seed"}
    for name in shared:
        assert traits[name].default_value == options.DEFAULTS[name], name
    assert set(traits["kind"].values) == set(options.MODEL_KINDS) | set(options.KIND_ALIASES)
    assert tuple(traits["fisher"].values) == options.FISHER_KINDS
    assert tuple(traits["score"].values) == options.SCORES


def test_parsers_offer_the_same_choices():
    cli = argparse.ArgumentParser()
    add_fit_arguments(cli)
    assert _choices(cli, "fisher") == _choices(PARSERS["fit"], "fisher") == options.FISHER_KINDS
    assert _choices(cli, "sketch") == options.SKETCHES
    assert _choices(PARSERS["fit"], "kind") == options.MODEL_KINDS + tuple(options.KIND_ALIASES)
    assert _choices(PARSERS["fit"], "score") == options.SCORES
    # the CLI leaves unset options to the estimator, so its defaults are the estimator's
    ns = cli.parse_args(["script.py"])
    assert all(getattr(ns, name) is None for name in ("rank", "fisher", "damping", "power_iters", "seed"))
    # damping 0 is allowed by the core, so by the magic too
    assert PARSERS["fit"].parse_args(["net", "X", "--damping", "0"]).damping == 0.0


def test_one_vocabulary_of_model_kinds_is_the_likelihood_families():
    torch.manual_seed(0)
    net, enc, dec = nn.Linear(4, 3), nn.Linear(4, 4), nn.Linear(2, 4)
    built = {
        "classifier": options.make_likelihood(net, "classifier"),
        "energy": options.make_likelihood(nn.Linear(4, 1), "energy", sampler=lambda n: torch.randn(n, 4)),
        "vae": options.make_likelihood((enc, dec), "vae"),
        "regression": options.make_likelihood(net, "regression", sigma=2.0),
        "causal-lm": options.make_likelihood(nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5)), "causal-lm"),
    }
    assert tuple(built) == options.MODEL_KINDS
    for kind, lik in built.items():
        assert lik.describe()["family"] == kind
    assert options.canonical_kind("gan") == "energy" and options.canonical_kind("regressor") == "regression"
    with pytest.raises(NFKError, match="kind='gann' is not one of"):
        options.make_likelihood(net, "gann")
    lik = nfk.Classifier(net)
    assert options.make_likelihood(lik, "vae") is lik  # a likelihood is used as it is


def test_check_params_refuses_before_any_computation():
    params = dict(options.DEFAULTS)
    options.check_params(params)
    for name, bad, words in [("rank", 0, "rank must be at least 1"), ("sketch", "twice", "sketch='twice'"),
                             ("damping", -1.0, "non-negative"), ("fisher", "block", "fisher='block'"),
                             ("device", "nowhere", "not a torch device")]:
        with pytest.raises(NFKError, match=words):
            options.check_params({**params, name: bad})
