"""Bad inputs fail early with one clear sentence: the exception type and the words of each message."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import nfk_nb as nfk
from nfk_nb.errors import NFKError, NFKTypeError
from nfk_nb.products import FisherVectorProducts
from tests.oracle import fisher_vectors as oracle_vectors
from tests.oracle import per_example_grads


def mlp(d: int = 4, c: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, c))


def data(n: int = 20, d: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, 3, (n,), generator=g)


def est(lik=None, **kw) -> nfk.LowRankNFK:
    return nfk.LowRankNFK(lik or nfk.Classifier(mlp()), **{"rank": 3, "progress": False, **kw})


def with_value(X: torch.Tensor, row: int, value: float) -> torch.Tensor:
    X = X.clone()
    X[row, 1] = value
    return X


X, Y = data()

# (case id, callable, exception type, words the message must contain)
CASES = [
    ("rank 0", lambda: est(rank=0).fit(X), NFKError, ["rank must be at least 1", "got 0"]),
    ("rank negative", lambda: est(rank=-3).fit(X), NFKError, ["rank must be at least 1", "got -3"]),
    ("rank > N", lambda: est(rank=21).fit(X), NFKError, ["rank=21", "min(N, P) = min(20, 67)", "rank <= 20"]),
    ("rank > P", lambda: est(nfk.Classifier(nn.Linear(4, 1)), rank=6).fit(X), NFKError,
     ["rank=6", "min(20, 5)", "rank <= 5"]),
    ("rank float", lambda: est(rank=2.5).fit(X), NFKTypeError, ["rank must be an integer", "2.5"]),
    ("NaN", lambda: est().fit(with_value(X, 7, float("nan"))), NFKError, ["NaN or infinite", "example 7"]),
    ("inf", lambda: est().fit(with_value(X, 3, float("inf"))), NFKError, ["NaN or infinite", "example 3"]),
    ("NaN label part", lambda: est().fit((X, torch.where(torch.arange(20) == 4, float("nan"), 1.0))),
     NFKError, ["NaN or infinite", "example 4"]),
    ("NaN in DataLoader batch 2", lambda: est().fit(torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(with_value(X, 13, float("-inf"))), batch_size=5)),
     NFKError, ["NaN or infinite", "example 13"]),
    ("empty", lambda: est().fit(torch.empty(0, 4)), NFKError, ["data are empty"]),
    ("empty (X, y)", lambda: est().fit((torch.empty(0, 4), torch.empty(0))), NFKError, ["data are empty"]),
    ("empty loader", lambda: est().fit(torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.empty(0, 4)))), NFKError, ["data are empty"]),
    ("zero features", lambda: est().fit(torch.empty(20, 0)), NFKError,
     ["cannot take inputs of shape (batch, 0)", "(batch, 4)"]),
    ("X, y lengths", lambda: est().fit(X, Y[:10]), NFKError, ["different lengths", "20 inputs, 10 targets"]),
    ("wrong width", lambda: est().fit(torch.randn(20, 5)), NFKError,
     ["cannot take inputs of shape (batch, 5)", "'0' (Linear) expects 4 features", "(batch, 4)"]),
    ("wrong ndim", lambda: est().fit(torch.randn(20, 2, 3)), NFKError,
     ["shape (batch, 2, 3)", "(batch, 4)"]),
    ("conv channels", lambda: nfk.fisher_vectors(nfk.Classifier(nn.Sequential(
        nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))), torch.randn(5, 1, 8, 8)),
     NFKError, ["shape (batch, 1, 8, 8)", "(Conv2d) expects 3 input channels", "(batch, 3, H, W)"]),
    ("int64 data", lambda: est().fit(torch.randint(0, 5, (20, 4))), NFKTypeError,
     ["inputs are int64", "floating-point", "X.float()"]),
    ("uint8 data", lambda: est().fit(np.zeros((20, 4), dtype=np.uint8)), NFKTypeError,
     ["inputs are uint8", "floating-point"]),
    ("bool data", lambda: est().fit(torch.rand(20, 4) > 0.5), NFKTypeError, ["inputs are bool"]),
    ("object array", lambda: est().fit(np.array([[1.0, "a"]] * 3, dtype=object)), NFKTypeError,
     ["NumPy dtype object", "numeric"]),
    ("not data", lambda: est().fit("data.csv"), NFKTypeError, ["must be a torch.Tensor", "not str"]),
    ("fisher=", lambda: est(fisher="block").fit(X), NFKError, ["fisher='block'", "'diagonal', 'identity'"]),
    ("fisher= exact", lambda: nfk.fisher_vectors(nfk.Classifier(mlp()), X, fisher="full"), NFKError,
     ["fisher='full'", "'diagonal', 'identity'"]),
    ("score=", lambda: nfk.Classifier(mlp(), score="joined"), NFKError,
     ["score='joined'", "'joint', 'label', 'predicted'"]),
    ("VAE likelihood=", lambda: nfk.VAE(mlp(), mlp(), likelihood="poisson"), NFKError,
     ["likelihood='poisson'", "'bernoulli', 'gaussian'"]),
    ("partition=", lambda: nfk.Likelihood(lambda m, x: m(x)[:, 0], mlp(), partition="model"), NFKError,
     ["partition='model'", "'none', 'data', 'sampler'"]),
    ("damping", lambda: est(damping=-1.0).fit(X), NFKError, ["damping must be a non-negative number"]),
    ("damping type", lambda: est(damping="big").fit(X), NFKTypeError, ["damping must be a number"]),
    ("dtype", lambda: est(dtype=torch.int32).fit(X), NFKTypeError, ["dtype must be None or a floating"]),
    ("device", lambda: est(device="gpu").fit(X), NFKError, ["device='gpu' is not a torch device"]),
    ("chunk_size", lambda: est(chunk_size=0).fit(X), NFKError, ["chunk_size must be None or a positive"]),
    ("progress", lambda: est(progress="yes").fit(X), NFKTypeError, ["progress must be True, False"]),
    ("selection empty", lambda: nfk.Classifier(mlp(), params="conv*"), NFKError,
     ["selection 'conv*' selects no parameter", "0.weight"]),
    ("labels lowrank", lambda: est(nfk.Classifier(mlp(), score="label")).fit(X), NFKError,
     ["Classifier(score='label') needs labels", "(X, y)"]),
    ("labels exact", lambda: nfk.fisher_vectors(nfk.Classifier(mlp(), score="label"), X), NFKError,
     ["Classifier(score='label') needs labels", "(X, y)"]),
    ("labels kernel Z", lambda: nfk.fisher_kernel(nfk.Classifier(mlp(), score="label"), (X, Y), X[:5]),
     NFKError, ["needs labels"]),
    ("targets regressor", lambda: nfk.fisher_kernel(nfk.Regressor(mlp()), X), NFKError,
     ["Regressor needs labels"]),
    ("log_prob shape", lambda: est(nfk.Likelihood(lambda m, x: m(x), mlp())).fit(X), NFKError,
     ["log_prob must return one number per example", "got (2, 3)"]),
    ("unfitted transform", lambda: est().transform(X), NFKError, ["not fitted yet"]),
    ("shuffling loader", lambda: est().fit(torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X), shuffle=True)), NFKError, ["shuffle=False"]),
]


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_message(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    assert isinstance(info.value, (ValueError, TypeError))
    assert one_sentence(message), message


def one_sentence(message: str) -> bool:
    """Ends with a full stop and has no other sentence break (quoted model errors and e.g. aside)."""
    own = re.sub(r"\((the model|torch) said: .*\)", "", message)
    own = own.replace("e.g.", "eg").replace("i.e.", "ie")
    return message.endswith(".") and ". " not in own


class _Branchy(nn.Module):
    """Branches on a tensor value in forward: fine in eager mode, impossible under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        out = self.lin(x)
        return out if out.sum() > 0 else -out


