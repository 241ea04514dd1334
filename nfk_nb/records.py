"""Notebook metrics: ``record(name, value)`` in a notebook, ``read_records(path)`` after papermill.

A record is displayed under the custom MIME type ``application/vnd.nfk_nb.record+json`` only, with
no ``text/plain`` beside it: frontends and HTML reports show nothing, tests read the exact values.
What a reader sees is :func:`records_table`, one compact table of every metric recorded so far in
the session, rounded, which each tutorial shows as its last cell.
"""

from __future__ import annotations

import html
import json
import math
import os
from typing import Any

MIME = "application/vnd.nfk_nb.record+json"

# name -> value of every record made in this process, in first-recorded order
_SESSION: dict[str, Any] = {}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _in_kernel_display() -> Any:
    """IPython's ``display`` when a shell is running, else ``None``."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    return display if get_ipython() is not None else None


def record(name: str, value: Any) -> None:
    """Store ``value`` as a named metric of the running notebook, invisibly.

    The value goes into the notebook's outputs under the records MIME type (read back with
    :func:`read_records`) and into this session's list shown by :func:`records_table`. Nothing is
    printed and nothing is returned, so a cell that ends with ``nfk.record(...)`` shows no ``Out``.

    Parameters
    ----------
    name : str
        Metric name, e.g. ``"probe_accuracy"``.
    value : number, str, list or dict (tensors and arrays are converted)
    """
    value = _jsonable(value)
    json.dumps(value)  # fail here, not in a reader, on values JSON cannot hold
    _SESSION[str(name)] = value
    display = _in_kernel_display()
    if display is not None:
        display({MIME: {"name": str(name), "value": value}}, raw=True)


def recorded() -> dict[str, Any]:
    """A copy of every metric recorded in this session so far, ``{name: value}``."""
    return dict(_SESSION)


def read_records(path: str | os.PathLike) -> dict[str, Any]:
    """All records of an executed notebook, ``{name: value}`` (the last one wins on repeats)."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    found: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if MIME in data:
                payload = data[MIME]
                if isinstance(payload, str):
                    payload = json.loads(payload)
                found[payload["name"]] = payload["value"]
    return found


# -- the compact table ---------------------------------------------------------------------------

def format_value(value: Any, width: int = 60) -> str:
    """A short, rounded rendering of a recorded value.

    Floats keep four significant digits (``0.8676716917922948`` -> ``0.8677``, ``3.1274`` ->
    ``3.127``, ``1.0123`` -> ``1.012``), large ones are grouped (``12,346``), tiny ones use an
    exponent; lists and dicts show their rounded items and are cut at ``width`` characters with
    ``…`` and the item count.
    """
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        a = abs(value)
        if a == 0 or a >= 10_000:
            return f"{value:,.0f}"
        return f"{value:.2e}" if a < 1e-3 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        items = [format_value(v, width) for v in value]
        return _cut("[" + ", ".join(items) + "]", width, f"{len(items)} values]")
    if isinstance(value, dict):
        items = [f"{k}: {format_value(v, width)}" for k, v in value.items()]
        return _cut("{" + ", ".join(items) + "}", width, f"{len(items)} entries}}")
    return _cut(str(value), width, "")


def format_seconds(seconds: float) -> str:
    """A duration as the records table shows it (``3.127 s``): the one way nfk_nb prints a fit time."""
    return f"{format_value(float(seconds))} s"


def _cut(text: str, width: int, tail: str) -> str:
    if len(text) <= width:
        return text
    tail = f" … {tail}" if tail else "…"
    return text[: max(width - len(tail), 8)].rstrip(", ") + tail


class RecordsTable:
    """The metrics of a notebook as one compact table (HTML in a frontend, aligned text in a report).

    Attributes
    ----------
    records : dict
        ``{name: value}``, full precision; only the display rounds.
    """

    def __init__(self, records: dict[str, Any], title: str = "Recorded metrics") -> None:
        self.records = dict(records)
        self.title = title

    def rows(self) -> list[tuple[str, str]]:
        """``(name, rounded value)`` pairs in recording order."""
        return [(name, format_value(value)) for name, value in self.records.items()]

    def __repr__(self) -> str:
        rows = self.rows()
        if not rows:
            return f"{self.title}: none"
        w = max(len(name) for name, _ in rows)
        return "\n".join([f"{self.title} ({len(rows)})", *(f"  {n:<{w}}  {v}" for n, v in rows)])

    def _repr_html_(self) -> str:
        rows = self.rows()
        # a long list flows into side-by-side tables instead of one tall one
        per = max(12, -(-len(rows) // 3))
        tables = "".join(
            "<table style='display:inline-table;vertical-align:top;margin:0 2em 0 0;"
            "border-collapse:collapse'>"
            + "".join(
                f"<tr><td style='text-align:left;font-family:monospace;padding:1px 8px 1px 0'>"
                f"{html.escape(n)}</td><td style='text-align:right;font-family:monospace;padding:1px 0'>"
                f"{html.escape(v)}</td></tr>"
                for n, v in rows[i:i + per]
            )
            + "</table>"
            for i in range(0, len(rows), per)
        )
        return (
            f"<div class='nfk-nb-records' style='font-size:12px'><b>{html.escape(self.title)}</b> "
            f"({len(rows)}, rounded for display; exact values: <code>nfk.read_records</code>)"
            f"<div>{tables}</div></div>"
        )


def records_table(title: str = "Recorded metrics") -> RecordsTable:
    """Every metric recorded so far in this session as one compact, rounded table.

    End a notebook with ``nfk.records_table()``: the reader gets the numbers at a glance, while
    the records themselves (exact values) stay invisible in the outputs for tests and scripts.
    """
    return RecordsTable(_SESSION, title)
