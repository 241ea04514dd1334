"""The low-rank fit over 2 processes (gloo, CPU, float64) equals the single-process fit on the same data."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import nfk_nb as nfk
from nfk_nb.distributed import Reducer, get_reducer
from nfk_nb.launch import WorkerError, fit_workers, run_workers
from nfk_nb.process_group import shard_bounds, shard_sizes
from nfk_nb.serialization import load_state

from .oracle import trained_classifier

ROOT = Path(__file__).resolve().parents[1]
RANK = 3


pytestmark = pytest.mark.usefixtures("float64_default")


def small_problem(n=71, d=5, c=3, seed=0):
    """A briefly trained classifier, so the spectrum decays like a real network's."""
    return trained_classifier(n, d, c, hidden=8, steps=30, seed=seed)


def likelihood(name, net, d):
    if name == "joint":  # partition term from the data: the mean score is all-reduced
        return nfk.Classifier(net, score="joint")
    torch.manual_seed(1)  # energy model: sampler draws split across ranks
    gen = nn.Linear(2, d).double()
    disc = nn.Sequential(nn.Linear(d, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    return nfk.EnergyModel(disc, sampler=lambda n: gen(torch.randn(n, 2)), n_samples=37)


def estimator(lik, **kw):
    return nfk.LowRankNFK(lik, rank=RANK, oversample=4, power_iters=2, batch_size=16, progress=False, **kw)


def _fit_and_save(rank, world, progress, est, shard, path):
    """One rank: fit on its shard, gather every row, save the full estimator (as the CLI does)."""
    assert type(get_reducer()).__name__ == "TorchDistributedReducer"
    E_local = est.fit_transform(shard)
    E = get_reducer().gather_rows(E_local)
    est.embedding_ = E
    est.save(path)
    return E_local, est.singular_values_, est.transform(shard[:4])


def _meta_without_timing(path):
    tensors, meta = load_state(path)
    meta["fitted"].pop("fit_time")
    for key in ("checksum", "meta_checksum"):  # hashes of the fields compared here
        meta.pop(key, None)
    return tensors, meta


def test_single_process_reducer_is_the_identity():
    r = get_reducer()
    t = torch.arange(6.0).reshape(3, 2)
    assert type(r) is Reducer and r.world_size == 1
    assert r.sum(t) is t and r.gather_rows(t) is t and r.count(5) == 5
    assert shard_sizes(7, 3) == [3, 2, 2]
    assert [shard_bounds(7, 3, k) for k in range(3)] == [(0, 3), (3, 5), (5, 7)]


def _reducer_ops(rank, world, progress):
    r = get_reducer()
    rows = torch.arange(6.0).reshape(3, 2) + 10 * rank
    mine = rows[: 3 - 2 * rank]  # 3 rows on rank 0, 1 on rank 1
    full = r.gather_rows(mine)
    empty = r.gather_rows(torch.ones(0, 2) if rank == 1 else torch.ones(2, 2))
    return (r.rank, r.world_size, r.sum(torch.tensor([1.0, rank])), r.count(len(mine)), full,
            r.local_rows(full * 2, len(mine)), empty.shape)


def test_torch_distributed_reducer_on_two_processes():
    a, b = run_workers(_reducer_ops, [(), ()], timeout=60)
    assert (a[0], a[1], b[0], b[1]) == (0, 2, 1, 2)
    for rank, _, total, count, full, local, empty in (a, b):
        torch.testing.assert_close(total, torch.tensor([2.0, 1.0]))
        assert count == 4 and empty == (2, 2)
        torch.testing.assert_close(full, torch.tensor([[0.0, 1], [2, 3], [4, 5], [10, 11]]))
        torch.testing.assert_close(local, 2 * full[:3] if rank == 0 else 2 * full[3:])


@pytest.mark.parametrize("name", ["joint", "energy"])
def test_two_processes_match_one(name, tmp_path):
    net, X, _ = small_problem()
    lik = likelihood(name, net, X.shape[1])
    single = estimator(lik)
    E1 = single.fit_transform(X)
    single.save(tmp_path / "single.safetensors")

    cut = 48  # uneven shards: 48 and 23 rows
    paths = [tmp_path / f"rank{r}.safetensors" for r in range(2)]
    results = run_workers(_fit_and_save, [(estimator(lik), X[:cut], paths[0]),
                                          (estimator(lik), X[cut:], paths[1])], timeout=120)
    E2 = torch.cat([E for E, _, _ in results])
    assert [len(E) for E, _, _ in results] == [48, 23]  # fit_transform returns this rank's rows
    rel = (E2 - E1).norm() / E1.norm()
    assert rel < 1e-6, rel
    for _, S, _ in results:
        torch.testing.assert_close(S, single.singular_values_, rtol=1e-9, atol=0)
    # transform works on any rank and agrees with the single-process map
    torch.testing.assert_close(results[1][2], single.transform(X[cut : cut + 4]), rtol=1e-6, atol=1e-9)

    # the fitted state is bit-identical on both ranks: same tensors and metadata but for fit_time
    (t0, m0), (t1, m1) = (_meta_without_timing(p) for p in paths)
    assert m0 == m1
    assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    # and rank 0's file equals the single-process one (tensors to 1e-6, metadata exactly but trace)
    ts, ms = _meta_without_timing(tmp_path / "single.safetensors")
    trace_s, trace_0 = ms["fitted"].pop("trace"), m0["fitted"].pop("trace")  # sums in another order
    assert trace_0 == pytest.approx(trace_s, rel=1e-12)
    assert ms == m0
    for k in ts:
        assert (t0[k] - ts[k]).norm() <= 1e-6 * ts[k].norm() + 1e-12, k
    reloaded = nfk.LowRankNFK.load(paths[0], lik)
    torch.testing.assert_close(reloaded.transform(X[:5]), E1[:5], rtol=1e-6, atol=1e-9)


def test_fit_workers_gathers_rows_and_shows_one_bar():
    net, X, y = small_problem(n=45)
    lik = nfk.Classifier(net, score="label")
    E1 = estimator(lik).fit_transform((X, y))
    bars = []

    class Bar:
        def __init__(self, total, desc=""):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def close(self):
            self.closed = True

    est = nfk.LowRankNFK(lik, rank=RANK, oversample=4, batch_size=16, progress=Bar)
    E2 = fit_workers(est, (X, y), workers=2, timeout=120)
    assert E2.shape == E1.shape == est.embedding_.shape
    assert (E2 - E1).norm() / E1.norm() < 1e-6
    assert est.n_samples_fit_ == 45
    # one bar, rank 0's (its 23 rows), counted to the end: the total of a fit of those rows alone
    assert len(bars) == 1 and bars[0].n == bars[0].total and bars[0].closed
    nfk.LowRankNFK(lik, rank=RANK, oversample=4, batch_size=16, progress=Bar).fit((X[:23], y[:23]))
    assert bars[0].total == bars[1].total
    # the fitted state came back: transform runs here and is the same map
    torch.testing.assert_close(est.transform((X[:6], y[:6])), E1[:6], rtol=1e-6, atol=1e-9)
    assert not mp.active_children()


class Failing:
    """log p of a linear model that raises on rank 1 at its n-th call, while rank 0 waits in a sum."""

    def __init__(self, after):
        self.calls, self.after = 0, after

    def __call__(self, model, x):
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            self.calls += 1
            if self.calls > self.after:
                raise nfk.NFKError("rank 1 gave up on purpose")
        return model(x)[:, 0]


def test_a_failing_rank_ends_the_job_with_its_error():
    net, X, _ = small_problem(n=40)
    est = estimator(nfk.Likelihood(Failing(after=3), net))
    start = time.monotonic()
    with pytest.raises(nfk.NFKError, match="gave up on purpose") as info:
        fit_workers(est, X, workers=2, timeout=60)
    assert time.monotonic() - start < 60
    assert "rank 1" in "".join(getattr(info.value, "__notes__", ["rank 1"]))
    assert not mp.active_children()
    assert not hasattr(est, "components_")


def _fit_with_checkpoint(rank, world, progress, est, shard, path, crash_at):
    if crash_at is not None and rank == 1:  # rank 1 dies between a sum and its own checkpoint
        from nfk_nb import checkpoint

        original = checkpoint.FitCheckpoint.save

        def save(self, tensors, info):
            if info.get("sketch_passes") == crash_at:
                time.sleep(1.0)  # meanwhile rank 0 saves this stage
                raise RuntimeError("killed between the sum and the save")
            return original(self, tensors, info)

        checkpoint.FitCheckpoint.save = save  # in this forked worker only
    return est.fit_transform(shard, checkpoint=path)


def test_per_rank_checkpoints_resume_together(tmp_path):
    net, X, _ = small_problem()
    lik = nfk.Classifier(net)
    E1 = estimator(lik).fit_transform(X)
    path = tmp_path / "fit.ckpt"

    def args(crash_at):
        return [(estimator(lik), X[:40], path, crash_at), (estimator(lik), X[40:], path, crash_at)]

    with pytest.raises(RuntimeError, match="killed between"):
        run_workers(_fit_with_checkpoint, args(2), timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.ckpt.rank0", "fit.ckpt.rank1"]
    # the ranks stopped one stage apart: they must not resume apart (that paired the wrong collectives
    # and hung); they agree and start over together
    E2 = torch.cat(run_workers(_fit_with_checkpoint, args(None), timeout=60))
    assert (E2 - E1).norm() / E1.norm() < 1e-6
    assert not any(tmp_path.iterdir())  # removed after the successful fit


def _die(rank, world, progress):
    if rank == 1:
        os._exit(3)  # no Python error at all: a crash, an OOM kill
    torch.distributed.barrier()


def test_a_crashed_worker_is_reported_not_waited_for():
    start = time.monotonic()
    with pytest.raises(WorkerError, match="rank 1 died"):
        run_workers(_die, [(), ()], timeout=60)
    assert time.monotonic() - start < 60


def test_magic_fit_with_workers_in_a_test_shell():
    from IPython.core.interactiveshell import InteractiveShell

    net, X, _ = small_problem(n=33)
    E1 = estimator(nfk.Classifier(net, score="joint")).fit_transform(X)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nfk_nb")
    try:
        ip.user_ns.update(net=net, X=X)
        est = ip.run_line_magic("nfk", f"fit net X --rank {RANK} --oversample 4 --batch-size 16 --quiet "
                                       f"--workers 2 -o est_w")
    finally:
        ip.run_line_magic("unload_ext", "nfk_nb")
    assert ip.user_ns["est_w"] is est
    assert (est.embedding_ - E1).norm() / E1.norm() < 1e-6
    assert not mp.active_children()


SCRIPT = """
import torch
from torch import nn
import nfk_nb as nfk

torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
X = torch.randn(37, 5, generator=g)
model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
kind = "classifier"
{data}
"""


def _torchrun(tmp_path, data_line, *extra):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT.format(data=data_line)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "--monitor-interval=0.2", "-m", "nfk_nb", "fit", str(script), "--rank", str(RANK),
           "--oversample", "4", "--batch-size", "8", "--no-progress", "--out", str(tmp_path / "out"), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path, env=env)
    return proc, time.monotonic() - start, script


def test_cli_under_torchrun_writes_the_single_process_result(tmp_path):
    proc, _, script = _torchrun(tmp_path, "data = X")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ns = {}
    exec(compile(script.read_text(), str(script), "exec"), ns)
    lik = nfk.Classifier(ns["model"])
    single = nfk.LowRankNFK(lik, rank=RANK, oversample=4, batch_size=8, progress=False)
    E1 = single.fit_transform(ns["X"])
    E2 = load_file(tmp_path / "out" / "embedding.safetensors")["embedding"]
    assert (E2 - E1).norm() / E1.norm() < 1e-6
    est = nfk.LowRankNFK.load(tmp_path / "out" / "estimator.safetensors", lik)
    torch.testing.assert_close(est.singular_values_, single.singular_values_, rtol=1e-9, atol=0)
    torch.testing.assert_close(est.embedding_, E2)


def test_cli_under_torchrun_stops_on_a_failing_rank(tmp_path):
    data = ("import os\n"
            "def log_prob(model, x):\n"
            "    if os.environ['RANK'] == '1' and len(x) > 1:\n"
            "        raise nfk.NFKError('rank 1 gave up on purpose')\n"
            "    return model(x)[:, 0]\n"
            "likelihood = nfk.Likelihood(log_prob, model)\n"
            "def shard(rank, world_size):\n"
            "    return X[:20] if rank == 0 else X[20:]")
    proc, took, _ = _torchrun(tmp_path, data)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert took < 60, proc.stderr[-3000:]
    assert "gave up on purpose" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out" / "estimator.safetensors").exists()


def test_cli_rejects_scripts_without_data(tmp_path, capsys):
    from nfk_nb.cli import main

    script = tmp_path / "s.py"
    script.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    assert main(["fit", str(script), "--out", str(tmp_path / "out")]) == 1
    assert "defines neither `data`" in capsys.readouterr().err
