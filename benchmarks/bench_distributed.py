"""Data-parallel LowRankNFK: 1 vs 2 processes on this machine, and 8 GPUs × N nodes on paper.

Run: ``python -m benchmarks.bench_distributed [--rounds 3] [--rank 32] [--hidden 128]``

Measured (digits MLP 64-H-H-10, all 1,797 digits, Classifier score="joint", float32): the three
configurations run alternately, ``rounds`` times, so they share the machine's load:

* ``1 proc × T threads``: ``est.fit_transform`` in this process (T = torch's thread count);
* ``1 proc × T/2 threads``;
* ``2 procs × T/2 threads``: ``nfk_nb.launch.run_workers`` (fork, gloo on 127.0.0.1); ``wall`` counts
  starting the processes and the process group, ``fit`` is rank 0's ``fit_time_``.

Communication is counted by ``nfk_nb.distributed.COMM_STATS`` and checked against the formula: per
power iteration one all-reduce of ``l × P`` values (``Aᵀ V``) and one all-gather of the ``N × l``
sketch (for its QR); the Fisher passes add one all-reduce of ``P`` values each (two when the score
is centred) and the final ``B = Qᵀ V`` is one more gather + all-reduce. ``l = rank + oversample``.

On paper (ring all-reduce / all-gather, bandwidth-bound): with W = 8·nodes GPUs, per pass
``t_compute = N · l · c / W`` (c: seconds per example and sketch column on one GPU, an assumption
see ``WORKLOADS``) and per power iteration ``t_comm = 2 (W-1)/W · 4 l P / B +
(W-1)/W · 4 N l / B`` with B the bus bandwidth (NVLink inside a node, the NIC across nodes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from typing import Any

import torch

import nfk_nb as nfk
from nfk_nb.distributed import COMM_STATS, get_reducer, reset_comm_stats
from nfk_nb.launch import run_workers

from ._common import digits_inputs, trained_mlp

# -- measured ---------------------------------------------------------------------------------------


def _fit_rank(rank: int, world: int, progress: Any, est: Any, shard: Any) -> dict[str, Any]:
    reset_comm_stats()
    E = est.fit_transform(shard)
    return {"E": E, "fit": est.fit_time_, "comm": dict(COMM_STATS), "S": est.singular_values_}


def comm_formula(n: int, p: int, l: int, q: int, world: int, centered: bool) -> dict[str, int]:
    """Values moved by one rank's collectives in one fit (counts, not bytes)."""
    rows = -(-n // world) * world  # all-gather pads every block to the largest
    reduce = (2 if centered else 1) * p + (q + 1) * l * p
    gather = (q + 1) * rows * l
    # +count all-reduces (1 value each) and the shard-size gathers of gather_rows / local_rows
    return {"sum_values": reduce, "gather_values": gather}


def measure(rounds: int, rank: int, hidden: int, oversample: int, power_iters: int) -> dict[str, Any]:
    X, y = digits_inputs()
    net = trained_mlp([64, hidden, hidden, 10], X[:1200], y[:1200])
    lik = nfk.Classifier(net, score="joint")

    def make() -> nfk.LowRankNFK:
        return nfk.LowRankNFK(lik, rank=rank, oversample=oversample, power_iters=power_iters,
                              progress=False)

    threads = torch.get_num_threads()
    half = max(1, threads // 2)
    times: dict[str, list[float]] = {f"1 proc x {threads} threads": [], f"1 proc x {half} threads": [],
                                     f"2 procs x {half} threads (wall)": [],
                                     f"2 procs x {half} threads (fit)": []}
    load = [os.getloadavg()[0]]
    E1 = S1 = comm = None
    for _ in range(rounds):
        for t in (threads, half):
            torch.set_num_threads(t)
            est = make()
            start = time.perf_counter()
            E1 = est.fit_transform(X)
            times[f"1 proc x {t} threads"].append(time.perf_counter() - start)
            S1 = est.singular_values_
        torch.set_num_threads(threads)  # run_workers gives each worker threads // 2
        n0 = (len(X) + 1) // 2
        start = time.perf_counter()
        out = run_workers(_fit_rank, [(make(), X[:n0]), (make(), X[n0:])])
        times[f"2 procs x {half} threads (wall)"].append(time.perf_counter() - start)
        times[f"2 procs x {half} threads (fit)"].append(out[0]["fit"])
        E2 = torch.cat([o["E"] for o in out])
        comm = out[0]["comm"]
        load.append(os.getloadavg()[0])
    assert get_reducer().world_size == 1
    P = sum(p.numel() for p in net.parameters())
    l = rank + oversample
    return {
        "times": times, "load": load, "N": len(X), "P": P, "l": l, "q": power_iters,
        "rel_diff": float((E2 - E1).norm() / E1.norm()),
        "sv_rel_diff": float(((out[0]["S"] - S1).abs() / S1).max()),
        "comm": comm, "formula": comm_formula(len(X), P, l, power_iters, 2, lik.centered),
    }


# -- on paper ---------------------------------------------------------------------------------------

# (name, N, P, assumed GPU seconds per example and sketch column): a JVP or VJP costs about 3
# forwards; ResNet-18 on 32×32 is ~0.56 GFLOP per forward, ResNet-50 on 224×224 ~4.1 GFLOP; both at
# an assumed ~100 TFLOP/s achieved. Assumptions, not measurements: no GPU was available here.
WORKLOADS = (("CIFAR-10 ResNet-18", 50_000, 11_200_000, 3 * 0.56e9 / 1e14),
             ("ImageNet ResNet-50", 1_281_167, 25_600_000, 3 * 4.1e9 / 1e14))


def paper_scaling(n: int, p: int, l: int, q: int, nodes: list[int], col_seconds: float,
                  nvlink_gbs: float, nic_gbs: float) -> list[dict[str, float]]:
    """Seconds per power iteration (two passes over the data + communication), 8 GPUs per node."""
    rows = []
    t1 = 2 * n * l * col_seconds
    for m in nodes:
        w = 8 * m
        bw = (nvlink_gbs if m == 1 else nic_gbs) * 1e9  # a multi-node ring is limited by the NIC
        allreduce = 2 * (w - 1) / w * 4 * l * p / bw
        gather = (w - 1) / w * 4 * n * l / bw
        compute = t1 / w
        total = compute + allreduce + gather
        rows.append({"nodes": m, "gpus": w, "compute_s": compute, "allreduce_s": allreduce,
                     "gather_s": gather, "iter_s": total, "speedup": t1 / total,
                     "efficiency": t1 / total / w, "allreduce_MB": 4 * l * p / 1e6,
                     "gather_MB": 4 * n * l / 1e6})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--oversample", type=int, default=10)
    parser.add_argument("--power-iters", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--col-scale", type=float, default=1.0,
                        help="multiply the assumed GPU seconds per example-column (see WORKLOADS)")
    parser.add_argument("--nvlink-gbs", type=float, default=300.0, help="intra-node bus bandwidth, GB/s")
    parser.add_argument("--nic-gbs", type=float, default=40.0,
                        help="inter-node bus bandwidth per GPU, GB/s (400 Gb/s NIC per GPU)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)

    m = measure(args.rounds, args.rank, args.hidden, args.oversample, args.power_iters)
    print(f"digits MLP 64-{args.hidden}-{args.hidden}-10: N={m['N']}, P={m['P']}, rank={args.rank}, "
          f"l={m['l']}, q={m['q']}, {args.rounds} rounds; load average {m['load'][0]:.1f} -> "
          f"{m['load'][-1]:.1f} on {os.cpu_count()} CPUs (shared machine: timings taken under load)")
    for name, ts in m["times"].items():
        print(f"  {name:32s} median {statistics.median(ts):6.2f} s   all {', '.join(f'{t:.2f}' for t in ts)}")
    print(f"  2-process embedding vs 1-process: relative difference {m['rel_diff']:.1e}, singular values "
          f"{m['sv_rel_diff']:.1e}")
    c, f = m["comm"], m["formula"]
    print(f"  communication per rank, one fit: all-reduced {c['sum']:,} values (formula {f['sum_values']:,} "
          f"+ counts), all-gathered {c['gather']:,} values (formula {f['gather_values']:,} + shard sizes), "
          f"{c['collectives']} collectives")
    print(f"  per power iteration: all-reduce l*P = {m['l'] * m['P']:,} values "
          f"({4 * m['l'] * m['P'] / 1e6:.1f} MB float32), gather N*l = {m['N'] * m['l']:,} values")

    for label, n, p, col in WORKLOADS:
        col *= args.col_scale
        print(f"\non paper: {label}, N={n:,}, P={p:,}, l={m['l']}, c={col:g} s per "
              f"example-column, NVLink {args.nvlink_gbs:g} GB/s, NIC {args.nic_gbs:g} GB/s")
        print("  nodes  GPUs  compute/iter  all-reduce  gather   speedup  efficiency")
        for r in paper_scaling(n, p, m["l"], m["q"], [1, 2, 4, 8, 16, 32], col,
                               args.nvlink_gbs, args.nic_gbs):
            print(f"  {r['nodes']:5d} {r['gpus']:5d} {r['compute_s']:11.3f}s {r['allreduce_s']:9.3f}s "
                  f"{r['gather_s']:7.3f}s {r['speedup']:8.1f} {r['efficiency']:10.0%}")
        print(f"  per power iteration: all-reduce {4 * m['l'] * p / 1e6:,.0f} MB, gather "
              f"{4 * n * m['l'] / 1e6:,.0f} MB (float32)")
    return m


if __name__ == "__main__":
    main()
