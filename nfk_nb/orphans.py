"""Local worker processes die with the process that started them, and leave no temporary folder.

When the caller of ``fit_workers`` is killed (SIGKILL, or SIGTERM, whose default action skips every
``finally``), its workers would be reparented and keep computing, and their temporary folder would
stay behind. Two mechanisms prevent that:

* :func:`die_with_parent`, called first thing in each worker: on Linux the kernel sends the worker
  SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon thread polls the
  parent pid and exits the worker when it changes (the fallback for other systems).
* :class:`Janitor`: a tiny separate process (not a worker, started with ``-I -S``: no imports) that
  outlives a killed caller, waits for the workers to go, and removes the folder. A caller that
  finishes normally stops it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
POLL_S = 0.2

_JANITOR = r"""
import os, shutil, sys, time
parent, folder = int(sys.argv[1]), sys.argv[2]
while os.getppid() == parent:
    time.sleep(0.2)
for wait in (0.5, 2.0):  # the workers exit within ~0.2 s of their parent; a late write is swept too
    time.sleep(wait)
    shutil.rmtree(folder, ignore_errors=True)
"""


def _set_pdeathsig(sig: int) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process end when ``parent_pid``, its parent, ends.

    Parameters
    ----------
    parent_pid : int
        The pid of the process that started this one (read there, passed here: if it already died,
        ``os.getppid()`` here no longer matches and the worker exits at once).
    """
    _set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the kernel could be asked
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="nfk-parent-watch", daemon=True).start()


class Janitor:
    """Removes ``folder`` if this process dies before it can (a separate process watches it).

    Start it right after creating the folder; :meth:`stop` it after removing the folder normally.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.proc: subprocess.Popen | None = None
        with contextlib.suppress(OSError):  # without a janitor, only a killed caller leaves the folder
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _JANITOR, str(os.getpid()), str(self.folder)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True, start_new_session=True,  # a Ctrl-C in a terminal must not reach it
            )

    def stop(self) -> None:
        """End the janitor (the caller is alive and cleans up itself)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