class _Item(_Branchy):
    def forward(self, x):
        return self.lin(x) * float(x.abs().max().item())


class _NumPy(_Branchy):
    """Reads the output through NumPy: fails under torch.func even one example at a time."""

    def forward(self, x):
        out = self.lin(x)
        return out * float(np.abs(out.detach().numpy()).max())


@pytest.mark.parametrize("module", [_Branchy, _Item])
def test_branches_on_values_fall_back_to_single_examples(module):
    # vmap over examples fails; each example alone differentiates: the per-example semantics,
    # one warning, and the exact kernel of the single-example scores (oracle)
    torch.manual_seed(0)
    net = module().double()
    Xd = X.double()
    with pytest.warns(UserWarning, match=f"cannot vmap this model over examples.*{module.__name__}"):
        V = nfk.fisher_vectors(nfk.Classifier(net), Xd)
    G = per_example_grads(net, [n for n, _ in net.named_parameters()],
                          lambda x: torch.logsumexp(net(x[None]), -1)[0], Xd)
    want = oracle_vectors(G, G, True, "diagonal", nfk.DEFAULT_DAMPING)
    assert torch.allclose(V, want, atol=1e-10)


def test_models_torch_func_cannot_handle_get_one_sentence():
    for call in (lambda: est(nfk.Classifier(_NumPy())).fit(X),
                 lambda: nfk.fisher_vectors(nfk.Classifier(_NumPy()), X)):
        with pytest.raises(NFKError) as info:
            call()
        msg = str(info.value)
        assert "torch.func cannot differentiate it per example" in msg and "'<root>' (_NumPy)" in msg
        assert one_sentence(msg), msg


