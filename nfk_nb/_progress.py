"""Progress reporting that works in a terminal, a notebook and under papermill.

Math modules must not import Jupyter packages at import time, so the notebook bar is chosen lazily:
``tqdm.auto`` only inside a running IPython kernel with ipywidgets importable, plain text otherwise
(tqdm's "IProgress not found" warning never appears).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def make_bar(total: int, desc: str, enabled: bool | Callable[..., Any]) -> Any:
    """A tqdm-like bar; ``enabled`` may be a bool or a factory ``f(total=, desc=)``."""
    if callable(enabled):
        return enabled(total=total, desc=desc)
    if not enabled:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=True)
    if _in_kernel():
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm

            return tqdm(total=total, desc=desc)
        except ImportError:
            pass
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=1.0)
