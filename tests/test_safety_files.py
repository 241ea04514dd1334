"""Issue 11: saves leave nothing behind and respect the umask; ``nfk-nb run`` never writes over its
input, checks parameter names and summarises a timeout readably."""

from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient.exceptions import CellTimeoutError

import nfk_nb as nfk
from nfk_nb import serialization
from nfk_nb.errors import NFKError
from nfk_nb.report import _first_line, run_command, run_notebook


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    X = torch.randn(12, 3, dtype=torch.float64)
    est = nfk.LowRankNFK(nfk.Classifier(net), rank=2, power_iters=0, progress=False)
    est.fit(X)
    return est


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid (until the system reuses it)


def test_a_later_save_removes_temporaries_of_killed_saves(tmp_path, fitted):
    path = tmp_path / "est.safetensors"
    host = serialization._HOST
    dead = tmp_path / f".est.safetensors.{host}-{_dead_pid()}.0a1b2c.tmp"
    live = tmp_path / f".est.safetensors.{host}-{os.getpid()}.3d4e5f.tmp"  # a save in progress here
    old = tmp_path / ".est.safetensors.k2j4h5g6.tmp"  # an older nfk_nb's name, two hours old
    other = tmp_path / ".est.safetensors.otherhost-1.aaaaaa.tmp"  # another machine's, just written
    for f in (dead, live, old, other):
        f.write_bytes(b"partial")
    os.utime(old, (os.path.getmtime(old) - 7200,) * 2)
    fitted.save(path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([path.name, live.name, other.name])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_file_mode_follows_the_umask(tmp_path, fitted, umask, mode):
    old = os.umask(umask)
    try:
        fitted.save(tmp_path / "est.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "est.safetensors").stat().st_mode & 0o777 == mode


# -- nfk-nb run ------------------------------------------------------------------------------------

def _notebook(path: Path, source: str = "x = 1") -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("n = 1")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, str(path))
    return path


def _args(notebook, out, params=()):
    return Namespace(all=False, notebook=str(notebook), dir="notebooks", parameter=[list(p) for p in params],
                     out=str(out), timeout=60, kernel=None, threads=None, no_html=True)


def test_run_refuses_to_write_over_its_notebook(tmp_path, capsys):
    nb = _notebook(tmp_path / "01_demo.ipynb")
    before = nb.read_bytes()
    assert run_command(_args(nb, tmp_path)) == 1
    out = capsys.readouterr().out
    assert "is the notebook's own folder" in out and "pass another --out folder" in out
    assert nb.read_bytes() == before
    with pytest.raises(NFKError, match="would overwrite"):
        run_notebook(nb, tmp_path / "." / "sub" / "..")


@pytest.mark.parametrize("name", ["x;import os", "1x", "class", "a b", ""])
def test_run_refuses_parameter_names_that_are_not_identifiers(tmp_path, name):
    nb = _notebook(tmp_path / "01_demo.ipynb")
    with pytest.raises(NFKError, match="is not a Python identifier"):
        run_notebook(nb, tmp_path / "out", {name: 1})
    assert not (tmp_path / "out").exists()


def test_timeout_summary_is_the_reason_not_a_rule():
    cell = nbformat.v4.new_code_cell("import time\ntime.sleep(100)")
    exc = CellTimeoutError.error_from_timeout_and_cell("Cell execution timed out", 5, cell)
    line = _first_line(exc)
    assert "timed out" in line and "5 seconds" in line
    assert _first_line(RuntimeError("banner\n-------------------\nValueError: bad value\n-----")) == \
        "ValueError: bad value"
