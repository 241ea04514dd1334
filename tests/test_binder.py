"""The Binder spec installs everything the notebooks import and everything the package depends on."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from nfk_nb.report import DEFAULT_KERNEL

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# import name -> distribution name, where they differ (or the import comes from another package)
DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "IPython": "ipython",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "mpl_toolkits": "matplotlib",
    "nbformat": "nbformat",
}
# installed with a listed distribution (a dependency of it), so not listed themselves
PROVIDED_BY = {"nbformat": "papermill", "jupyter_client": "ipykernel", "traitlets": "ipython"}
OWN = {"nfk_nb"}


def normalize(name: str) -> str:
    """PEP 503 name normalisation (``Scikit_Learn`` == ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    return normalize(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0])


def binder_requirements() -> set[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return {n for n in map(requirement_name, lines) if n}


def notebook_imports(path: Path) -> set[str]:
    """Top-level module names imported by the code cells (magics translated by IPython first)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    transform = TransformerManager().transform_cell
    names: set[str] = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        tree = ast.parse(transform(source), filename=f"{path.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def distribution(module: str) -> str | None:
    """The distribution that provides ``module`` (None for the standard library and nfk_nb)."""
    if module in sys.stdlib_module_names or module in OWN:
        return None
    return normalize(DISTRIBUTIONS.get(module, module))


def test_there_are_notebooks_to_check():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_import_is_in_the_binder_spec(path):
    have = binder_requirements()
    provided = {normalize(k) for k, v in PROVIDED_BY.items() if normalize(v) in have}
    missing = sorted(
        d for d in map(distribution, notebook_imports(path)) if d and d not in have | provided
    )
    assert not missing, f"{path.name} imports {missing}, which binder/requirements.txt does not install"


def test_package_dependencies_are_in_the_binder_spec():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {requirement_name(d) for d in project["dependencies"]}
    missing = sorted(deps - binder_requirements())
    assert not missing, f"pyproject.toml dependencies missing from binder/requirements.txt: {missing}"


def test_binder_torch_is_cpu_only_and_python_fits():
    text = (BINDER / "requirements.txt").read_text()
    assert re.search(r"^--(extra-)?index-url\s+https://download\.pytorch\.org/whl/cpu\s*$", text, re.M)
    assert "torch" in binder_requirements()
    runtime = (BINDER / "runtime.txt").read_text().strip()
    major, minor = map(int, re.fullmatch(r"python-(\d+)\.(\d+)", runtime).groups())
    need = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    low = tuple(map(int, re.search(r">=\s*(\d+)\.(\d+)", need).groups()))
    assert (major, minor) >= low


def test_post_build_installs_registers_kernel_and_enables_extension():
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    lines = [s.strip() for s in post.read_text().splitlines() if s.strip() and not s.startswith("#")]
    assert lines[0] == "set -euo pipefail"
    assert any(re.search(r"pip install .*-e \.$", s) for s in lines)
    assert any("ipykernel install" in s and f"--name {DEFAULT_KERNEL}" in s for s in lines)
    assert "nfk-nb enable-extension" in lines


def test_import_scanner_sees_imports_inside_cells_with_magics(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": [
        "%load_ext nfk_nb\n", "import numpy as np, os\n", "from sklearn.linear_model import Ridge\n",
        "!echo hi\n", "def f():\n", "    import scipy.linalg\n",
    ]}, {"cell_type": "markdown", "source": ["import nothing"]}]}
    p = tmp_path / "x.ipynb"
    p.write_text(json.dumps(nb))
    found = notebook_imports(p)
    assert found == {"numpy", "os", "sklearn", "scipy"}
    assert {distribution(m) for m in found} == {"numpy", None, "scikit-learn", "scipy"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_names_the_kernel_that_binder_and_make_lab_register(path):
    spec = json.loads(path.read_text(encoding="utf-8"))["metadata"]["kernelspec"]
    assert spec["name"] == DEFAULT_KERNEL and spec["language"] == "python"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^KERNEL := {DEFAULT_KERNEL}$", makefile, re.M)
    assert "ipykernel install --sys-prefix --name $(KERNEL)" in makefile


def test_post_build_commands_exist():
    from nfk_nb.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"enable-extension", "run"} <= set(sub.choices)
