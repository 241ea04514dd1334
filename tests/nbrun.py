"""Run a tutorial notebook through papermill with small parameters and read its records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def code_cells(name: str) -> list[dict[str, Any]]:
    """The code cells of ``notebooks/<name>`` as committed."""
    nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def parameters_source(name: str) -> str:
    """Source of the single ``parameters``-tagged cell (asserts there is exactly one)."""
    tagged = [c for c in code_cells(name) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{name} must have exactly one cell tagged 'parameters'"
    return "".join(tagged[0]["source"])
