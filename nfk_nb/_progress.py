"""Progress reporting that works in a terminal, a notebook and under papermill.

Math modules must not import Jupyter packages at import time, so the notebook bar is chosen lazily:
``tqdm.auto`` only inside a running IPython kernel with ipywidgets importable, plain text otherwise
(tqdm's "IProgress not found" warning never appears).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class _NotebookBar:
    """A widget bar that prints one closing text line: saved reports (papermill) keep no widget
    state, so without it an executed notebook would show the bar's initial "0%" forever."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def close(self) -> None:
        done, total = self._bar.n, self._bar.total
        self._bar.close()
        print(f"{self._bar.desc}: {done}/{total} example passes in {time.perf_counter() - self._start:.1f} s")


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

            return _NotebookBar(tqdm(total=total, desc=desc))
        except ImportError:
            pass
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=1.0)
