"""Which Fisher damping should be the default? Rank-k probe accuracy and trace concentration.

docs/design.md ("Damping is relative"): the diagonal Fisher ``I`` of a GAN discriminator, estimated on
generator samples, has coordinates that carry almost no information there; with too little damping
they dominate the Fisher vectors ``I^{-1/2} s(x)``. This script trains the zoo GAN on digits once per
seed and, for each damping setting, fits ``LowRankNFK(EnergyModel(disc, sampler))`` and reports

* the linear-probe test accuracy of the rank-k embedding (k = 16 by default), and
* the fraction of ``trace(K)`` held by the top k components (close to 1: a few directions dominate).

Settings: relative damping ``λ`` in ``I + λ·mean(I)`` for λ in {0, 1e-4, 1e-3, 1e-2, 1e-1, 1}; an
"absolute 1e-6" setting that mimics AFV's ``√I + 1e-6`` (``λ = (1e-6)² / mean(I)``, i.e. ``I + 1e-12``,
since ``√(I + ε²) ≈ max(√I, ε)``); ``fisher="identity"`` (the plain gradient kernel); and
``fisher="kfac"`` at the default relative damping (Kronecker factors per layer, ``nfk_nb.kfac``). With
``--classifier`` the same is done for the zoo MLP classifier (``Classifier(net, score="joint")``).

Run::

    .venv/bin/python -m benchmarks.damping_study --seeds 0 1 2 [--classifier] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from sklearn.decomposition import PCA

import nfk_nb as nfk
from nfk_nb.data import load_digits
from nfk_nb.evaluate import linear_probe
from nfk_nb.likelihoods import Likelihood
from nfk_nb.zoo import classifier as zc
from nfk_nb.zoo.gan import penultimate, train_gan

RELATIVE = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
ABS_EPS = 1e-6


def _settings(mean_diag: float) -> list[tuple[str, str, float]]:
    """``(label, fisher kind, relative damping)`` for every setting of the study."""
    out = [("absolute 1e-6 (AFV)", "diagonal", ABS_EPS**2 / mean_diag)]
    out += [(f"relative {lam:g}", "diagonal", lam) for lam in RELATIVE]
    out.append(("identity", "identity", 0.0))
    out.append(("kfac (relative 1e-2)", "kfac", 1e-2))
    return out


def study_model(lik: Likelihood, data: tuple[torch.Tensor, ...], rank: int, seed: int) -> dict[str, Any]:
    """Probe accuracy and top-``rank`` trace fraction of every damping setting, for one model."""
    X_tr, y_tr, X_te, y_te = data
    # one fit at the default just to read mean(I) for the absolute-epsilon equivalent
    probe_fit = nfk.LowRankNFK(lik, rank=1, power_iters=0, oversample=0, progress=False, seed=seed)
    probe_fit.fit(X_tr)
    mean_diag = float(probe_fit.fisher_.diag.mean())
    rows: dict[str, Any] = {"mean_fisher_diag": mean_diag}
    for label, kind, lam in _settings(mean_diag):
        t0 = time.perf_counter()
        est = nfk.LowRankNFK(lik, rank=rank, fisher=kind, damping=lam, progress=False, seed=seed)
        E = est.fit_transform(X_tr)
        E_te = est.transform(X_te)
        rows[label] = {
            "probe": linear_probe(E, y_tr, E_te, y_te),
            "trace_fraction": float(est.explained_variance_ratio_.sum()),
            "seconds": time.perf_counter() - t0,
        }
    return rows


def baselines(feat: Callable[[torch.Tensor], torch.Tensor], data: tuple, rank: int) -> dict[str, float]:
    """Probe accuracy of the raw features and of their top-``rank`` principal components."""
    X_tr, y_tr, X_te, y_te = data
    F_tr, F_te = feat(X_tr).numpy(), feat(X_te).numpy()
    pca = PCA(rank, random_state=0).fit(F_tr)
    return {
        "full": linear_probe(F_tr, y_tr, F_te, y_te),
        f"pca{rank}": linear_probe(pca.transform(F_tr), y_tr, pca.transform(F_te), y_te),
    }


def run(seeds: list[int], rank: int, epochs: int, n_samples: int, classifier: bool) -> dict[str, Any]:
    data = load_digits()
    X_tr, y_tr = data[0], data[1]
    results: dict[str, Any] = {"rank": rank, "epochs": epochs, "n_samples": n_samples, "gan": {},
                               "classifier": {}}
    results["pixels"] = baselines(lambda X: X, data, rank)
    for seed in seeds:
        t0 = time.perf_counter()
        gan = train_gan(X_tr, epochs=epochs, seed=seed)
        lik = nfk.EnergyModel(gan.discriminator, sampler=gan.sampler, n_samples=n_samples)
        rows = study_model(lik, data, rank, seed)
        rows["penultimate"] = baselines(lambda X, d=gan.discriminator: penultimate(d, X), data, rank)
        rows["seconds"] = time.perf_counter() - t0
        results["gan"][seed] = rows
        print(f"GAN seed {seed} done in {rows['seconds']:.0f} s", flush=True)
        if classifier:
            net = zc.mlp([64, 128, 128, 10], seed=seed)
            zc.train_classifier(net, X_tr, y_tr, epochs=30, seed=seed)
            results["classifier"][seed] = study_model(nfk.Classifier(net, score="joint"), data, rank, seed)
            print(f"classifier seed {seed} done", flush=True)
    return results


def _summary(per_seed: dict[Any, dict[str, Any]], key: str, field: str) -> str:
    vals = [r[key][field] for r in per_seed.values()]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def print_table(results: dict[str, Any]) -> None:
    k = results["rank"]
    for model in ("gan", "classifier"):
        per_seed = results[model]
        if not per_seed:
            continue
        first = next(iter(per_seed.values()))
        labels = [name for name, v in first.items() if isinstance(v, dict) and "probe" in v]
        print(f"\n{model} (seeds {list(per_seed)}, rank {k}; mean ± sd over seeds)")
        print(f"{'setting':<22} {'probe acc':>16} {'top-k trace':>16}")
        for label in labels:
            print(f"{label:<22} {_summary(per_seed, label, 'probe'):>16} "
                  f"{_summary(per_seed, label, 'trace_fraction'):>16}")
        if model == "gan":
            print(f"{'penultimate (full)':<22} {_summary(per_seed, 'penultimate', 'full'):>16}")
            print(f"{f'penultimate PCA-{k}':<22} {_summary(per_seed, 'penultimate', f'pca{k}'):>16}")
    px = results["pixels"]
    print(f"\nraw pixels: full {px['full']:.3f}, PCA-{k} {px[f'pca{k}']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--rank", type=int, default=16, help="embedding rank k")
    parser.add_argument("--epochs", type=int, default=150, help="GAN training epochs")
    parser.add_argument("--n-samples", type=int, default=1024, help="generator samples for m and I")
    parser.add_argument("--classifier", action="store_true", help="also study the MLP classifier")
    parser.add_argument("--json", help="write the raw results to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args.seeds, args.rank, args.epochs, args.n_samples, args.classifier)
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
