"""Issue 11: checkpoints identify all of the data and every setting; a fitted estimator notices new
weights; hostile saved metadata is refused in one sentence; writes that fail say so in one sentence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from safetensors.torch import load_file, save_file
from torch import nn

import nfk_nb as nfk
from nfk_nb.checkpoint import FitCheckpoint
from nfk_nb.errors import NFKError
from nfk_nb.serialization import meta_checksum, tensors_checksum

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("float64_default")


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def data(n=30, seed=1):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


def est(lik, **kw):
    return nfk.LowRankNFK(lik, **{"rank": 3, "power_iters": 1, "batch_size": 10, "progress": False, **kw})


class Crash(Exception):
    pass


def crash_after_first_save(monkeypatch):
    real = FitCheckpoint.save

    def save(self, tensors, info):
        real(self, tensors, info)
        raise Crash

    monkeypatch.setattr(FitCheckpoint, "save", save)


def crashed_fit(monkeypatch, lik, X, path) -> None:
    """A fit of ``X`` with checkpoint ``path`` killed right after its first save (the file stays)."""
    with monkeypatch.context() as m:
        crash_after_first_save(m)
        with pytest.raises(Crash):
            est(lik).fit(X, checkpoint=path)


# -- checkpoints -------------------------------------------------------------------------------------

def test_data_changed_after_the_first_batch_is_refused_on_resume(tmp_path, monkeypatch):
    lik, X = nfk.Classifier(mlp()), data()
    path = tmp_path / "fit.ckpt"
    crashed_fit(monkeypatch, lik, X, path)
    X2 = X.clone()
    X2[25] += 1.0  # same size, same first batch, one row of the last batch changed
    with pytest.raises(NFKError, match="The data differ from those"):
        est(lik).fit(X2, checkpoint=path)
    assert path.exists()  # refused, not consumed: the original data still resume from it
    torch.testing.assert_close(est(lik).fit_transform(X, checkpoint=path), est(lik).fit_transform(X))


def test_resume_with_the_same_data_is_unchanged(tmp_path, monkeypatch):
    lik, X = nfk.Classifier(mlp()), data()
    path = tmp_path / "fit.ckpt"
    crashed_fit(monkeypatch, lik, X, path)
    assert torch.equal(est(lik).fit_transform(X, checkpoint=path), est(lik).fit_transform(X))


def _log_prob_a(m, x):
    return m(x).sum(1)


def _log_prob_b(m, x):
    return m(x).logsumexp(1)


def test_a_log_prob_with_other_code_is_another_fit(tmp_path, monkeypatch):
    net, X = mlp(), data()
    path = tmp_path / "fit.ckpt"
    crashed_fit(monkeypatch, nfk.Likelihood(_log_prob_a, net), X, path)
    other = _log_prob_b
    other.__qualname__ = _log_prob_a.__qualname__  # same name, other code
    with pytest.raises(NFKError, match="belongs to another fit"):
        est(nfk.Likelihood(other, net)).fit(X, checkpoint=path)


def test_other_sampler_draws_are_another_fit(tmp_path, monkeypatch):
    torch.manual_seed(0)
    gen = nn.Linear(2, 4)
    lik = nfk.EnergyModel(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)),
                          sampler=lambda n: gen(torch.randn(n, 2)), n_samples=40)
    X, path = data(), tmp_path / "fit.ckpt"
    crashed_fit(monkeypatch, lik, X, path)
    with torch.no_grad():
        gen.weight.mul_(2.0)  # the generator was trained on: other reference draws
    with pytest.raises(NFKError, match="belongs to another fit"):
        est(lik).fit(X, checkpoint=path)


# -- stale fitted state ------------------------------------------------------------------------------

def test_transform_after_training_in_place_warns_and_uses_the_new_weights():
    net, X = mlp(), data()
    e = est(nfk.Classifier(net))
    E = e.fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(e.transform(X), E)  # unchanged weights: no warning
    with torch.no_grad():
        net[0].weight.add_(0.5)
    with pytest.warns(UserWarning, match="weights differ from those this estimator was fitted with"):
        E2 = e.transform(X)
    fresh = est(nfk.Classifier(net)).load_state_dict(e.state_dict())  # same fit, current weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(E2, fresh.transform(X))
    assert not torch.allclose(E2, E, atol=1e-3)


def test_a_replaced_parameter_object_is_seen():
    net, X = mlp(), data()
    e = est(nfk.Classifier(net))
    E = e.fit_transform(X)
    net[2].weight = nn.Parameter(net[2].weight.detach() * 3)
    with pytest.warns(UserWarning, match="weights differ"):
        E2 = e.transform(X)
    assert not torch.allclose(E2, E, atol=1e-3)


def test_set_params_invalidates_the_operator():
    X = data()
    e = est(nfk.Classifier(mlp()))
    e.fit(X)
    assert e.operator.dtype == torch.float64
    e.set_params(dtype=torch.float32)
    assert e.operator.dtype == torch.float32
    other = nfk.Classifier(mlp(seed=5))
    e.set_params(lik=other)
    assert e.operator.lik is other


# -- hostile metadata --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        lik, X = nfk.Classifier(mlp()), data()
        path = tmp_path_factory.mktemp("saved") / "est.safetensors"
        est(lik).fit(X).save(path)
    finally:
        torch.set_default_dtype(old)
    return path


def rewrite(src: Path, dst: Path, mutate) -> None:
    """Copy a saved file with its metadata changed and every checksum recomputed (a careful forger)."""
    tensors = load_file(src)
    with open(src, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(json.loads(f.read(n))["__metadata__"]["nfk_nb"])
    mutate(meta)
    meta["checksum"] = tensors_checksum(tensors)
    meta["meta_checksum"] = meta_checksum(meta)
    save_file(tensors, dst, metadata={"nfk_nb": json.dumps(meta)})


def setter(path: str, value):
    def mutate(meta):
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


@pytest.mark.parametrize("field, value", [
    ("params.whiten", "no"), ("fisher.kind", "magic"), ("fisher.damping", -1.0),
    ("format_version", True), ("fisher.n_reference", "abc"), ("params.rank", 2.5),
    ("fitted.trace", "NaN"), ("params.seed", 10**30), ("fisher.damping", 1e300),
])
def test_hostile_metadata_fields_are_refused(saved, tmp_path, field, value):
    path = tmp_path / "bad.safetensors"
    rewrite(saved, path, setter(field, value))
    with pytest.raises(NFKError) as info:
        nfk.LowRankNFK.load(path, nfk.Classifier(mlp()))
    assert field.split(".")[-1] in str(info.value)


def test_deeply_nested_metadata_is_refused(saved, tmp_path):
    path = tmp_path / "deep.safetensors"
    tensors = load_file(saved)
    save_file(tensors, path, metadata={"nfk_nb": json.dumps({"format": "nfk_nb.lowrank"})[:-1]
                                       + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"})
    with pytest.raises(NFKError, match="nested|not a readable|altered"):
        nfk.LowRankNFK.load(path, nfk.Classifier(mlp()))


SCALARS = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True)
           | st.text(max_size=5))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c,
                                                                                 max_size=3), max_leaves=6)
FIELDS = ["params.rank", "params.whiten", "params.seed", "params.damping", "params.batch_size",
          "params.fisher", "params.chunk_size", "params.sketch", "params.dtype", "fisher.kind",
          "fisher.damping", "fisher.n_reference", "fitted.n_samples_fit", "fitted.trace",
          "fitted.fit_time", "format_version", "fingerprint", "likelihood"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_property_perturbed_metadata_loads_correctly_or_raises_nfkerror(saved, tmp_path, field, value):
    path = tmp_path / "perturbed.safetensors"
    rewrite(saved, path, setter(field, value))
    try:
        loaded = nfk.LowRankNFK.load(path, nfk.Classifier(mlp()))
    except NFKError:
        return
    assert type(loaded.whiten) is bool and type(loaded.rank) is int and loaded.rank >= 1
    assert loaded.fisher_.kind in ("diagonal", "identity", "kfac") and 0 <= loaded.fisher_.damping < 1e7
    assert type(loaded.fisher_.n_reference) is int and loaded.fisher_.n_reference >= 1


def test_load_of_a_file_with_a_huge_header_length(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.raises(NFKError):
        nfk.LowRankNFK.load(path, nfk.Classifier(mlp()))
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nfk_nb")
    ip.user_ns["net_state"] = mlp()
    with pytest.raises(UsageError, match="weights.pt"):
        ip.run_line_magic("nfk", f"load {path} net_state")


# -- writes that fail --------------------------------------------------------------------------------

FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from torch import nn
    import nfk_nb as nfk
    from nfk_nb.errors import NFKError
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    e = nfk.LowRankNFK(nfk.Classifier(net), rank=2, power_iters=0, progress=False).fit(torch.randn(20, 4))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # as a full disk: writes fail past 1000 bytes
    try:
        e.save(sys.argv[1])
    except NFKError as exc:
        print("API", type(exc).__mro__[1].__name__, isinstance(exc, OSError), exc)
    from IPython.core.interactiveshell import InteractiveShell
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nfk_nb")
    ip.user_ns["e"] = e
    try:
        ip.run_line_magic("nfk", f"save e {sys.argv[1]}")
    except Exception as exc:
        print("MAGIC", type(exc).__name__, exc)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_a_full_disk_is_one_sentence_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "est.safetensors"
    path.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    lines = out.stdout.splitlines()
    api = next(line for line in lines if line.startswith("API"))
    magic = next(line for line in lines if line.startswith("MAGIC"))
    assert "True" in api and f"Cannot write {str(path)!r}" in api and "File too large" in api
    assert magic.startswith("MAGIC UsageError") and "Cannot write" in magic and "Traceback" not in out.stdout
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
