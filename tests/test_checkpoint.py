"""``fit(X, checkpoint=path)``: resume after a crash (even SIGKILL), same result; refuse others' state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import nfk_nb as nfk
from nfk_nb.checkpoint import FitCheckpoint
from nfk_nb.errors import NFKError
from nfk_nb.serialization import load_state

# Model and data shared by the in-process tests and the subprocess (float64, seeded).
BUILD = textwrap.dedent(
    """
    import torch
    from torch import nn
    import nfk_nb as nfk

    def build(n=30, d=6, seed=0):
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 4))
        X = torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 1))
        return nfk.Classifier(net), X

    def estimator(lik, progress=False, **kw):
        kw = {"rank": 4, "power_iters": 2, "batch_size": 10, "seed": 3, **kw}
        return nfk.LowRankNFK(lik, progress=progress, **kw)
    """
)
_ns: dict = {}
exec(BUILD, _ns)  # noqa: S102 - the same code runs in the subprocess
build, estimator = _ns["build"], _ns["estimator"]


pytestmark = pytest.mark.usefixtures("float64_default")


class Crash(Exception):
    pass


def crash_after(monkeypatch, n_saves: int) -> None:
    """Make the fit die right after its ``n_saves``-th checkpoint is written."""
    real = FitCheckpoint.save
    count = {"n": 0}

    def save(self, tensors, info):
        real(self, tensors, info)
        count["n"] += 1
        if count["n"] == n_saves:
            raise Crash

    monkeypatch.setattr(FitCheckpoint, "save", save)


def energy():
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    gen = nn.Linear(3, 6)
    disc = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 1))
    X = torch.randn(30, 6, generator=torch.Generator().manual_seed(2))
    return nfk.EnergyModel(disc, sampler=lambda n: gen(torch.randn(n, 3)), n_samples=50), X


_REFERENCE: dict = {}


def problem(family: str):
    """Likelihood, data and the uninterrupted fit's embedding (computed once per family)."""
    if family not in _REFERENCE:
        lik, X = build() if family == "classifier" else energy()
        _REFERENCE[family] = (lik, X, estimator(lik).fit_transform(X))
    return _REFERENCE[family]


@pytest.mark.parametrize(
    "family, stop",
    # classifier: 1 Fisher checkpoint + 6 sketch passes; energy: Fisher, trace, then 6 sketch passes
    [("classifier", 1), ("classifier", 4), ("energy", 2), ("energy", 8)],
)
def test_resume_after_crash_is_bitwise_identical(family, stop, tmp_path, monkeypatch):
    lik, X, reference = problem(family)
    path = tmp_path / "fit.ckpt"
    with monkeypatch.context() as m:
        crash_after(m, stop)
        with pytest.raises(Crash):
            estimator(lik).fit(X, checkpoint=path)
    _, meta = load_state(path, "nfk_nb.checkpoint")
    assert meta["state"]["sketch_passes"] == max(0, stop - (1 if family == "classifier" else 2))
    est = estimator(lik)
    resumed = est.fit_transform(X, checkpoint=path)
    assert torch.equal(resumed, reference)
    torch.testing.assert_close(est.transform(X[:5]), reference[:5], rtol=0, atol=1e-10)
    assert not path.exists() and not list(tmp_path.iterdir())  # deleted after success


def test_resume_skips_finished_passes(tmp_path, monkeypatch):
    lik, X = build()
    path = tmp_path / "fit.ckpt"
    with monkeypatch.context() as m:
        crash_after(m, 3)
        with pytest.raises(Crash):
            estimator(lik).fit(X, checkpoint=path)
    calls = {"fisher": 0, "jvp": 0}
    import nfk_nb.fitting as lowrank

    real_fisher, real_matvec = lowrank.estimate_fisher, lowrank.FisherVectorProducts.matvec

    def fisher(*a, **k):
        calls["fisher"] += 1
        return real_fisher(*a, **k)

    def matvec(self, U, **kw):
        calls["jvp"] += 1
        return real_matvec(self, U, **kw)

    monkeypatch.setattr(lowrank, "estimate_fisher", fisher)
    monkeypatch.setattr(lowrank.FisherVectorProducts, "matvec", matvec)
    estimator(lik).fit(X, checkpoint=path)
    # Fisher + 2 of 6 sketch passes done; left: 2 of the 3 matvec passes, and the embedding
    assert calls == {"fisher": 0, "jvp": 3}


def _make_checkpoint(tmp_path, monkeypatch, lik, X, **kw) -> Path:
    path = tmp_path / "fit.ckpt"
    with monkeypatch.context() as m:
        crash_after(m, 2)
        with pytest.raises(Crash):
            estimator(lik, **kw).fit(X, checkpoint=path)
    return path


