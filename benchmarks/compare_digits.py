"""Digits: MLP 64-256-256-10 trained on scikit-learn digits, N=1797, P≈85k, rank 32.

Run: ``python -m benchmarks.compare_digits`` (targets: default ``LowRankNFK`` at most 0.5× the exact
way's wall time and at most 1.05× the optimal rank-32 kernel error).
"""

from __future__ import annotations

import argparse

from ._common import add_common_arguments, apply_common_arguments, digits_inputs, trained_mlp
from ._compare import compare


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    X, y = digits_inputs()
    net = trained_mlp([64, 256, 256, 10], X[:1200], y[:1200])
    return compare(
        "digits MLP 64-256-256-10", net, X, args.rank, jl_dims=(args.rank + 10, 8 * args.rank),
        batch_size=args.batch_size,
        extra=[("LowRankNFK q=2 batch 1024", {"batch_size": 1024})],
    )


if __name__ == "__main__":
    main()
