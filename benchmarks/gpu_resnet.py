"""GPU: a ResNet-18-size CNN (11.2M parameters) on 50,000 random 3×32×32 inputs, rank 128.

Prints samples per second of the whole fit (Fisher passes included) and peak GPU memory.
``--tf32`` allows TF32 matmuls/convolutions; ``--dtype bfloat16`` runs the products in bf16 (sums,
QR and SVD stay in float32, see ``LogProbOperator.acc_dtype``). ``--smoke`` shrinks
everything (width 8, N=64, rank 4) so the script can be checked on a CPU in seconds.

Run: ``python -m benchmarks.gpu_resnet`` on a CUDA machine; ``python -m benchmarks.gpu_resnet --smoke``
anywhere.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfk_nb.zoo.resnet import BasicBlock

from ._common import add_common_arguments, apply_common_arguments, machine, measure, print_table


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3×3 stem, no max-pool); ``width=64`` gives 11.2M parameters."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        layers, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            layers += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--power-iters", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=32, help="vmap chunk over sketch columns")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tf32", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs on a CPU in seconds")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    if args.smoke:
        args.n, args.rank, args.width, args.batch_size, args.chunk_size = 64, 4, 8, 32, None
    import nfk_nb as nfk

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    net = ResNet18(args.width).eval()
    dtype = getattr(torch, args.dtype)
    net = net.to(dtype)
    X = torch.randn(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    if device.type == "cuda":
        X = X.pin_memory()  # faster host-to-device copies of each batch
    P = sum(p.numel() for p in net.parameters())
    print(f"\n## ResNet-18 (width {args.width}): N={args.n}, P={P}, rank={args.rank}, "
          f"device {device}, {args.dtype}{', TF32' if args.tf32 else ''}")
    print(f"machine: {machine()}")
    lik = nfk.Classifier(net)
    est = nfk.LowRankNFK(lik, rank=args.rank, power_iters=args.power_iters, batch_size=args.batch_size,
                         device=device, chunk_size=args.chunk_size, progress=False)
    t0 = time.perf_counter()
    m = measure("fit", lambda: est.fit_transform(X), device)
    E = m.out
    row = {"N": args.n, "P": P, "rank": args.rank, "wall s": m.wall, "samples/s": args.n / m.wall,
           "peak MB": m.peak_mb, "top S": float(est.singular_values_[0])}
    print_table("ResNet-18 LowRankNFK fit", [row], tuple(row))
    assert E.shape == (args.n, args.rank) and bool(torch.isfinite(E).all()), "bad embedding"
    print(f"done in {time.perf_counter() - t0:.1f} s; strategies chosen: {est.operator.choices}")
    return row


if __name__ == "__main__":
    main()
