"""Scale: MLP 64-512-512-10 (P≈301k) on N=20,000 generated inputs, rank 64 — low-rank only.

The exact path would need the N×P Fisher vectors (24 GB in float32) before its Gram matrix, so only
``LowRankNFK`` runs; the table prints its wall time, peak memory and the forward-pass budget ratio.
Targets: at most 600 s and 4 GB peak on the 2-core machine.

Run: ``python -m benchmarks.big_mlp`` (long: minutes); ``--n`` and ``--single-pass`` change the case.
"""

from __future__ import annotations

import argparse

import torch

from ._common import (
    add_common_arguments,
    apply_common_arguments,
    forward_seconds,
    lowrank_way,
    machine,
    measure,
    print_table,
    trained_mlp,
)


def generated_inputs(n: int, dim: int = 64, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor,
                                                                                       torch.Tensor]:
    """Gaussian clusters in ``dim`` dimensions with a random linear warp (labels = clusters)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 1.5
    y = torch.randint(classes, (n,), generator=gen)
    X = centres[y] + torch.randn(n, dim, generator=gen)
    warp = torch.randn(dim, dim, generator=gen) / dim**0.5
    return torch.tanh(X @ warp), y


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--single-pass", action="store_true", help="also fit with sketch='single_pass'")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    import nfk_nb as nfk

    X, y = generated_inputs(args.n)
    net = trained_mlp([64, args.hidden, args.hidden, 10], X[:2000], y[:2000], epochs=3)
    P = sum(p.numel() for p in net.parameters())
    print(f"\n## big MLP 64-{args.hidden}-{args.hidden}-10: N={args.n}, P={P}, rank={args.rank}")
    print(f"machine: {machine()}")
    print(f"the exact path would need N×P = {args.n * P * 4 / 2**30:.1f} GiB of Fisher vectors "
          f"(float32) plus a {args.n**2 * 4 / 2**30:.1f} GiB Gram matrix")
    lik = nfk.Classifier(net)
    lowrank_way(lik, X[:64], 8, power_iters=0, oversample=0)  # warm-up
    t_fwd = forward_seconds(net, X)
    print(f"one plain forward pass over the data: {t_fwd:.3f} s cpu", flush=True)
    l = args.rank + 10
    configs = [("LowRankNFK q=2 (default)", {}, 6)]
    if args.single_pass:
        configs.append(("LowRankNFK single_pass", {"sketch": "single_pass"}, 2))
    rows = []
    for name, kwargs, passes in configs:
        m = measure(name, lambda kw=kwargs: lowrank_way(lik, X, args.rank, **kw))
        rows.append({"method": name, "wall s": m.wall, "cpu s": m.cpu, "peak MB": m.peak_mb,
                     "fwd budget": m.cpu / (passes * l * t_fwd)})
        print(f"{name}: {m.wall:.1f} s wall, {m.peak_mb:.0f} MB peak", flush=True)
    print_table(f"big MLP, N={args.n}, P={P}, rank {args.rank}", rows,
                ("method", "wall s", "cpu s", "peak MB", "fwd budget"))
    return rows


if __name__ == "__main__":
    main()