def test_transform_checks_shape_and_values():
    e = est().fit(X)
    with pytest.raises(NFKError, match=r"shape \(batch, 7\).*\(batch, 4\)"):
        e.transform(torch.randn(3, 7))
    with pytest.raises(NFKError, match="example 2"):
        e.transform(with_value(X[:5], 2, float("nan")))


def test_integer_inputs_allowed_for_embedding_models():
    """Token models take integer inputs: no dtype error for them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 3))
    tokens = torch.randint(0, 10, (15, 3))
    E = est(nfk.Classifier(net)).fit_transform(tokens)
    assert E.shape == (15, 3) and torch.isfinite(E).all()


class _InfAbove(nn.Module):
    """Logits become infinite for inputs whose first feature exceeds 1.5."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) * torch.where(x[:, :1] > 1.5, float("inf"), 1.0)


@pytest.mark.parametrize("fisher", ["diagonal", "identity"])
def test_nonfinite_score_names_parameter_and_example(fisher):
    torch.manual_seed(0)
    Xb = X.clone().clamp(max=1.0)
    Xb[11, 0] = 3.0
    with pytest.raises(NFKError) as info:
        est(nfk.Classifier(_InfAbove()), fisher=fisher, batch_size=4).fit(Xb)
    assert "example 11" in str(info.value) and "'lin.weight'" in str(info.value)


def test_nonfinite_sketch_pass_is_caught(monkeypatch):
    """A product that overflows inside a sketch pass (scores were finite) is refused, naming the example."""
    real = FisherVectorProducts.matvec

    def matvec(self, U, **kw):
        out = real(self, U, **kw).clone()
        out[6, 0] = float("nan")
        return out

    monkeypatch.setattr(FisherVectorProducts, "matvec", matvec)
    with pytest.raises(NFKError, match=r"sketch product V Uᵀ of example 6 is not finite"):
        est(batch_size=5).fit(X)


def test_nonfinite_rmatvec_names_parameter(monkeypatch):
    real = FisherVectorProducts.rmatvec

    def rmatvec(self, A):
        out = real(self, A).clone()
        out[:, -1] = float("inf")  # last column = last bias
        return out

    monkeypatch.setattr(FisherVectorProducts, "rmatvec", rmatvec)
    with pytest.raises(NFKError, match=r"not finite in parameter '2.bias'"):
        est().fit(X)


def test_exact_and_lowrank_agree_on_messages():
    """The exact path gives the same sentences as the estimator."""
    bad = torch.randn(10, 5)
    msgs = []
    for call in (lambda: est().fit(bad), lambda: nfk.fisher_vectors(nfk.Classifier(mlp()), bad)):
        with pytest.raises(NFKError) as info:
            call()
        msgs.append(str(info.value))
    assert msgs[0] == msgs[1]
