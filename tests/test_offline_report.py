"""HTML reports read complete offline: math as MathML, no script from a network, widgets as pictures."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbconvert import HTMLExporter

from nfk_nb.cli import main
from nfk_nb.export import external_scripts, markdown_math_to_mathml, offline_html

from .helpers import write_notebook
from .nbrun import NOTEBOOKS

TUTORIALS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_math_becomes_mathml_and_code_and_prices_stay():
    out = markdown_math_to_mathml("cost $5 and $6; `$x$` in code; $$K = V V^\\top$$ and $I^{-1/2}$")
    assert out.startswith("cost $5 and $6; `$x$` in code; ")
    assert out.count("<math") == 2 and 'display="block"' in out and "$" not in out.split("code; ")[1]
    # a formula inside a markdown table cell must not break the table: no raw "|" left
    cell = markdown_math_to_mathml("| $\\|K - K_k\\|_F$ | 1 |")
    assert cell.count("|") == 3 and "<math" in cell


def test_the_scanner_finds_nbconverts_default_cdn_scripts():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("$x^2$")])
    page, _ = HTMLExporter().from_notebook_node(nb)
    assert any("mathjax" in s for s in external_scripts(page))
    assert external_scripts('<script type="module">import m from "https://cdn.example/m.mjs"</script>')


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_every_tutorial_exports_with_rendered_math_and_no_external_script(path):
    nb = nbformat.read(str(path), as_version=4)
    page = offline_html(nb)
    assert external_scripts(page) == []
    assert not re.search(r"https?://[^\"'\s]*\.m?js\b", page)
    tex = [c.source for c in nb.cells if c.cell_type == "markdown" and "$" in c.source]
    if tex:
        assert "<math" in page
    body = re.sub(r"<pre.*?</pre>|<code.*?</code>", "", page, flags=re.S)
    assert not re.findall(r"\$\$|\\\\(?:top|mathrm|lambda|nabla|sum)\b", body)  # no LaTeX left unrendered


@pytest.mark.timeout(240)
def test_a_report_shows_the_explorer_as_a_picture(tmp_path: Path):
    src = write_notebook(
        tmp_path / "01_explorer.ipynb", "# Explorer\nThe kernel $K(x, z) = v(x)^\\top v(z)$.", "n = 40",
        "import numpy as np\nimport nfk_nb as nfk\nfrom nfk_nb.widgets import EmbeddingExplorer\n"
        "rng = np.random.default_rng(0)\nE = rng.normal(size=(n, 4))\ny = np.arange(n) % 3\n"
        "nfk.record('n', n)\nEmbeddingExplorer(E, y, rng.random((n, 16)), shape=(4, 4))",
        "nfk.records_table()")
    assert main(["run", str(src), "--out", str(tmp_path / "reports"), "--timeout", "200"]) == 0
    page = (tmp_path / "reports" / "01_explorer.html").read_text(encoding="utf-8")
    assert external_scripts(page) == []
    assert "<math" in page and "$" not in page.split("<body")[1].split("jp-Cell-inputWrapper")[0]
    # the widget's view is dropped (no saved state) and its still picture is shown, at display size
    pictures = re.findall(r'<img[^>]*src="data:image/png;base64,[^"]+"[^>]*>', page)
    assert len(pictures) == 1 and 'width="720"' in pictures[0]
    assert "application/vnd.nfk_nb.record+json" not in page and "Recorded metrics" in page
