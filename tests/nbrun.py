"""Run a tutorial notebook through papermill with small parameters and read its records."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nfk_nb.report import run_notebook as run_report

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "python3"  # the kernel every tutorial names (nfk_nb.report.DEFAULT_KERNEL)


def run_notebook(name: str, out_dir: Path, parameters: dict[str, Any] | None = None,
                 timeout: int = 300) -> dict[str, Any]:
    """Execute ``notebooks/<name>`` into ``out_dir``; return its ``nfk.record`` values.

    Raises papermill's ``PapermillExecutionError`` if any cell errors (``nfk_nb.report.run_notebook``,
    without the HTML report).
    """
    return run_report(NOTEBOOKS / name, out_dir, parameters, kernel_name=KERNEL, timeout=timeout,
                      html=False).records


def run_one_thread(name: str, tmp_path_factory: pytest.TempPathFactory, parameters: dict[str, Any],
                   timeout: int = 300) -> dict[str, Any]:
    """:func:`run_notebook` into a fresh folder with one PyTorch thread in the kernel: on a small
    shared CPU, two threads per process oversubscribe the cores and a run takes several times longer
    (measured 31 s vs 4 s for the same training)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
        return run_notebook(name, tmp_path_factory.mktemp(f"nb{name[:2]}"), parameters, timeout=timeout)


def code_cells(name: str) -> list[dict[str, Any]]:
    """The code cells of ``notebooks/<name>`` as committed."""
    nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def parameters_source(name: str) -> str:
    """Source of the single ``parameters``-tagged cell (asserts there is exactly one)."""
    tagged = [c for c in code_cells(name) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{name} must have exactly one cell tagged 'parameters'"
    return "".join(tagged[0]["source"])
