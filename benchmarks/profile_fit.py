"""Where a ``LowRankNFK`` fit spends its time: CPU seconds per stage of the digits default fit.

Wraps the operator's products (JVP sketches, VJP sketches, Fisher score moments) and the dense
linear algebra (QR, SVD) with CPU-time counters, fits twice (the first warms up) and prints the
second fit's breakdown. Run: ``python -m benchmarks.profile_fit``.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from ._common import (
    add_common_arguments,
    apply_common_arguments,
    digits_inputs,
    machine,
    print_table,
    trained_mlp,
)

NESTED = "(within the above: captures of a, δ)"


def _wrap(owner: Any, name: str, key: str, spent: dict[str, float]) -> Callable[[], None]:
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key] += time.process_time() - t0

    setattr(owner, name, timed)
    return lambda: setattr(owner, name, original)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--power-iters", type=int, default=2)
    parser.add_argument("--fisher", default="diagonal", help="diagonal, identity or kfac")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    import nfk_nb as nfk
    from nfk_nb import fisher, gram, kfac, layerwise, products

    X, y = digits_inputs()
    lik = nfk.Classifier(trained_mlp([64, 256, 256, 10], X[:1200], y[:1200]))
    spent: dict[str, float] = defaultdict(float)
    undo = [
        _wrap(products.FisherVectorProducts, "matvec", "V Uᵀ (JVP passes)", spent),
        _wrap(products.FisherVectorProducts, "rmatvec", "Aᵀ V (VJP passes)", spent),
        _wrap(fisher, "score_moment", "Fisher: score moments", spent),
        _wrap(kfac, "estimate_factors", "Fisher: KFAC factors", spent),
        _wrap(kfac, "whitened_trace", "trace K (KFAC)", spent),
        _wrap(gram, "layerwise_kernel", "exact K, layer-wise (Gram route)", spent),
        _wrap(torch.linalg, "qr", "QR", spent),
        _wrap(torch.linalg, "svd", "SVD", spent),
        # nested inside the stages above (not added to their sum):
        _wrap(layerwise.LayerwiseOperator, "_record", NESTED, spent),
    ]
    try:
        for _ in range(2):
            spent.clear()
            est = nfk.LowRankNFK(lik, rank=args.rank, power_iters=args.power_iters, progress=False,
                                 fisher=args.fisher)
            c0 = time.process_time()
            est.fit(X)
            total = time.process_time() - c0
    finally:
        for u in undo:
            u()
    top = {k: v for k, v in spent.items() if k != NESTED and v > 0}
    rows = [{"stage": k, "cpu s": v, "share": v / total} for k, v in top.items()]
    rows.append({"stage": "other", "cpu s": total - sum(top.values()),
                 "share": 1 - sum(top.values()) / total})
    rows.append({"stage": NESTED, "cpu s": spent[NESTED], "share": spent[NESTED] / total})
    rows.append({"stage": "whole fit", "cpu s": total, "share": 1.0})
    print(f"\n## profile of LowRankNFK(rank={args.rank}, power_iters={args.power_iters}, "
          f"fisher={args.fisher!r}) on digits")
    print(f"machine: {machine()}; strategies chosen: {est.operator.choices}")
    print_table("time per stage", rows, ("stage", "cpu s", "share"))
    return rows


if __name__ == "__main__":
    main()
