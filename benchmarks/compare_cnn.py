"""Small CNN on 1×28×28 inputs: scikit-learn digits upsampled to 28×28, N=1797, rank 32.

Conv(1→16, 3, stride 2) → ReLU → Conv(16→32, 3, stride 2) → ReLU → Linear(1152→10), P≈16k,
trained briefly. Same table as ``compare_digits``. Run: ``python -m benchmarks.compare_cnn``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from ._common import add_common_arguments, apply_common_arguments, digits_inputs
from ._compare import compare


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 6 * 6, 10),
    )


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as 1×28×28 images (bilinear upsampling of the 8×8 originals)."""
    X, y = digits_inputs()
    return F.interpolate(X.reshape(-1, 1, 8, 8), size=(28, 28), mode="bilinear"), y


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank", type=int, default=32)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    from nfk_nb.zoo.classifier import train_classifier

    X, y = images()
    net = small_cnn()
    train_classifier(net, X[:1200], y[:1200], epochs=5, seed=0)
    return compare("small CNN 1×28×28", net, X, args.rank, power_iters=(0, 2),
                   jl_dims=(args.rank + 10,))


if __name__ == "__main__":
    main()
