"""Local workers die with a killed caller and leave no temporary folder; errors name global rows."""

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

import nfk_nb as nfk
from nfk_nb.errors import NFKError
from nfk_nb.launch import fit_workers

ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

CALLER = textwrap.dedent(
    """
    import os, sys, time
    import nfk_nb.orphans
    from nfk_nb.launch import run_workers

    if sys.argv[2] == "poll":  # the fallback of systems without PR_SET_PDEATHSIG
        nfk_nb.orphans._set_pdeathsig = lambda sig: False

    def wait_forever(rank, world, progress, folder):
        open(os.path.join(folder, f"started{rank}"), "w").close()
        time.sleep(600)

    run_workers(wait_forever, [(sys.argv[1],), (sys.argv[1],)])
    """
)


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@linux_only
@pytest.mark.parametrize("sig, how", [(signal.SIGKILL, "kernel"), (signal.SIGTERM, "poll")])
def test_killed_caller_leaves_no_worker_and_no_folder(tmp_path, sig, how):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    caller = subprocess.Popen([sys.executable, "-c", CALLER, str(marks), how], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list(marks.iterdir())) < 2:
            assert caller.poll() is None, "the caller ended before its workers started"
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.1)
        workers = _children(caller.pid)
        assert len(workers) == 3  # two workers and the janitor
        assert len(list(tmp.glob("nfk_workers_*"))) == 1
        caller.send_signal(sig)
        caller.wait(10)
        deadline = time.monotonic() + 20
        def leftovers():
            return [p for p in workers if _alive(p)], list(tmp.glob("nfk_workers_*"))

        while leftovers() != ([], []) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftovers() == ([], [])  # no worker (nor janitor) alive, the temporary folder gone
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()


def test_error_in_a_worker_names_the_global_row(float64_default):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    X = torch.randn(1200, 3)
    X[1000, 1] = float("nan")
    est = nfk.LowRankNFK(nfk.Classifier(net), rank=2, power_iters=0, progress=False)
    with pytest.raises(NFKError, match=r"first at example 1000\)"):
        fit_workers(est, X, workers=2)


def test_workers_finishing_normally_leave_no_folder(tmp_path, monkeypatch, float64_default):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    X = torch.randn(20, 3)
    est = nfk.LowRankNFK(nfk.Classifier(net), rank=2, power_iters=0, progress=False)
    E = fit_workers(est, X, workers=2)
    assert E.shape == (20, 2)
    assert list(tmp_path.glob("nfk_workers_*")) == []
