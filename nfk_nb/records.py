"""Notebook metrics: ``record(name, value)`` in a notebook, ``read_records(path)`` after papermill.

A record is displayed under the custom MIME type ``application/vnd.nfk_nb.record+json`` (so tests
read exact values) with a ``text/plain`` line beside it (so the report stays readable).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

MIME = "application/vnd.nfk_nb.record+json"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def record(name: str, value: Any) -> Any:
    """Display ``value`` as a named metric of the running notebook and return it.

    Parameters
    ----------
    name : str
        Metric name, e.g. ``"probe_accuracy"``.
    value : number, str, list or dict (tensors and arrays are converted)
    """
    value = _jsonable(value)
    json.dumps(value)  # fail here, not in a reader, on values JSON cannot hold
    payload = {"name": str(name), "value": value}
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython is a dependency
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is not None and get_ipython() is not None:
        display({MIME: payload, "text/plain": f"{name} = {value!r}"}, raw=True)
    else:
        print(f"{name} = {value!r}")
    return value


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
