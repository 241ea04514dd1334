"""The %nfk IPython extension, driven on a fresh InteractiveShell (tiny MLP, 200 digits, rank 4)."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from argparse import Namespace

import numpy as np
import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from matplotlib.figure import Figure
from traitlets.config.loader import PyFileConfigLoader

import nfk_nb
import nfk_nb.enable_extension as enable_extension
import nfk_nb.magics as magics
import nfk_nb.magics.kernel as kernel_magic
from nfk_nb.display import ProbeResult
from nfk_nb.evaluate import linear_probe
from nfk_nb.lowrank import LowRankNFK
from nfk_nb.widgets import EmbeddingExplorer

FIT = "--rank 4 --power-iters 1 --oversample 4"

SETUP = """
import torch
import nfk_nb as nfk
from nfk_nb.data import load_digits
from nfk_nb.zoo.classifier import mlp, train_classifier
X_all, y_all, Xt_all, yt_all = load_digits()
X, y, Xt, yt = X_all[:200], y_all[:200], Xt_all[:60], yt_all[:60]
net = mlp([64, 16, 10], seed=0)
_ = train_classifier(net, X, y, epochs=3, seed=0)
unfitted = nfk.LowRankNFK(nfk.Classifier(net))


class Broken(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)

    def forward(self, x):
        raise RuntimeError("boom\\nsecond line of a deep error")


