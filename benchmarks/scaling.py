"""Cost curves of ``LowRankNFK`` (default settings) in N, P and rank, with log-log slopes.

An untrained seeded MLP 64-h-h-10 on generated inputs; one variable changes at a time around
N=1000, h=256 (P≈85k), rank 16. Times are CPU seconds of the whole fit (Fisher passes included);
the exact path is timed along N for comparison (its Gram matrix is O(N² P)).
Run: ``python -m benchmarks.scaling`` (``--quick`` for fewer points).
"""

from __future__ import annotations

import argparse

from ._common import (
    add_common_arguments,
    apply_common_arguments,
    exact_user_way,
    loglog_slope,
    lowrank_way,
    machine,
    measure,
    print_table,
)
from .big_mlp import generated_inputs


def _net(hidden: int):
    from nfk_nb.zoo.classifier import mlp

    return mlp([64, hidden, hidden, 10], seed=0).eval()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="three points per curve")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    import nfk_nb as nfk

    print(f"\n## scaling of LowRankNFK (q=2, oversample 10)\nmachine: {machine()}")
    ns = (500, 1000, 2000) if args.quick else (500, 1000, 2000, 4000)
    hs = (64, 128, 256) if args.quick else (64, 128, 256, 512)
    ks = (8, 16, 32) if args.quick else (8, 16, 32, 64)
    X, _ = generated_inputs(max(ns))
    lowrank_way(nfk.Classifier(_net(64)), X[:64], 4, power_iters=0)  # warm-up
    rows, slopes = [], []

    def curve(var: str, values, run) -> None:
        cpu, xs = [], []
        for v in values:
            m, extra = run(v)
            cpu.append(m.cpu)
            xs.append(extra["P"] if var.startswith("P") else v)  # the P curve is against P, not h
            rows.append({"vary": var, "value": v, "wall s": m.wall, "cpu s": m.cpu,
                         "peak MB": m.peak_mb, **extra})
        slopes.append({"vary": var, "log-log slope (cpu)": loglog_slope(xs, cpu)})

    def by_n(n):
        lik = nfk.Classifier(_net(256))
        return measure(f"N={n}", lambda: lowrank_way(lik, X[:n], 16)), {"P": lik_p(lik)}

    def by_h(h):
        lik = nfk.Classifier(_net(h))
        return measure(f"h={h}", lambda: lowrank_way(lik, X[:1000], 16)), {"P": lik_p(lik)}

    def by_k(k):
        lik = nfk.Classifier(_net(256))
        return measure(f"k={k}", lambda: lowrank_way(lik, X[:1000], k)), {"P": lik_p(lik)}

    def exact_n(n):
        net = _net(256)
        return measure(f"exact N={n}", lambda: exact_user_way(net, X[:n], 16)), {"P": lik_p(
            nfk.Classifier(net))}

    curve("N", ns, by_n)
    curve("P (hidden)", hs, by_h)
    curve("rank", ks, by_k)
    curve("N, exact way", ns[:3], exact_n)
    print_table("LowRankNFK cost curves", rows, ("vary", "value", "P", "wall s", "cpu s", "peak MB"))
    print_table("log-log slopes", slopes, ("vary", "log-log slope (cpu)"))
    return rows + slopes


def lik_p(lik) -> int:
    return sum(p.numel() for p in lik.model.parameters())


if __name__ == "__main__":
    main()
