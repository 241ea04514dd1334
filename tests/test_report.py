"""``nfk-nb run`` / ``nfk-nb strip``: papermill reports, HTML, records, failures, stripping."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from nfk_nb.cli import main
from nfk_nb.records import read_records
from nfk_nb.report import has_outputs, parse_value, pick_kernel, run_notebook, strip_notebook

from .helpers import write_notebook


def _notebook(path: Path, body: str) -> Path:
    return write_notebook(path, "# tiny", "n = 2\nscale = 0.5\nname = 'a'", "import nfk_nb as nfk", body)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    return _notebook(folder / "01_tiny.ipynb",
                     "import os\nnfk.record('total', n * scale)\nnfk.record('name', name)\n"
                     "nfk.record('threads', os.environ.get('OMP_NUM_THREADS'))\nnfk.records_table()")


@pytest.mark.parametrize("text, value", [
    ("3", 3), ("-2", -2), ("0.25", 0.25), ("1e-3", 1e-3), ("True", True), ("False", False),
    ("None", None), ("cuda", "cuda"), ("3x", "3x"),
])
def test_parse_value_like_papermill(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_pick_kernel_is_explicit_else_the_tutorials_kernel():
    assert pick_kernel("other") == "other"
    assert pick_kernel() == "python3"


def test_cli_run_writes_notebook_html_and_records(tiny, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    out = tmp_path / "reports"
    rc = main(["run", str(tiny), "-p", "n", "7", "-p", "name", "zz", "--out", str(out), "--timeout", "120",
               "--threads", "1"])
    assert rc == 0
    executed, html = out / "01_tiny.ipynb", out / "01_tiny.html"
    assert executed.is_file() and html.is_file()
    assert read_records(executed) == {"total": 3.5, "name": "zz", "threads": "1"}
    assert os.environ["OMP_NUM_THREADS"] == "5"  # restored after the run
    page = html.read_text(encoding="utf-8")
    assert "<html" in page and "Recorded metrics" in page and ">3.5</td>" in page
    printed, errors = capfd.readouterr()  # file descriptors: the kernel's own stderr included
    assert "ok" in printed and "total = 3.5" in printed
    assert "without encryption" not in printed + errors


def test_run_all_continues_after_a_failure_and_exits_nonzero(tmp_path, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "02_broken.ipynb", "raise RuntimeError('boom from the notebook')")
    _notebook(folder / "03_after.ipynb", "nfk.record('after', n + 1)")
    (folder / "scratch.ipynb").write_text("not a tutorial")  # not NN_*: ignored
    out = tmp_path / "reports"
    rc = main(["run", "--all", "--dir", str(folder), "--out", str(out), "--no-html"])
    assert rc == 1
    printed = capsys.readouterr().out
    assert "FAIL  02_broken.ipynb" in printed and "boom from the notebook" in printed
    assert "1/2 notebooks ran without error" in printed
    assert read_records(out / "03_after.ipynb") == {"after": 3}
    assert not (out / "03_after.html").exists() and not (out / "scratch.ipynb").exists()


def test_run_notebook_raises_by_default_and_still_writes_the_report(tmp_path):
    import papermill as pm

    bad = _notebook(tmp_path / "bad.ipynb", "nfk.record('before', 1)\nraise ValueError('nope')")
    with pytest.raises(pm.PapermillExecutionError):
        run_notebook(bad, tmp_path / "out", timeout=120)
    assert (tmp_path / "out" / "bad.html").is_file()
    assert read_records(tmp_path / "out" / "bad.ipynb") == {"before": 1}


def test_cli_run_argument_errors(tmp_path, capsys):
    assert main(["run"]) == 2
    assert main(["run", str(tmp_path / "missing.ipynb"), "--out", str(tmp_path)]) == 1
    assert "No notebook at" in capsys.readouterr().out


def test_strip_removes_outputs_and_check_reports_them(tmp_path, capsys):
    path = _notebook(tmp_path / "nb.ipynb", "print(1)")
    nb = json.loads(path.read_text())
    nb["cells"][3]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "1\n"}]
    nb["cells"][3]["execution_count"] = 4
    nb["metadata"]["papermill"] = {"duration": 1.0}
    path.write_text(json.dumps(nb))
    assert has_outputs(nb)
    assert main(["strip", "--check", str(path)]) == 1
    assert json.loads(path.read_text()) == nb  # --check changes nothing
    assert main(["strip", str(path)]) == 0
    clean = json.loads(path.read_text())
    assert not has_outputs(clean) and "papermill" not in clean["metadata"]
    assert "".join(clean["cells"][3]["source"]) == "print(1)"
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))
    assert main(["strip", "--check", str(path)]) == 0
    assert strip_notebook(path) is False  # idempotent
    assert "has outputs" in capsys.readouterr().out
