"""The math and the ``nfk-nb fit`` path import no Jupyter package (a cluster install has none)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nfk_nb

JUPYTER = ("IPython", "ipywidgets", "papermill", "nbconvert", "ipykernel")

CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    import nfk_nb as nfk
    from nfk_nb.cli import main

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    X = torch.randn(30, 4)
    est = nfk.LowRankNFK(nfk.Classifier(net), rank=3, power_iters=1, progress=True)
    E = est.fit_transform(X)
    est.transform(X[:5])
    rc = main(["fit", sys.argv[1], "--out", sys.argv[2], "--rank", "3", "--power-iters", "1"])
    jupyter = sorted(m for m in sys.modules if m.split(".")[0] in {jupyter!r})
    print(json.dumps({{"rc": rc, "shape": list(E.shape), "jupyter": jupyter}}))
    """
)

SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    kind = "classifier"
    data = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    """
)


def test_fit_and_fit_command_import_no_jupyter_package(tmp_path):
    script = tmp_path / "fit_script.py"
    script.write_text(SCRIPT)
    child = tmp_path / "child.py"
    child.write_text(CHILD.format(jupyter=set(JUPYTER)))
    root = str(Path(nfk_nb.__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, str(child), str(script), str(tmp_path / "run")], cwd=tmp_path,
                          env={"PYTHONPATH": root, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and result["shape"] == [30, 3]
    assert (tmp_path / "run" / "estimator.safetensors").is_file()
    assert result["jupyter"] == [], result["jupyter"]