broken = Broken()
"""


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nfk_nb")
    ip.run_line_magic("config", "NFKMagics.progress = False")
    result = ip.run_cell(SETUP)
    result.raise_error()
    yield ip
    ip.run_line_magic("unload_ext", "nfk_nb")


@pytest.fixture(scope="module")
def est(shell):
    return shell.run_line_magic("nfk", f"fit net X {FIT} -o est")


def nfk(shell, line):
    return shell.run_line_magic("nfk", line)


# -- loading, config, help ----------------------------------------------------------------------------
def test_fit_returns_and_stores_a_fitted_estimator(shell, est):
    assert isinstance(est, LowRankNFK) and shell.user_ns["est"] is est
    assert est.embedding_.shape == (200, 4)
    assert est.power_iters == 1 and est.oversample == 4 and est.lik.score == "joint"
    # the same fit through the library gives the same embedding (the magic is a thin shell)
    ref = LowRankNFK(nfk_nb.Classifier(shell.user_ns["net"]), rank=4, power_iters=1, oversample=4,
                     progress=False).fit_transform(shell.user_ns["X"])
    torch.testing.assert_close(est.embedding_, ref)


def test_fit_rich_display(shell, est):
    data, _ = shell.display_formatter.format(est)
    html, text = data["text/html"], data["text/plain"]
    for fact in ("rank", "explained variance", "fit time", "device", "cpu"):
        assert fact in html
    ev = float(est.explained_variance_ratio_.sum())
    assert f"{ev:.1%}" in text and "rank=4" in text and "cpu" in text
    # an unfitted estimator keeps scikit-learn's own display
    data, _ = shell.display_formatter.format(shell.user_ns["unfitted"])
    assert "not fitted" in data["text/plain"]


def test_unload_and_reload(shell):
    shell.run_line_magic("unload_ext", "nfk_nb")
    assert shell.find_line_magic("nfk") is None and shell.find_cell_magic("nfk") is None
    assert not any(isinstance(c, magics.NFKMagics) for c in shell.configurables)
    assert LowRankNFK not in shell.display_formatter.formatters["text/html"].type_printers
    shell.run_line_magic("load_ext", "nfk_nb")
    shell.run_line_magic("config", "NFKMagics.progress = False")
    assert shell.find_line_magic("nfk") is not None and shell.find_cell_magic("nfk") is not None
    assert sum(isinstance(c, magics.NFKMagics) for c in shell.configurables) == 1


def test_config_sets_defaults(shell):
    shell.run_line_magic("config", "NFKMagics.rank = 3")
    shell.run_line_magic("config", "NFKMagics.power_iters = 0")
    shell.run_line_magic("config", "NFKMagics.score = 'predicted'")
    try:
        est = nfk(shell, "fit net X")
        assert est.rank == 3 and est.power_iters == 0 and est.lik.score == "predicted"
        assert est.embedding_.shape == (200, 3)
        assert nfk(shell, "fit net X --rank 2").rank == 2  # an option beats the config
    finally:
        shell.run_line_magic("config", "NFKMagics.rank = 64")
        shell.run_line_magic("config", "NFKMagics.power_iters = 2")
        shell.run_line_magic("config", "NFKMagics.score = 'joint'")


def test_help_documents_every_option(shell, capsys):
    doc = shell.find_line_magic("nfk").__doc__  # what %nfk? shows: a short overview
    assert "%nfk help SUB" in doc and len(doc.splitlines()) < 25
    for sub, parser in magics.PARSERS.items():
        if sub == "help":
            continue
        assert f"%nfk {sub}" in doc, sub
        nfk(shell, f"help {sub}")
        shown = capsys.readouterr().out
        for action in parser._actions:
            for opt in action.option_strings:
                assert opt in shown, (sub, opt)
            assert action.help, (sub, action.dest)
    assert nfk(shell, "help fit") is None
    out = capsys.readouterr().out
    assert "--power-iters" in out and "--workers" in out and "--kind" in out
    assert nfk(shell, "fit --help") is None  # prints help, raises nothing
    assert "--rank" in capsys.readouterr().out
    nfk(shell, "")
    assert "%nfk fit MODEL DATA" in capsys.readouterr().out


# -- subcommands --------------------------------------------------------------------------------------
def test_fit_with_labels_option_and_label_score(shell):
    est = nfk(shell, f"fit net X --labels y --score label {FIT}")
    assert est.lik.score == "label"
    same = nfk(shell, f"fit net (X, y) --score label {FIT}")
    torch.testing.assert_close(est.embedding_, same.embedding_)


def test_cell_magic(shell):
    body = "model = net\ndata = X[:120] * 1.0\n"
    est = shell.run_cell_magic("nfk", f"fit {FIT} -o est_cell", body)
    assert shell.user_ns["est_cell"] is est and est.n_samples_fit_ == 120
    body = "my_net = net\nmy_data = (X[:100], y[:100])\n"
    est = shell.run_cell_magic("nfk", f"fit --model my_net --data my_data --score label {FIT}", body)
    assert est.n_samples_fit_ == 100 and est.lik.score == "label"
    with pytest.raises(UsageError, match="only supports fit"):
        shell.run_cell_magic("nfk", "embed est X", "pass")
    shell.user_ns.pop("model")
    with pytest.raises(UsageError, match="'model' is not defined"):
        shell.run_cell_magic("nfk", f"fit {FIT}", "unrelated = 1\n")


KINDS_SETUP = """
torch.manual_seed(0)
disc = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
gen = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Sigmoid())
sampler = lambda n: gen(torch.randn(n, 4)).detach()
encoder, decoder = torch.nn.Linear(64, 4), torch.nn.Linear(2, 64)
reg = torch.nn.Linear(64, 1)
y_float = y.float()
lm = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))  # next-token logits
ids = torch.randint(0, 10, (30, 5), generator=torch.Generator().manual_seed(0))
"""


@pytest.mark.parametrize("line,family", [
    ("fit disc X[:100] --kind gan --sampler sampler", nfk_nb.EnergyModel),
    ("fit (encoder, decoder) X[:100] --kind vae", nfk_nb.VAE),
    ("fit reg X[:100] --kind regression --labels y_float[:100] --sigma 2", nfk_nb.Regressor),
    ("fit nfk.Classifier(net, score='predicted') X[:100]", nfk_nb.Classifier),
    ("fit lm ids --kind causal-lm", nfk_nb.CausalLM),
])
def test_model_kinds(shell, line, family):
    shell.run_cell(KINDS_SETUP).raise_error()
    est = nfk(shell, f"{line} --rank 2 --power-iters 0 --oversample 2")
    assert type(est.lik) is family
    if family is nfk_nb.Regressor:
        assert est.lik.sigma == 2.0
    # the magic builds the same likelihood the library would: same embedding as a direct fit
    ns = shell.user_ns
    direct = {
        nfk_nb.EnergyModel: lambda: (nfk_nb.EnergyModel(ns["disc"], ns["sampler"]), ns["X"][:100]),
        nfk_nb.VAE: lambda: (nfk_nb.VAE(ns["encoder"], ns["decoder"]), ns["X"][:100]),
        nfk_nb.Regressor: lambda: (nfk_nb.Regressor(ns["reg"], sigma=2.0),
                                   (ns["X"][:100], ns["y_float"][:100])),
        nfk_nb.Classifier: lambda: (nfk_nb.Classifier(ns["net"], score="predicted"), ns["X"][:100]),
        nfk_nb.CausalLM: lambda: (nfk_nb.CausalLM(ns["lm"]), ns["ids"]),
    }[family]
    lik, data = direct()
    ref = LowRankNFK(lik, rank=2, power_iters=0, oversample=2, progress=False).fit_transform(data)
    torch.testing.assert_close(est.embedding_, ref)


def test_embed(shell, est):
    E = nfk(shell, "embed est Xt -o E_test")
    assert E.shape == (60, 4) and shell.user_ns["E_test"] is E
    torch.testing.assert_close(E, est.transform(shell.user_ns["Xt"]))
    # the fit data embed to the fit embedding
    torch.testing.assert_close(nfk(shell, "embed est X"), est.embedding_, rtol=1e-4, atol=1e-4)


def test_kernel_low_rank_and_exact(shell, est, monkeypatch):
    shown = []
    monkeypatch.setattr(kernel_magic, "show_figure", lambda fig, label: shown.append((fig, label)))
    K = nfk(shell, "kernel est X[:30] -o K")
    E = est.transform(shell.user_ns["X"][:30])
    torch.testing.assert_close(K, E @ E.T)
    assert shell.user_ns["K"] is K and len(shown) == 1 and "30×30" in shown[0][1]
    K2 = nfk(shell, "kernel est X[:30] Xt[:10] --no-plot")
    torch.testing.assert_close(K2, E @ est.transform(shell.user_ns["Xt"][:10]).T)
    assert len(shown) == 1
    Kx = nfk(shell, "kernel net X[:30] --exact --labels y[:30]")
    ref = nfk_nb.fisher_kernel(nfk_nb.Classifier(shell.user_ns["net"]), shell.user_ns["X"][:30])
    torch.testing.assert_close(Kx, ref)
    assert len(shown) == 2
    # E Eᵀ is the rank-4 sketch of the exact kernel on the fit data (E = V Wᵀ with orthonormal W):
    # trace(K) is the fit's exact trace; Σ S² ≤ ‖E‖² ≤ top-4 eigenvalue sum (Ky Fan), measured
    # ‖E‖² = 0.957 and Σ S² = 0.924 of it here (power_iters=1), bound 0.93 leaves 0.027; and K - E Eᵀ
    # is positive semi-definite (measured smallest eigenvalue -2.4e-7 of top-4: float32). An all-zero
    # or mis-scaled embedding fails.
    Kfit = nfk(shell, "kernel est X --exact --no-plot").double()
    E = est.embedding_.double()
    top4 = float(torch.linalg.eigvalsh(Kfit)[-4:].sum())
    energy = float(E.pow(2).sum())
    assert float(Kfit.trace()) == pytest.approx(est.trace_, rel=1e-4)
    assert float(est.singular_values_.double().pow(2).sum()) <= energy * (1 + 1e-4)
    assert 0.93 * top4 <= energy <= (1 + 1e-4) * top4
    assert float(torch.linalg.eigvalsh(Kfit - E @ E.T)[0]) >= -1e-4 * top4


def test_spectrum(shell, est):
    fig = nfk(shell, "spectrum est -o fig")
    assert isinstance(fig, Figure) and shell.user_ns["fig"] is fig and len(fig.axes) == 2
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), est.singular_values_.numpy(), rtol=1e-6)
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(),
                               np.cumsum(est.explained_variance_ratio_.numpy()), rtol=1e-6)
    # the shell renders the returned figure as PNG in rich frontends
    data, _ = shell.display_formatter.format(fig)
    assert data["image/png"][:4] == b"\x89PNG"


def test_probe(shell, est):
    nfk(shell, "embed est Xt -o E_test")
    acc = nfk(shell, "probe est y --test E_test yt -o acc")
    assert isinstance(acc, ProbeResult) and acc.mode == "test" and shell.user_ns["acc"] == acc
    ns = shell.user_ns
    assert float(acc) == pytest.approx(linear_probe(est.embedding_, ns["y"], ns["E_test"], ns["yt"]))
    cv = nfk(shell, "probe est.embedding_ y --cv 3")
    assert cv.mode == "cv" and cv.cv == 3
    assert float(cv) == pytest.approx(linear_probe(est.embedding_, ns["y"], cv=3))
    assert "linear-probe accuracy" in repr(acc) and "<table" in acc._repr_html_()


def test_explore(shell, est):
    shell.run_line_magic("config", "NFKMagics.neighbours = 5")
    try:
        w = nfk(shell, "explore est (Xt, yt) --images 8,8 --index 3 -o explorer")
    finally:
        shell.run_line_magic("config", "NFKMagics.neighbours = 8")
    assert isinstance(w, EmbeddingExplorer) and shell.user_ns["explorer"] is w
    assert w.index == 3 and len(w.neighbours) == 5 and w.labels is not None
    E = est.transform(shell.user_ns["Xt"]).numpy()
    np.testing.assert_allclose(w.embedding, E, rtol=1e-5)
    w.index = 7
    assert 7 not in w.neighbours and w.view.items[0]["index"] == 7
    assert w.view.items[0]["src"].startswith("data:image/png;base64,")  # the 8×8 images are shown
    # an embedding tensor works as well, and --labels overrides
    w2 = nfk(shell, "explore E_test Xt --labels yt --neighbours 2")
    assert len(w2.neighbours) == 2 and w2.labels is not None


def test_save_and_load(shell, est, tmp_path):
    path = tmp_path / "est.nfk"
    shell.user_ns["path"] = str(path)
    assert nfk(shell, f"save est {path}") is None and path.exists()
    loaded = nfk(shell, f"load {path} net -o est_loaded")
    assert shell.user_ns["est_loaded"] is loaded
    Xt = shell.user_ns["Xt"]
    torch.testing.assert_close(loaded.transform(Xt), est.transform(Xt))
    # the model family and score are read from the file
    pred = nfk(shell, f"fit net X --score predicted {FIT} -o pred")
    nfk(shell, f"save pred {tmp_path / 'pred.nfk'}")
    assert nfk(shell, f"load {tmp_path / 'pred.nfk'} net").lik.score == "predicted"
    assert pred.lik.score == "predicted"


def test_workers_calls_launch(shell, monkeypatch):
    calls = []

    def fake_fit_workers(est, data, workers):
        calls.append(workers)
        return est.fit_transform(data)

    fake = types.ModuleType("nfk_nb.launch")
    fake.fit_workers = fake_fit_workers
    monkeypatch.setitem(sys.modules, "nfk_nb.launch", fake)
    monkeypatch.setattr(nfk_nb, "launch", fake, raising=False)
    est = nfk(shell, f"fit net X {FIT} --workers 3")
    assert calls == [3] and est.embedding_.shape == (200, 4)


# -- bad input: one-sentence UsageErrors --------------------------------------------------------------
BAD = [
    ("fitt net X", "Unknown %nfk subcommand 'fitt'"),
    ("fit nett X", "MODEL 'nett' is not defined"),
    ("fit net Xx[:10]", "undefined name"),
    ("fit net X --rank abc", "--rank: expected a positive integer"),
    ("fit net X --rank 0", "--rank: expected a positive integer"),
    ("fit net X --rank 5000", "rank=5000 is larger than"),
    ("fit net X --kind foo", "--kind: invalid choice"),
    ("fit net X --fisher block", "--fisher: invalid choice"),
    ("fit net X --device foo", "not a torch device"),
    ("fit net X --bogus 1", "unrecognized arguments"),
    ("fit net", "needs MODEL and DATA"),
    ("fit net X --score label", "needs labels: add --labels"),
    ("fit net X --kind regression", "needs regression targets"),
    ("fit X X", "not a torch.nn.Module"),
    ("fit net 3", "DATA '3' is a int"),
    ("fit net X --kind gan", "--kind gan needs --sampler"),
    ("fit net X --kind gan --sampler y", "not a callable"),
    ("fit net X --kind vae", "(encoder, decoder) tuple"),
    ("fit net X --kind regression --score label", "--score applies to classifiers only"),
    ("fit net (X, y) --labels y", "already carries labels"),
    ("fit net X[:10", "Unclosed bracket"),
    ("fit net X) ", "Unbalanced brackets"),
    ("fit net torch.zeros(50, 3) --rank 2", "cannot take inputs of shape (batch, 3)"),
    ("fit broken X --rank 2", "boom"),
    ("fit net X -o 1abc", "not a valid Python variable name"),
    ("fit net X --model m", "--model/--data name what a %%nfk fit cell defines"),
    ("embed net X", "not a LowRankNFK"),
    ("embed unfitted X", "not fitted yet"),
    ("spectrum y", "is a Tensor, not a LowRankNFK"),
    ("probe est y[:10]", "has 10 entries but the data have 200 rows"),
    ("probe est y --cv 500", "fewer than --cv 500"),
    ("probe est y --test X yt", "EMB2 has 64 features but EMB has 4"),
    ("probe net y", "not an embedding"),
    ("kernel est X Xt --labels y", "--labels sorts a square kernel"),
    ("explore est X --images 8", "--images: expected H,W"),
    ("explore est X --index 999", "--index 999 is out of range"),
    ("explore net X", "not a fitted LowRankNFK or an N×k embedding"),
    ("load /nonexistent/est.nfk net", "No saved NFK estimator"),
    ("save est /proc/forbidden/est.nfk", "Cannot write"),
    ("help nothing", "invalid choice"),
]


@pytest.mark.parametrize("line,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_one_sentence_usage_error(shell, est, line, message):
    with pytest.raises(UsageError) as info:
        nfk(shell, line)
    text = str(info.value)
    assert message in text
    assert "\n" not in text.strip() and len(text) < 400
    assert "Traceback" not in text


def test_bad_input_in_a_cell_shows_usage_error_not_traceback(shell, capsys):
    result = shell.run_cell("%nfk fit net X --rank abc")
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr()
    assert "UsageError" in err.out + err.err and "Traceback" not in err.out + err.err


def test_split_args_keeps_expressions_together():
    assert magics.split_args("fit net (X, y) --labels y[y == 3]") == [
        "fit", "net", "(X, y)", "--labels", "y[y == 3]"]
    assert magics.split_args("save est 'my dir/est.nfk'") == ["save", "est", "my dir/est.nfk"]
    assert magics.split_args("  ") == []


# -- nfk-nb enable-extension -----------------------------------------------------------------------------
def enable(tmp_path, *extra):
    return enable_extension.enable_command(Namespace(profile="test", ipython_dir=str(tmp_path),
                                           disable="--disable" in extra))


def extensions(path):
    cfg = PyFileConfigLoader(path.name, path=str(path.parent)).load_config()
    return cfg.InteractiveShellApp.extensions.get_value([])


def test_enable_extension_is_idempotent_and_reversible(tmp_path):
    path = enable_extension.config_path("test", str(tmp_path))
    path.parent.mkdir(parents=True)
    path.write_text("c = get_config()\nc.InteractiveShellApp.exec_lines = ['x = 1']\n")
    assert enable(tmp_path) == 0 and enable(tmp_path) == 0
    text = path.read_text()
    assert text.count(enable_extension.BEGIN) == 1 and "exec_lines" in text
    assert extensions(path) == ["nfk_nb"]
    enable(tmp_path, "--disable")
    assert enable_extension.BEGIN not in path.read_text() and "exec_lines" in path.read_text()
    assert extensions(path) == []


def test_enable_extension_cli_creates_the_profile(tmp_path):
    from nfk_nb.cli import main

    assert main(["enable-extension", "--ipython-dir", str(tmp_path), "--profile", "fresh"]) == 0
    assert extensions(tmp_path / "profile_fresh" / "ipython_config.py") == ["nfk_nb"]


def test_cli_help_lists_enable_extension():
    from nfk_nb.cli import build_parser

    assert "enable-extension" in build_parser().format_help()


def test_enabled_extension_loads_in_a_real_ipython(tmp_path):
    enable(tmp_path)
    code = "print('NFK', get_ipython().find_line_magic('nfk') is not None)"
    out = subprocess.run(
        [sys.executable, "-m", "IPython", f"--ipython-dir={tmp_path}", "--profile=test", "--no-banner",
         "--HistoryManager.enabled=False", "-c", code],
        capture_output=True, text=True, timeout=120,
    )
    assert "NFK True" in out.stdout, out.stdout + out.stderr


def test_overview_columns_are_aligned(shell, capsys):
    nfk(shell, "help")
    usage = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  %")]
    assert len(usage) >= 9
    # each usage line is "  USAGE<spaces>DESCRIPTION": the descriptions start in one column
    starts = {re.match(r"  \S.*?\S {2,}(\S)", line).start(1) for line in usage}
    assert len(starts) == 1, usage


def test_suggestions_never_overwrite_a_variable(shell):
    shell.user_ns.pop("est2", None)
    with pytest.raises(UsageError) as info:
        nfk(shell, "spectrum net")
    text = str(info.value)
    assert "-o net" not in text and "-o est " not in text + " "
    assert "-o est2" in text  # `est` is taken in this notebook: the next free name


def test_out_names_are_plain_identifiers(shell, est):
    for bad in ("__builtins__", "__name__", "class"):
        with pytest.raises(UsageError, match="not a valid Python variable name|special"):
            nfk(shell, f"embed est X[:5] -o {bad}")
    assert shell.user_ns["__builtins__"] is not None and shell.user_ns.get("class") is None
    with pytest.warns(UserWarning, match="shadows the Python builtin 'print'"):
        nfk(shell, "embed est X[:5] -o print")
    shell.user_ns.pop("print")


def test_options_are_checked_before_any_computation(shell, est, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("computed before the options were checked")

    monkeypatch.setattr(LowRankNFK, "transform", no_work)
    monkeypatch.setattr(LowRankNFK, "fit", no_work)
    for line, words in [("explore est X --images 9,9", "--images 9,9 needs 81 values per input"),
                        ("explore est X --index 200", "--index 200 is out of range for 200 points"),
                        ("explore est X --labels y[:10]", "has 10 entries but the data have 200 rows"),
                        ("kernel est X --labels y[:10]", "has 10 entries but the data have 200 rows"),
                        ("fit net X --rank 3 --seed 99999999999999999999", "|seed| < 2**63"),
                        ("fit net X --damping 1e9", "damping must be a non-negative number at most")]:
        with pytest.raises(UsageError, match=re.escape(words)):
            nfk(shell, line)


def test_damping_zero_is_accepted_as_in_the_core(shell):
    est = nfk(shell, f"fit net X {FIT} --damping 0")
    assert est.damping == 0.0 and est.fisher_.damping == 0.0
