"""The model-zoo matrix of ``tests/test_model_zoo.py`` as a table: does each architecture work, how
long a rank-4 fit takes, its peak memory, and its error against the exact kernel.

For every model (float64, tiny widths, N = 12-16): ``fit s`` and ``peak MB`` of
``LowRankNFK(rank=4).fit_transform`` (``_common.measure``), ``err/opt`` = ``‖K - E Eᵀ‖_F`` over the
optimal rank-4 error, ``exact vs oracle`` = the largest relative difference between
``fisher_vectors`` and per-example gradients from one autograd call per example, and whether the
model needed the single-example fallback (``VmapFallbackWarning``). Run:
``python -m benchmarks.zoo_table``.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from ._common import add_common_arguments, apply_common_arguments, machine, measure


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    torch.set_default_dtype(torch.float64)
    import nfk_nb as nfk
    from nfk_nb._fallback import VmapFallbackWarning
    from tests.test_model_zoo import error_over_optimum, oracle
    from tests.zoo_models import CPU_CASES, HF_CASES

    cases = dict(CPU_CASES)
    try:
        import transformers  # noqa: F401

        cases.update(HF_CASES)
    except ImportError:
        pass
    rows = []
    for key, build in cases.items():
        case = build()
        lik = case.make_lik(case.model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = nfk.LowRankNFK(lik, rank=4, batch_size=8, progress=False)
            fit = measure(key, lambda est=est, case=case: est.fit_transform(case.data))
            V = nfk.fisher_vectors(lik, case.data, batch_size=8)
        fallback = any(issubclass(w.category, VmapFallbackWarning) for w in caught)
        want = oracle(case)
        rows.append({
            "model": case.name, "P": est.n_params_, "N": est.n_samples_fit_, "fallback": fallback,
            "fit_s": fit.wall, "peak_mb": fit.peak_mb,
            "err_opt": error_over_optimum(V @ V.T, fit.out),
            "exact_vs_oracle": float((V - want).abs().max() / want.abs().max()),
        })
    print(f"# {machine()}")
    print("| model | P | N | works | fallback | fit s | peak MB | err/opt (rank 4) | exact vs oracle |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['P']:,} | {r['N']} | yes | {'per example' if r['fallback'] else '-'} | "
              f"{r['fit_s']:.2f} | {r['peak_mb']:.0f} | {r['err_opt']:.4f} | {r['exact_vs_oracle']:.1e} |")
    return rows


if __name__ == "__main__":
    main()