def test_other_settings_data_or_model_are_refused(tmp_path, monkeypatch):
    lik, X = build()
    path = _make_checkpoint(tmp_path, monkeypatch, lik, X)
    before = path.read_bytes()
    cases = [
        (lambda: estimator(lik, rank=3).fit(X, checkpoint=path), "rank: 4 in the checkpoint, 3 now"),
        (lambda: estimator(lik, seed=4).fit(X, checkpoint=path), "seed: 3 in the checkpoint, 4 now"),
        (lambda: estimator(lik, fisher="identity").fit(X, checkpoint=path),
         "fisher: 'diagonal' in the checkpoint, 'identity' now"),
        (lambda: estimator(lik).fit(X[:25], checkpoint=path), "data size: 30 in the checkpoint, 25 now"),
        (lambda: estimator(lik).fit(X + 1, checkpoint=path), "different data (first batch)"),
        (lambda: estimator(build(seed=5)[0]).fit(X, checkpoint=path), "different model weights"),
        (lambda: estimator(nfk.Classifier(nn.Sequential(nn.Linear(6, 15), nn.Tanh(), nn.Linear(15, 4))))
         .fit(X, checkpoint=path), "different model (parameter names or shapes)"),
        (lambda: estimator(nfk.Classifier(lik.model, score="predicted")).fit(X, checkpoint=path),
         "score: 'joint' in the checkpoint, 'predicted' now"),
        (lambda: estimator(nfk.Likelihood(_joint, lik.model, partition="data")).fit(X, checkpoint=path),
         "family: 'classifier' in the checkpoint, 'custom' now"),
    ]
    for call, words in cases:
        with pytest.raises(NFKError) as info:
            call()
        msg = str(info.value)
        assert "belongs to another fit" in msg and words in msg and "delete it" in msg, msg
    assert path.read_bytes() == before  # a refused checkpoint is left alone
    # settings that do not change the numbers may differ
    estimator(lik, whiten=True, progress=lambda **k: _NullBar()).fit(X, checkpoint=path)
    assert not path.exists()


def _joint(model, x):
    return torch.logsumexp(model(x), -1)


class _NullBar:
    def update(self, n):
        pass

    def close(self):
        pass


def test_damaged_or_foreign_checkpoint_is_refused(tmp_path, monkeypatch):
    lik, X = build()
    path = _make_checkpoint(tmp_path, monkeypatch, lik, X)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NFKError, match="not a readable fit checkpoint"):
        estimator(lik).fit(X, checkpoint=path)
    est = estimator(lik).fit(X)
    est.save(path)
    with pytest.raises(NFKError, match="format is 'nfk_nb.lowrank', expected 'nfk_nb.checkpoint'"):
        estimator(lik).fit(X, checkpoint=path)


def test_checkpoint_never_unpickles(tmp_path, monkeypatch):
    import pickle

    lik, X = build()
    path = _make_checkpoint(tmp_path, monkeypatch, lik, X)
    for mod, name in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(mod, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("unpickled")))
    estimator(lik).fit(X, checkpoint=path)


# -- a real crash: SIGKILL of a subprocess --------------------------------------------------------

CHILD = BUILD + textwrap.dedent(
    """
    import sys, time
    from safetensors.torch import save_file
    import nfk_nb.fitting as lowrank

    mode, ckpt, out = sys.argv[1:4]
    calls = {"fisher": 0}
    real = lowrank.estimate_fisher
    def counted(*a, **k):
        calls["fisher"] += 1
        return real(*a, **k)
    lowrank.estimate_fisher = counted

    class SlowBar:  # slows every batch so that the parent can kill the fit mid-way
        def __init__(self, total, desc):
            pass
        def update(self, n):
            if mode == "slow":
                time.sleep(0.3)
        def close(self):
            pass

    lik, X = build()
    E = estimator(lik, progress=SlowBar).fit_transform(X, checkpoint=ckpt)
    save_file({"E": E}, out)
    print("fisher_calls", calls["fisher"])
    """
)


def test_sigkill_then_rerun_matches_uninterrupted_fit(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ckpt, out = tmp_path / "fit.ckpt", tmp_path / "E.safetensors"
    env = {**os.environ, "PYTHONPATH": str(Path(nfk.__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, str(script), "slow", str(ckpt), str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not ckpt.exists():
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL and not out.exists()
    _, meta = load_state(ckpt, "nfk_nb.checkpoint")
    assert meta["state"]["sketch_passes"] < 6  # killed before the end of the sketch

    rerun = subprocess.run([sys.executable, str(script), "fast", str(ckpt), str(out)], env=env,
                           capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert b"fisher_calls 0" in rerun.stdout  # resumed: the Fisher passes were not redone
    assert not ckpt.exists() and not list(tmp_path.glob(".fit.ckpt.*"))  # no temporaries left
    _, _, reference = problem("classifier")
    resumed = load_file(out)["E"]
    torch.testing.assert_close(resumed, reference, rtol=0, atol=1e-12)


def _scaled_joint(model, x):
    return 2 * torch.logsumexp(model(x), -1)


def test_custom_log_prob_functions_are_told_apart(tmp_path, monkeypatch):
    lik, X = build()
    custom = nfk.Likelihood(_joint, lik.model, partition="data")
    path = _make_checkpoint(tmp_path, monkeypatch, custom, X)
    other = nfk.Likelihood(_scaled_joint, lik.model, partition="data")
    with pytest.raises(NFKError, match=r"log_prob function: '\S*_joint' in the checkpoint, "
                                       r"'\S*_scaled_joint' now"):
        estimator(other).fit(X, checkpoint=path)
