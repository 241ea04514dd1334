"""Property-based checks (hypothesis) of the input checks over shapes, dtypes, ranks and file damage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nfk_nb as nfk
from nfk_nb.errors import NFKError, NFKTypeError

FAST = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def linear_classifier(d: int, c: int = 2) -> nfk.Classifier:
    torch.manual_seed(0)
    return nfk.Classifier(nn.Linear(d, c))


def est(lik, rank, **kw):
    return nfk.LowRankNFK(lik, rank=rank, power_iters=0, oversample=2, progress=False, **kw)


@FAST
@given(n=st.integers(1, 12), d=st.integers(1, 4), rank=st.integers(-2, 16))
def test_rank_is_accepted_exactly_in_1_to_min_n_p(n, d, rank):
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(n * 7 + d))
    P = 2 * d + 2  # Linear(d, 2): weight and bias
    e = est(linear_classifier(d), rank)
    if rank < 1:
        with pytest.raises(NFKError, match=f"rank must be at least 1, got {rank}"):
            e.fit(X)
    elif rank > min(n, P):
        with pytest.raises(NFKError, match=rf"rank={rank} is larger than min\(N, P\) = min\({n}, {P}\)"):
            e.fit(X)
    else:
        E = e.fit_transform(X)
        assert E.shape == (n, rank) and torch.isfinite(E).all()


NUMERIC = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"]


@FAST
@given(dtype=st.sampled_from(NUMERIC), n=st.integers(2, 6), numpy=st.booleans())
def test_dtypes_floats_work_and_integers_are_refused(dtype, n, numpy):
    X = np.random.default_rng(n).normal(size=(n, 3)) * 3
    X = X.astype(dtype)
    data = X if numpy else torch.from_numpy(X)
    e = est(linear_classifier(3), 1)
    if np.issubdtype(X.dtype, np.floating):
        assert e.fit_transform(data).shape == (n, 1)
    else:
        with pytest.raises(NFKTypeError, match=f"inputs are {dtype} but the model needs floating-point"):
            e.fit(data)


@FAST
@given(d_model=st.integers(1, 6), shape=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_shapes_that_do_not_fit_name_the_expected_shape(d_model, shape):
    X = torch.randn(4, *shape)
    e = est(linear_classifier(d_model), 1)
    if shape[-1] == d_model:  # Linear acts on the last dimension; extra ones give (B, ..., C) logits
        if len(shape) == 1:
            assert e.fit_transform(X).shape == (4, 1)
        else:
            with pytest.raises(NFKError, match="logits of shape"):
                e.fit(X)
    else:
        with pytest.raises(NFKError) as info:
            e.fit(X)
        msg = str(info.value)
        assert f"shape (batch, {', '.join(map(str, shape))})" in msg
        assert f"expects {d_model} features, i.e. inputs of shape (batch, {d_model})" in msg


@FAST
@given(
    n=st.integers(2, 15),
    row=st.integers(0, 14),
    col=st.integers(0, 2),
    value=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    loader=st.booleans(),
    batch=st.integers(1, 6),
)
def test_non_finite_data_name_the_example(n, row, col, value, loader, batch):
    row = row % n
    X = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    X[row, col] = value
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=batch) if loader else X
    with pytest.raises(NFKError, match=f"NaN or infinite values \\(first at example {row}\\)"):
        est(linear_classifier(3), 1, batch_size=batch).fit(data)
    with pytest.raises(NFKError, match=f"first at example {row}"):
        nfk.fisher_vectors(linear_classifier(3), data)


@FAST
@given(score=st.sampled_from(["joint", "label", "predicted"]), labelled=st.booleans(),
       exact=st.booleans())
def test_labels_required_exactly_for_the_label_score(score, labelled, exact):
    X = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    data = (X, y) if labelled else X
    lik = nfk.Classifier(nn.Linear(3, 2), score=score)
    run = (lambda: nfk.fisher_vectors(lik, data)) if exact else (lambda: est(lik, 2).fit(data))
    if score == "label" and not labelled:
        with pytest.raises(NFKError, match=r"Classifier\(score='label'\) needs labels"):
            run()
    else:
        run()


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    e = est(nfk.Classifier(net), 2).fit(torch.randn(10, 3, generator=torch.Generator().manual_seed(2)))
    path = tmp_path_factory.mktemp("prop") / "est.nfk"
    e.save(path)
    return net, path.read_bytes()


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_refused(saved_bytes, tmp_path, data):
    """Flip any byte of a saved file (header, metadata or tensor data): loading always refuses it."""
    net, raw = saved_bytes
    pos = data.draw(st.integers(0, len(raw) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    damaged = bytearray(raw)
    damaged[pos] ^= mask
    path = tmp_path / "damaged.nfk"
    path.write_bytes(bytes(damaged))
    with pytest.raises(NFKError):
        nfk.LowRankNFK.load(path, nfk.Classifier(net))
