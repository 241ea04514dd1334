"""Issue 11: inputs that used to give a plausible but wrong answer (or a raw crash) now give the right
answer or one clear ``NFKError``: data order, overflow, damping, labels, N=1, seeds, threads."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from torch import nn
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import nfk_nb as nfk
from nfk_nb.datasource import DataSource
from nfk_nb.errors import NFKError, NFKTypeError
from nfk_nb.functional import LogProbOperator


def mlp(d=4, h=8, c=3, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c)).to(dtype)


def data(n=30, d=4, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def est(lik, **kw):
    return nfk.LowRankNFK(lik, **{"rank": 3, "power_iters": 1, "batch_size": 8, "progress": False, **kw})


def refuses(call, *words, exc=NFKError):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"


# -- data order --------------------------------------------------------------------------------------

X, Y = data()
DS = TensorDataset(X, Y)


@pytest.mark.parametrize("loader, words", [
    (DataLoader(DS, sampler=SubsetRandomSampler(range(30))), ["at random", "SubsetRandomSampler"]),
    (DataLoader(DS, sampler=WeightedRandomSampler([1.0] * 30, 30)), ["at random", "WeightedRandomSampler"]),
    (DataLoader(DS, sampler=list(torch.randperm(30, generator=torch.Generator().manual_seed(0)).tolist())),
     ["visits index", "in order"]),
    (DataLoader(DS, batch_sampler=[[0, 1, 2], [5, 4, 3]] + [[i] for i in range(6, 30)]),
     ["visits index 5 in position 3"]),
    (DataLoader(DS, sampler=range(0, 30, 2)), ["visits index 2 in position 1"]),
    (DataLoader(DS, sampler=range(20)), ["only 20 of the 30 rows"]),
    (DataLoader(DS, batch_size=8, drop_last=True), ["drop_last=True", "last 6 of 30 rows"]),
    (DataLoader(DS, shuffle=True), ["at random", "shuffle=False"]),
])
def test_loaders_that_reorder_or_drop_rows_are_refused(loader, words):
    refuses(lambda: est(nfk.Classifier(mlp())).fit(loader), *words)


def test_in_order_loaders_give_the_tensor_fit():
    lik = nfk.Classifier(mlp())
    E = est(lik).fit_transform(X)
    ds = TensorDataset(X)
    loaders = [DataLoader(ds, batch_size=8), DataLoader(ds, sampler=list(range(30))),
               DataLoader(ds, batch_size=6, drop_last=True)]  # 30 = 5 × 6: nothing dropped
    for loader in loaders:
        torch.testing.assert_close(est(lik).fit_transform(loader), E, rtol=1e-9, atol=1e-9)


class Reshuffles:
    """A sampler that is in order on its first pass only (the order check lists it twice)."""

    def __init__(self, n):
        self.n, self.passes = n, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        self.passes += 1
        order = list(range(self.n))
        return iter(order if self.passes == 1 else order[::-1])


def test_a_sampler_that_reshuffles_on_later_passes_is_refused():
    refuses(lambda: est(nfk.Classifier(mlp())).fit(DataLoader(DS, sampler=Reshuffles(30))), "visits index 29")


class Stream(IterableDataset):
    def __iter__(self):
        return iter(X)


@pytest.mark.parametrize("make", [lambda: Stream(), lambda: DataLoader(Stream(), batch_size=8)])
def test_iterable_datasets_are_refused(make):
    refuses(lambda: est(nfk.Classifier(mlp())).fit(make()), "not an IterableDataset", "TensorDataset")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=st.lists(st.integers(0, 11), min_size=0, max_size=14), batch=st.integers(1, 5),
       drop_last=st.booleans())
def test_property_loader_accepted_iff_every_row_once_in_order(order, batch, drop_last):
    ds = TensorDataset(torch.arange(12.0)[:, None])
    loader = DataLoader(ds, sampler=order, batch_size=batch, drop_last=drop_last)
    kept = len(order) - (len(order) % batch if drop_last else 0)
    in_order = order[:kept] == list(range(12))
    if in_order:
        source = DataSource(loader)
        rows = torch.cat([b[0] for b in source])
        assert source.n == 12 and torch.equal(rows[:, 0], torch.arange(12.0))
    else:
        with pytest.raises(NFKError):
            DataSource(loader)


# -- data that used to crash raw ---------------------------------------------------------------------

def test_data_with_requires_grad_gives_the_detached_answer():
    lik = nfk.Classifier(mlp(), score="label")
    E = est(lik).fit_transform((X, Y))
    torch.testing.assert_close(est(lik).fit_transform((X.clone().requires_grad_(), Y)), E, rtol=0, atol=0)


@pytest.mark.parametrize("bad, words", [(7, ["Label 7 of example 5", "3 classes", "0..2"]),
                                        (-1, ["Label -1 of example 5"])])
def test_out_of_range_labels_name_the_example(bad, words):
    y = Y.clone()
    y[5] = bad
    refuses(lambda: est(nfk.Classifier(mlp(), score="label")).fit((X, y)), *words)


def test_out_of_range_label_in_a_later_loader_batch():
    y = Y.clone()
    y[25] = 3
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    refuses(lambda: est(nfk.Classifier(mlp(), score="label")).fit(loader), "Label 3 of example 25")


def test_fractional_labels_are_refused():
    y = Y.double()
    y[2] = 1.5
    refuses(lambda: est(nfk.Classifier(mlp(), score="label")).fit((X, y)), "Label 1.5 of example 2", "whole")


def test_one_example_is_refused_not_embedded_as_zero():
    refuses(lambda: est(nfk.Classifier(mlp()), rank=1).fit(X[:1]), "at least 2 examples")


@pytest.mark.parametrize("seed", [10**23, -(2**63)])
def test_seed_out_of_range(seed):
    refuses(lambda: est(nfk.Classifier(mlp()), seed=seed).fit(X), "|seed| < 2**63")


def test_all_zero_fisher_vectors_are_refused():
    lik = nfk.Likelihood(lambda m, x: (m(x) * 0).sum(1), mlp())  # log p̃ does not depend on θ
    refuses(lambda: est(lik).fit(X), "are zero (trace K = 0)")


# -- overflow and damping ----------------------------------------------------------------------------

def per_example_grads(net, X):
    """Float64 oracle: per-example gradients of logsumexp(f(x)) by a plain autograd loop."""
    net64 = mlp(dtype=torch.float64)
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    rows = []
    for x in X.double():
        net64.zero_grad()
        torch.logsumexp(net64(x[None]), -1).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in net64.parameters()]))
    return torch.stack(rows)


def test_one_extreme_finite_row_in_float32_does_not_zero_the_fit():
    net = mlp(dtype=torch.float32)
    X32 = X.float().clone()
    X32[3] = 1e20
    e = est(nfk.Classifier(net))
    E = e.fit_transform(X32)
    G = per_example_grads(net, X32)
    diag = ((G - G.mean(0)) ** 2).mean(0)
    assert bool(torch.isfinite(e.fisher_.diag).all()) and e.fisher_.diag.max() > 1e30
    torch.testing.assert_close(e.fisher_.diag, diag, rtol=1e-4, atol=0)
    assert 0 < e.trace_ < float("inf")
    assert float(E.abs().max()) > 1.0 and bool(torch.isfinite(E).all())


def test_a_moment_beyond_float64_names_the_example():
    Xb = X.clone()
    Xb[4] = 1e200  # finite scores of ~1e200 whose squares overflow even float64
    lik = nfk.Likelihood(lambda m, x: m(x).sum(1), mlp())  # not centred
    refuses(lambda: est(lik).fit(Xb), "score of example 4", "too large for even float64")
    # centred: the mean is dominated by example 4, so every centred score overflows
    refuses(lambda: est(nfk.Classifier(mlp())).fit(Xb), "mean score is dominated", "extreme values")


@pytest.mark.parametrize("damping", [float("inf"), 1e300, float("nan")])
def test_huge_damping_is_refused(damping):
    fit = est(nfk.Classifier(mlp()), damping=damping).fit
    refuses(lambda: fit(X), "damping must be", "fisher='identity'")


def test_huge_damping_through_the_magic():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nfk_nb")
    ip.user_ns.update(net_safety=mlp(), X_safety=X)
    with pytest.raises(UsageError, match="damping must be a non-negative number at most"):
        ip.run_line_magic("nfk", "fit net_safety X_safety --rank 2 --damping inf")


# -- threads -----------------------------------------------------------------------------------------

def test_concurrent_transforms_are_correct_and_restore_the_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).double()
    net.train()
    Xt = torch.randn(120, 4, dtype=torch.float64)
    e = est(nfk.Classifier(net), batch_size=10)
    e.fit(Xt)
    expected = e.transform(Xt)
    outs, errors = {}, []

    def work(i):
        try:
            outs[i] = [e.transform(Xt) for _ in range(2)]
        except Exception as exc:  # noqa: BLE001 - reported below, with its type
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for results in outs.values():
        for E in results:
            torch.testing.assert_close(E, expected, rtol=0, atol=0)
    assert all(m.training for m in net.modules())


def test_forward_fallback_only_on_a_missing_forward_rule(monkeypatch):
    op = LogProbOperator(nfk.Classifier(mlp()), torch.device("cpu"), torch.float64)
    batch = op.to_batch((X[:4],))
    T = torch.randn(2, op.P, dtype=torch.float64)
    monkeypatch.setattr(op, "_strategy", lambda kind, k, b: "vmap")

    def unrelated(*a):
        raise RuntimeError("the forward pass of another thread changed a tensor")

    monkeypatch.setattr(op, "_jvp_vmap", unrelated)
    with pytest.raises(RuntimeError, match="another thread"):
        op.jvp(batch, T)
    assert op._no_forward_ad is False

    def missing(*a):
        raise RuntimeError("Trying to use forward AD with my_op that does not support it because it has "
                           "not been implemented yet.")

    monkeypatch.setattr(op, "_jvp_vmap", missing)
    dense = op._jvp_dense(batch, T)
    torch.testing.assert_close(op.jvp(batch, T), dense)
    assert op._no_forward_ad is True


def test_bad_seed_type():
    refuses(lambda: est(nfk.Classifier(mlp()), seed=1.5).fit(X), "seed must be an integer", exc=NFKTypeError)


def test_seed_out_of_range_through_the_magic():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nfk_nb")
    ip.user_ns.update(net_seed=mlp(), X_seed=X)
    with pytest.raises(UsageError, match=r"\|seed\| < 2\*\*63"):
        ip.run_line_magic("nfk", f"fit net_seed X_seed --rank 2 --seed {10**23}")
