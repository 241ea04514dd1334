"""Peak memory of a low-rank fit on a ResNet-18-size CNN (11.2M parameters), against its parts.

The target (issue 10): a fit's peak resident memory is at most 1.5× the sum of

* the model (parameters and buffers),
* the activations of one batch (one forward and backward of ``Σ log p̃``, measured), and
* the ``l × P`` sketch (``l = rank + oversample`` rows of float32).

It also measures the random test matrix Ω alone: drawn directly in float32 in column chunks
(``nfk_nb.products.gaussian_test_matrix``) against the former float64 draw and cast.

Peak MB is the growth of the process's resident set during each call (``_common.measure``), so the
model and data, built before, are not counted in the fit's figure. Run:
``python -m benchmarks.memory_resnet`` (defaults: N=64 CIFAR-size images, rank 16, batch 64);
``--smoke`` shrinks the model (width 8) to check the script in seconds.
"""

from __future__ import annotations

import argparse
import gc

import torch

from ._common import add_common_arguments, apply_common_arguments, machine, measure
from .gpu_resnet import ResNet18


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--oversample", type=int, default=10)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--power-iters", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    if args.smoke:
        args.width, args.n, args.rank, args.batch_size = 8, 32, 4, 16
    import nfk_nb as nfk
    from nfk_nb.sketch import gaussian_test_matrix

    torch.manual_seed(0)
    model = ResNet18(args.width).eval()
    X = torch.randn(args.n, 3, 32, 32)
    P = sum(p.numel() for p in model.parameters())
    model_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    l = args.rank + args.oversample
    sketch_mb = l * P * 4 / 2**20

    def forward_backward() -> None:
        out = torch.logsumexp(model(X[: args.batch_size]), -1).sum()
        torch.autograd.grad(out, list(model.parameters()))

    gc.collect()
    act = measure("activations (one batch, fwd+bwd)", forward_backward)
    gc.collect()
    old = measure("Ω float64 draw + cast (before)",
                  lambda: torch.randn(l, P, generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64).to(torch.float32))
    gc.collect()
    new = measure("Ω float32 chunks (now)", lambda: gaussian_test_matrix(l, P, 0, torch.float32))
    gc.collect()
    est = nfk.LowRankNFK(nfk.Classifier(model), rank=args.rank, oversample=args.oversample,
                         power_iters=args.power_iters, batch_size=args.batch_size, progress=False)
    fit = measure("fit", lambda: est.fit(X))
    bound = model_mb + act.peak_mb + sketch_mb
    print(f"# ResNet-18-size CNN, P = {P:,}, N = {args.n}, rank {args.rank} (l = {l}), "
          f"batch {args.batch_size}; {machine()}")
    print(f"model {model_mb:.0f} MB, activations {act.peak_mb:.0f} MB, l×P sketch {sketch_mb:.0f} MB "
          f"-> sum {bound:.0f} MB")
    print(f"Ω: float64 draw + cast {old.peak_mb:.0f} MB peak, float32 chunks {new.peak_mb:.0f} MB peak "
          f"(Ω itself {sketch_mb:.0f} MB)")
    print(f"fit: {fit.wall:.1f} s wall, peak +{fit.peak_mb:.0f} MB = {fit.peak_mb / bound:.2f}× the sum "
          f"(target <= 1.5×)")
    return {"P": P, "model_mb": model_mb, "activations_mb": act.peak_mb, "sketch_mb": sketch_mb,
            "omega_old_mb": old.peak_mb, "omega_new_mb": new.peak_mb, "fit_mb": fit.peak_mb,
            "fit_s": fit.wall, "ratio": fit.peak_mb / bound}


if __name__ == "__main__":
    main()
