"""The model-zoo matrix: real architectures (tiny widths) against the autograd-loop oracle.

For each model: the exact Fisher vectors match per-example gradients computed one autograd call at a
time (float64, 1e-6); the low-rank embedding is within 1.05× of the optimal rank-k error; results do
not depend on the batch size; the user's model keeps its parameters, buffers and train/eval modes;
models that cannot be vmapped over examples warn once (and only they)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import nfk_nb as nfk
from nfk_nb._fallback import VmapFallbackWarning
from nfk_nb._modes import eval_mode

from .oracle import fisher_vectors as oracle_vectors
from .oracle import per_example_grads
from .zoo_models import CPU_CASES, HF_CASES, Case

pytestmark = pytest.mark.usefixtures("float64_default")
RANK = 4


def snapshot(*modules: nn.Module) -> list:
    return [({k: v.detach().clone() for k, v in m.state_dict().items()}, [s.training for s in m.modules()])
            for m in modules]


def oracle(case: Case) -> torch.Tensor:
    """Fisher vectors from one autograd call per example, the model in eval mode (then restored)."""
    model = case.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def grads(examples):
        return per_example_grads(model, names, lambda ex: case.logp_one(model, ex), examples)

    with eval_mode(model):
        G = grads(case.examples)
        G_ref = G if case.reference is None else grads(case.reference)
    return oracle_vectors(G, G_ref, case.centered, "diagonal", nfk.DEFAULT_DAMPING)


def error_over_optimum(K: torch.Tensor, E: torch.Tensor) -> float:
    ev = torch.linalg.eigvalsh(K)
    return float(torch.linalg.norm(K - E @ E.T) / ev[:-E.shape[1]].pow(2).sum().sqrt())


def run_case(case: Case) -> None:
    watched = [case.model, *([case.extra["generator"]] if "generator" in case.extra else [])]
    before = snapshot(*watched)
    lik = case.make_lik(case.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        V = nfk.fisher_vectors(lik, case.data, batch_size=5)
        V_big = nfk.fisher_vectors(lik, case.data, batch_size=16)
        E = nfk.LowRankNFK(lik, rank=RANK, batch_size=5, progress=False).fit_transform(case.data)
        E_big = nfk.LowRankNFK(lik, rank=RANK, batch_size=16, progress=False).fit_transform(case.data)
    fallback = [w for w in caught if issubclass(w.category, VmapFallbackWarning)]
    # one warning per operator (two exact calls, two fits), none for vmappable models
    assert len(fallback) == (4 if case.fallback else 0), [str(w.message)[:200] for w in fallback]
    assert not [w for w in caught if "Precision" in w.category.__name__]

    want = oracle(case)
    scale = float(want.abs().max())
    torch.testing.assert_close(V, want, rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(V_big, V, rtol=1e-9, atol=1e-9 * scale)
    K = V @ V.T
    assert error_over_optimum(K, E) <= 1.05
    torch.testing.assert_close(E_big, E, rtol=1e-6, atol=1e-7 * float(E.abs().max()))
    for (state, flags), (state_after, flags_after) in zip(before, snapshot(*watched)):
        assert flags == flags_after
        for name, value in state.items():
            assert torch.equal(value, state_after[name]), name


@pytest.mark.parametrize("key", list(CPU_CASES))
def test_zoo_model(key):
    run_case(CPU_CASES[key]())


@pytest.mark.parametrize("key", list(HF_CASES))
def test_zoo_huggingface_model(key):
    pytest.importorskip("transformers")
    run_case(HF_CASES[key]())


def test_zoo_bfloat16_model_computes_in_float32_against_the_oracle():
    case = CPU_CASES["resnet"]()
    model = case.model.to(torch.bfloat16)
    X = case.data.float()
    lik = nfk.Classifier(model)
    V = nfk.fisher_vectors(lik, X, batch_size=3)
    V_big = nfk.fisher_vectors(lik, X, batch_size=16)
    assert V.dtype == torch.float32
    # the oracle: the same bf16 weights, exactly upcast to float64
    case.model = copy.deepcopy(model).double()
    case.examples = list(X.double())
    want = oracle(case)
    assert float((V.double() - want).norm() / want.norm()) < 1e-4
    assert float((V_big - V).norm() / V.norm()) < 1e-5
    assert next(model.parameters()).dtype == torch.bfloat16
