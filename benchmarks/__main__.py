"""``python -m benchmarks`` (``make bench``): the comparison tables, quick cases by default.

Quick (default): digits MLP, small CNN, the peers side by side (torch.func, BackPACK, Opacus,
nngeometry, TRAK next to nfk_nb's exact, identity, KFAC and default fits), cost curves (three points
each), the profile of a fit, the GPU script's CPU smoke run. ``--big`` adds the N=20,000 / P≈301k
case (minutes) and the full cost curves; ``--gpu`` runs the full ResNet-18 benchmark (needs CUDA).
``--only NAME`` runs one of: digits, cnn, peers, scaling, profile, big, gpu. ``--threads`` is passed
on (default 1; see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", action="store_true", help="also the N=20k case and full curves")
    parser.add_argument("--gpu", action="store_true", help="the full ResNet-18 run (CUDA)")
    parser.add_argument("--only", choices=("digits", "cnn", "peers", "scaling", "profile", "big", "gpu"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from . import big_mlp, compare_cnn, compare_digits, gpu_resnet, peers, profile_fit, scaling

    threads = ["--threads", str(args.threads)]
    plan = {
        "digits": lambda: compare_digits.main(threads),
        "cnn": lambda: compare_cnn.main(threads),
        "peers": lambda: peers.main(threads),
        "scaling": lambda: scaling.main(threads + ([] if args.big else ["--quick"])),
        "profile": lambda: profile_fit.main(threads),
        "big": lambda: big_mlp.main(threads),
        "gpu": lambda: gpu_resnet.main(threads + ([] if args.gpu else ["--smoke"])),
    }
    if args.only:
        names = [args.only]
    else:
        names = ["digits", "cnn", "peers", "scaling", "profile"] + (["big"] if args.big else []) + ["gpu"]
    start = time.perf_counter()
    for name in names:
        plan[name]()
    print(f"\nbenchmarks done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
