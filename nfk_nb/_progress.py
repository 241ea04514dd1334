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


class _NotebookBar:
    """A tqdm widget bar that, once closed, is replaced in place by one line of text.

    The line counts the passes and names no time: the fit's own ``fit_time_`` (shown by the
    estimator's summary) is the one fit time. Replacing the widget also keeps saved reports
    right: papermill saves no widget state, so the bar alone would show its initial "0%" forever.
    """

    def __init__(self, total: int, desc: str) -> None:
        from IPython.display import display
        from tqdm.notebook import tqdm

        self._bar = tqdm(total=total, desc=desc, display=False)
        self._handle = display(self._bar.container, display_id=True)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def close(self) -> None:
        done, total, desc = self._bar.n, self._bar.total, self._bar.desc
        self._bar.close()
        state = "done" if done >= total else "stopped"
        line = f"{desc}: {state}, {done:,}/{total:,} example passes"
        if self._handle is not None:
            self._handle.update({"text/plain": line}, raw=True)


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

            return _NotebookBar(total, desc)
        except ImportError:
            pass
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=1.0)
