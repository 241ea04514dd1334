"""Small helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import torch


def same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two modules' parameters are equal, tensor by tensor."""
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def write_notebook(path: Path, title: str, parameters: str, *cells: str) -> Path:
    """A small notebook at ``path`` for the report runner: a markdown ``title``, a
    ``parameters``-tagged code cell, then one code cell per entry of ``cells``, on the ``python3``
    kernel every tutorial names."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(title), params, *map(nbformat.v4.new_code_cell, cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, str(path))
    return path
