"""`make lab`'s route, end to end: a Jupyter server on loopback runs a tutorial as JupyterLab would.

The server is started like `make lab` starts it (same kernel name and transport setting); the test
then does what JupyterLab's "Run All" does over the server's REST and kernel websocket API: open
the notebook through the contents API, start a session with the kernel the notebook names, and
execute every code cell in order, failing on the first error. Everything stays on 127.0.0.1 and
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest
from tornado.websocket import websocket_connect

from nfk_nb.records import MIME

from .nbrun import KERNEL, NOTEBOOKS

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

NAME = "01_quickstart.ipynb"
SMALL = {"epochs": 5, "hidden": 16, "rank": 8, "power_iters": 1, "n_train": 200, "n_explore": 60}
CELL_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A jupyter_server subprocess on loopback with a random token, and its REST calls."""

    def __init__(self, root: Path, log: Path) -> None:
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.log = log
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", f"--ServerApp.root_dir={root}",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", "--ServerApp.open_browser=False",
             "--KernelManager.transport_encryption=auto",  # as `make lab` starts it
             *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                self.rest("GET", "api/status")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"jupyter server did not start:\n{log.read_text()}") from None
                time.sleep(0.5)

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = Request(f"http://127.0.0.1:{self.port}/{path}", data=data, method=method,
                      headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urlopen(req, timeout=30) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _message(code: str, session: str) -> dict[str, Any]:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request", "session": session,
                   "username": "test", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }


async def _run_cells(url: str, cells: list[str]) -> list[list[dict[str, Any]]]:
    """Execute ``cells`` in order on the kernel at ``url``; the iopub messages of each cell."""
    ws = await websocket_connect(url)
    session, results = uuid.uuid4().hex, []
    try:
        for code in cells:
            msg = _message(code, session)
            await ws.write_message(json.dumps(msg))
            outputs: list[dict[str, Any]] = []
            idle = reply = False
            while not (idle and reply):
                raw = await asyncio.wait_for(ws.read_message(), CELL_TIMEOUT)
                assert raw is not None, "the kernel websocket closed"
                if isinstance(raw, bytes):  # binary frames carry widget buffers: not needed here
                    continue
                got = json.loads(raw)
                if got.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                    continue
                kind = got["msg_type"]
                if kind == "execute_reply":
                    reply = True
                    status = got["content"]["status"]
                    assert status == "ok", f"cell failed ({status}):\n{code}\n{got['content']}"
                elif kind == "status":
                    idle = got["content"]["execution_state"] == "idle"
                elif kind in ("stream", "display_data", "execute_result", "error", "update_display_data"):
                    outputs.append(got)
            results.append(outputs)
    finally:
        ws.close()
    return results


def test_make_lab_starts_the_server_this_test_starts():
    recipe = (NOTEBOOKS.parent / "Makefile").read_text().split("\nlab:", 1)[1].split("\n\n", 1)[0]
    for flag in ("jupyter lab", "--notebook-dir=notebooks", "--ServerApp.ip=127.0.0.1",
                 "--KernelManager.transport_encryption=auto"):
        assert flag in recipe
    assert "$(LAB_STAMP)" in recipe.splitlines()[0]  # installs the [lab] extra first


@pytest.mark.timeout(420)
def test_a_tutorial_runs_all_cells_through_a_jupyter_server(tmp_path):
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOKS / NAME, root / NAME)
    server = Server(root, tmp_path / "server.log")
    try:
        nb = server.rest("GET", f"api/contents/{NAME}?content=1")["content"]
        assert nb["metadata"]["kernelspec"]["name"] == KERNEL
        specs = server.rest("GET", "api/kernelspecs")["kernelspecs"]
        assert KERNEL in specs, f"the server has no {KERNEL!r} kernel: {sorted(specs)}"
        sess = server.rest("POST", "api/sessions", {"path": NAME, "type": "notebook", "name": NAME,
                                                    "kernel": {"name": KERNEL}})
        cells = []
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            cells.append(cell["source"])
            if "parameters" in cell["metadata"].get("tags", []):  # what papermill would inject
                cells.append("\n".join(f"{k} = {v!r}" for k, v in SMALL.items()))
        cells.append("import sys; print(sys.executable)")
        url = (f"ws://127.0.0.1:{server.port}/api/kernels/{sess['kernel']['id']}/channels"
               f"?token={server.token}")
        results = asyncio.run(asyncio.wait_for(_run_cells(url, cells), 400))
        server.rest("DELETE", f"api/sessions/{sess['id']}")
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()

    flat = [m for outs in results for m in outs]
    assert not [m for m in flat if m["msg_type"] == "error"]
    # the kernel is this Python (the venv's), not some other python3 on the machine
    assert results[-1][-1]["content"]["text"].strip() == sys.executable
    records = {m["content"]["data"][MIME]["name"]: m["content"]["data"][MIME]["value"]
               for m in flat if MIME in m["content"].get("data", {})}
    assert records["rank"] == SMALL["rank"] and records["nfk_probe_test_accuracy"] > 0.5
    # records are invisible: no text beside them and no Out echo; one table at the end shows them
    for m in flat:
        if MIME in m["content"].get("data", {}):
            assert set(m["content"]["data"]) == {MIME} and m["msg_type"] == "display_data"
    streams = "".join(m["content"].get("text", "") for m in flat if m["msg_type"] == "stream")
    assert "fit_time_s" not in streams and "explained_variance =" not in streams
    table = results[-2][-1]
    assert table["msg_type"] == "execute_result" and "fit_time_s" in table["content"]["data"]["text/html"]
    # the explorer: a live widget view plus its still picture; the progress bar ends as one line
    explorer = [m for m in flat if "application/vnd.jupyter.widget-view+json" in m["content"].get("data", {})
                and "image/png" in m["content"]["data"]]
    assert explorer, "the explorer was displayed without its image/png fallback"
    finals = [m["content"]["data"]["text/plain"] for m in flat if m["msg_type"] == "update_display_data"]
    assert any(t.startswith("NFK fit: done") for t in finals)
    assert "without encryption" not in log
