"""``nfk.record`` stores invisibly; ``nfk.records_table`` shows every metric once, rounded."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pytest
import torch

import nfk_nb as nfk
from nfk_nb import records
from nfk_nb.records import MIME, format_value

from .nbrun import NOTEBOOKS


@pytest.fixture
def session(monkeypatch):
    """A clean record list and a captured ``display``, as inside a kernel."""
    shown = []
    monkeypatch.setattr(records, "_SESSION", {})
    monkeypatch.setattr(records, "_in_kernel_display", lambda: lambda data, raw: shown.append((data, raw)))
    return shown


def test_record_displays_only_the_records_mime_type_and_returns_nothing(session, capsys):
    assert nfk.record("acc", torch.tensor(0.8676716917922948, dtype=torch.float64)) is None  # no Out echo
    nfk.record("curve", np.array([0.5, 0.25]))
    assert session == [({MIME: {"name": "acc", "value": 0.8676716917922948}}, True),
                       ({MIME: {"name": "curve", "value": [0.5, 0.25]}}, True)]
    assert capsys.readouterr().out == ""  # nothing printed
    assert records.recorded() == {"acc": 0.8676716917922948, "curve": [0.5, 0.25]}
    with pytest.raises(TypeError):
        nfk.record("bad", object())


def test_read_records_reads_the_invisible_outputs_back(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    out = nbformat.v4.new_output
    cell.outputs = [out("display_data", data={MIME: {"name": "a", "value": 1.5}}),
                    out("display_data", data={MIME: json.dumps({"name": "a", "value": 2})})]
    nb.cells = [cell]
    nbformat.write(nb, str(tmp_path / "r.ipynb"))
    assert nfk.read_records(tmp_path / "r.ipynb") == {"a": 2}  # the last one wins


@pytest.mark.parametrize("value, text", [
    (0.8676716917922948, "0.8677"), (3.1274, "3.127"), (1.01234, "1.012"), (12.3456, "12.35"),
    (1.0, "1"), (0.0, "0"), (2.5e-5, "2.50e-05"), (123456.7, "123,457"), (4810, "4810"),
    (1_234_567, "1,234,567"), (True, "True"), (None, "None"), ("cpu", "cpu"),
    ([0.12345, 0.5], "[0.1235, 0.5]"), ({"8": 0.84321}, "{8: 0.8432}"),
])
def test_values_are_rounded_for_display(value, text):
    assert format_value(value) == text


def test_long_values_are_cut_with_their_count():
    text = format_value(list(range(100)))
    assert len(text) <= 60 and text.endswith("… 100 values]")


def test_records_table_shows_each_metric_once_in_order(session):
    nfk.record("b_first", 0.123456)
    nfk.record("a_second", 2)
    nfk.record("b_first", 0.5)  # a repeat keeps its place and shows the last value
    table = nfk.records_table()
    assert repr(table).splitlines() == ["Recorded metrics (2)", "  b_first   0.5", "  a_second  2"]
    page = table._repr_html_()
    assert page.index("b_first") < page.index("a_second") and ">0.5</td>" in page
    for i in range(40):
        nfk.record(f"m{i}", i / 7)
    assert nfk.records_table()._repr_html_().count("<table") == 3  # long lists flow into columns


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_every_tutorial_ends_with_its_records_table(path):
    nb = nbformat.read(str(path), as_version=4)
    last = nb.cells[-1]
    assert last.cell_type == "code" and last.source.strip().endswith("nfk.records_table()")
    assert sum("records_table" in c.source for c in nb.cells) == 1  # one table, at the end
