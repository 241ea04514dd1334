"""Tutorial notebooks: run them as reports (papermill + an HTML copy), or strip their outputs.

* ``nfk-nb run NOTEBOOK [-p NAME VALUE ...] [--out DIR] [--timeout S] [--kernel NAME] [--threads N]``
* ``nfk-nb run --all``  – every ``notebooks/NN_*.ipynb`` in order, wall time per notebook
* ``nfk-nb strip NOTEBOOK ... [--check]``  – remove outputs and execution counts

A run writes ``DIR/<name>.ipynb`` (executed) and ``DIR/<name>.html`` beside it; the HTML is written
even when a cell fails, so the report shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NFKError
from .records import format_value, read_records

# The kernel every tutorial names: ipykernel's own, present in any Jupyter (`make lab`'s, Binder's).
DEFAULT_KERNEL = "python3"
DEFAULT_TIMEOUT = 600
NOTEBOOK_PATTERN = re.compile(r"^\d\d_.+\.ipynb$")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class RunResult:
    """Where a run wrote its files, what it recorded, how long it took and how it failed (if so)."""

    source: Path
    notebook: Path
    html: Path | None
    records: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def pick_kernel(name: str | None = None) -> str:
    """``name`` if given, else ``"python3"``: the kernel the tutorials name in their metadata."""
    return name or DEFAULT_KERNEL


def kernel_manager_kwargs() -> dict[str, Any]:
    """papermill/nbclient arguments for a kernel whose transport is encrypted (CurveZMQ) when possible.

    A kernel on plain TCP warns "Kernel is running over TCP without encryption" on stderr at start;
    jupyter_client >= 8.10 can hand the kernel CurveZMQ keys instead, when pyzmq supports Curve and
    the kernelspec says ipykernel does. Elsewhere nothing changes.
    """
    try:
        import zmq
        from jupyter_client.manager import AsyncKernelManager
    except ImportError:  # pragma: no cover - dependencies of papermill
        return {}
    if not zmq.has("curve") or not AsyncKernelManager.class_traits().get("transport_encryption"):
        return {}

    class EncryptedKernelManager(AsyncKernelManager):  # type: ignore[misc, valid-type]
        """Provisions CurveZMQ keys for kernels whose spec declares support."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transport_encryption = "auto"

    return {"kernel_manager_class": EncryptedKernelManager}


def parse_value(text: str) -> Any:
    """A ``-p`` value read like papermill does: True/False/None, int, float, else the string."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def write_html(notebook: str | os.PathLike, html: str | os.PathLike) -> Path:
    """Export an executed notebook to a standalone HTML file that reads complete offline.

    Math is rendered to MathML at export and no script is loaded from a network (see
    :mod:`nfk_nb.export`); widgets show the static picture saved with them.
    """
    import nbformat

    from .export import offline_html

    nb = nbformat.read(str(notebook), as_version=4)
    out = Path(html)
    out.write_text(offline_html(nb), encoding="utf-8")
    return out


def run_notebook(
    path: str | os.PathLike,
    out_dir: str | os.PathLike = "reports",
    parameters: dict[str, Any] | None = None,
    kernel_name: str | None = None,
    timeout: int | None = DEFAULT_TIMEOUT,
    html: bool = True,
    raise_on_error: bool = True,
    threads: int | None = None,
) -> RunResult:
    """Execute a notebook with papermill into ``out_dir`` and write an HTML report beside it.

    Parameters
    ----------
    path : path-like
        The notebook to run (its folder is the working directory of the kernel).
    out_dir : path-like
        Folder of the executed notebook and its HTML (created if missing).
    parameters : dict, optional
        Values injected after the ``parameters``-tagged cell.
    kernel_name : str, optional
        Jupyter kernel; default ``"python3"``, the kernel the tutorials name.
    timeout : int, optional
        Per-cell execution timeout in seconds (``None``: no limit).
    html : bool
        Also write ``<name>.html``.
    raise_on_error : bool
        Re-raise papermill's error when a cell fails (after writing the report); otherwise return
        a result whose ``error`` says what failed.
    threads : int, optional
        CPU threads of the kernel's PyTorch/BLAS (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``); default:
        the environment's. On a small shared CPU, 1 avoids oversubscription (often several times faster).

    Returns
    -------
    RunResult
        ``notebook``, ``html``, ``records`` (``nfk.record`` values), ``seconds`` and ``error``.
    """
    import papermill as pm

    src = Path(path)
    if not src.is_file():
        raise NFKError(f"No notebook at {str(src)!r}.")
    out = Path(out_dir)
    dest = out / src.name
    check_run_target(src, dest, parameters)
    out.mkdir(parents=True, exist_ok=True)
    result = RunResult(source=src, notebook=dest, html=None)
    start = time.perf_counter()
    failure: BaseException | None = None
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    if threads is not None:
        if threads < 1:
            raise NFKError(f"threads must be at least 1, got {threads}.")
        os.environ.update({k: str(threads) for k in THREAD_VARS})  # the kernel inherits them
    try:
        pm.execute_notebook(
            str(src), str(dest), parameters=parameters or {}, kernel_name=pick_kernel(kernel_name),
            execution_timeout=timeout, progress_bar=False, cwd=str(src.resolve().parent),
            **kernel_manager_kwargs(),
        )
    except Exception as exc:  # noqa: BLE001 - recorded, then re-raised or reported
        failure = exc
        result.error = f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    result.seconds = time.perf_counter() - start
    if dest.is_file():
        result.records = read_records(dest)
        if html:
            result.html = write_html(dest, dest.with_suffix(".html"))
    if failure is not None and raise_on_error:
        raise failure
    return result


def _first_line(exc: BaseException) -> str:
    # rules such as "-------" say nothing; a timeout's first line says which limit was hit
    lines = [s.strip() for s in str(exc).strip().splitlines() if any(c.isalnum() for c in s)]
    if type(exc).__name__ == "CellTimeoutError" and lines:
        return lines[0]
    # papermill's message starts with a banner; the exception name and message come last
    return lines[-1] if lines else type(exc).__name__


def check_run_target(src: Path, dest: Path, parameters: dict[str, Any] | None) -> None:
    """Refuse a run that would write over its own notebook or inject code through a parameter name."""
    if dest.resolve() == src.resolve():
        raise NFKError(
            f"The output folder {str(dest.parent)!r} is the notebook's own folder: the executed copy "
            f"would overwrite {str(src)!r}; pass another --out folder."
        )
    for name in parameters or {}:
        if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)):
            raise NFKError(f"Parameter name {name!r} is not a Python identifier; use a name such as n_train.")


def tutorial_notebooks(folder: str | os.PathLike = "notebooks") -> list[Path]:
    """Every ``NN_*.ipynb`` in ``folder``, in order."""
    base = Path(folder)
    if not base.is_dir():
        raise NFKError(f"No notebook folder at {str(base)!r}; run from the repository root or pass --dir.")
    return sorted(p for p in base.iterdir() if NOTEBOOK_PATTERN.match(p.name))


# -- strip -------------------------------------------------------------------------------------

def has_outputs(nb: dict[str, Any]) -> bool:
    """Whether any code cell has outputs or an execution count."""
    return any(
        c.get("cell_type") == "code" and (c.get("outputs") or c.get("execution_count") is not None)
        for c in nb.get("cells", [])
    )


def strip_notebook(path: str | os.PathLike) -> bool:
    """Remove outputs and execution counts (and papermill's run metadata) in place.

    Returns whether the file changed; the file is written in nbformat's own layout.
    """
    import nbformat

    p = Path(path)
    nb = nbformat.read(str(p), as_version=nbformat.NO_CONVERT)
    before = json.dumps(nb, sort_keys=True)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        meta = cell.get("metadata", {})
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            meta.pop(key, None)
    nb.get("metadata", {}).pop("papermill", None)
    if json.dumps(nb, sort_keys=True) == before:
        return False
    nbformat.write(nb, str(p))
    return True


# -- CLI -----------------------------------------------------------------------------------------

def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nfk-nb run``."""
    parser.add_argument("notebook", nargs="?", help="notebook to run (or --all)")
    parser.add_argument("--all", action="store_true", help="run every notebooks/NN_*.ipynb in order")
    parser.add_argument("--dir", default="notebooks", help="notebook folder for --all (default: notebooks)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a parameter (values parsed like papermill: int, float, bool, str)")
    parser.add_argument("--out", default="reports", help="output folder (default: reports)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                        help=f"per-cell timeout in seconds (default: {DEFAULT_TIMEOUT})")
    parser.add_argument("--kernel", default=None,
                        help=f"Jupyter kernel (default: {DEFAULT_KERNEL}, the one the tutorials name)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per kernel (sets OMP_NUM_THREADS; 1 is fastest on a busy CPU)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML report")


def run_command(args: argparse.Namespace) -> int:
    """Run one notebook or all of them; exit status 1 if any failed (the others still run)."""
    if args.all == bool(args.notebook):
        print("nfk-nb run: give a NOTEBOOK or --all (not both).", file=sys.stderr)
        return 2
    try:
        paths = tutorial_notebooks(args.dir) if args.all else [Path(args.notebook)]
    except NFKError as exc:
        print(f"nfk-nb run: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print(f"nfk-nb run: no NN_*.ipynb notebooks in {args.dir}.", file=sys.stderr)
        return 2
    params = {name: parse_value(value) for name, value in args.parameter}
    failed = 0
    for path in paths:
        try:
            res = run_notebook(path, args.out, params, kernel_name=args.kernel, timeout=args.timeout,
                               html=not args.no_html, raise_on_error=False, threads=args.threads)
        except NFKError as exc:
            print(f"FAIL  {path}: {exc}", flush=True)
            failed += 1
            continue
        status = "ok  " if res.ok else "FAIL"
        where = res.html or res.notebook
        print(f"{status}  {path.name:<36} {res.seconds:7.1f} s  -> {where}", flush=True)
        if not res.ok:
            failed += 1
            print(f"      {res.error}", flush=True)
        for name, value in res.records.items():
            print(f"      {name} = {format_value(value)}", flush=True)
    if len(paths) > 1:
        print(f"{len(paths) - failed}/{len(paths)} notebooks ran without error.")
    return 1 if failed else 0


def add_strip_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nfk-nb strip``."""
    parser.add_argument("notebooks", nargs="+", help="notebooks to strip in place")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if any notebook has outputs or execution counts")


def strip_command(args: argparse.Namespace) -> int:
    """Strip outputs in place, or with ``--check`` report the notebooks that still have some."""
    dirty = 0
    for name in args.notebooks:
        path = Path(name)
        if not path.is_file():
            print(f"nfk-nb strip: no notebook at {name!r}.", file=sys.stderr)
            return 2
        if args.check:
            if has_outputs(json.loads(path.read_text(encoding="utf-8"))):
                print(f"has outputs: {path}")
                dirty += 1
        elif strip_notebook(path):
            print(f"stripped: {path}")
    return 1 if dirty else 0
