"""Mutation check: does the test suite notice single-line faults in the package?

Each fault replaces one line of ``nfk_nb`` (found by its text, wherever the module now lives) in a
throw-away copy of the repository, then runs the tests named for it there. A fault is *caught* when
at least one of those tests fails; the check fails if any fault goes unnoticed, if a fault's line is
no longer in the package (the list is stale), or if the unmutated copy does not pass.

Not part of ``make test`` (it runs the core tests once per fault, a few minutes in all)::

    python tools/mutation_check.py               # every fault, a Markdown table at the end
    python tools/mutation_check.py --only damping offset
    python tools/mutation_check.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORE = ["tests/test_core_exact.py", "tests/test_core_lowrank.py"]
MODES = ["tests/test_reliability_modes.py"]


@dataclass(frozen=True)
class Fault:
    """One single-line fault: ``old`` (a unique line fragment in nfk_nb) becomes ``new``."""

    key: str
    what: str
    old: str
    new: str
    tests: tuple[str, ...] = tuple(CORE)


FAULTS = [
    # the five faults of issue 16 that the suite used to miss or catch only by luck
    Fault("damping", "default damping 1e-2 -> 1e-3",
          "DEFAULT_DAMPING = 1e-2", "DEFAULT_DAMPING = 1e-3"),
    Fault("regressor_sigma", "Regressor divides by 2σ instead of 2σ²",
          ".sum(-1) / (2 * self.sigma**2)\n", ".sum(-1) / (2 * self.sigma)\n"),
    Fault("vae_l1", "Gaussian VAE: L1 instead of L2 reconstruction",
          "rec = -((target - out) ** 2).sum(-1)", "rec = -(target - out).abs().sum(-1)"),
    Fault("weights_only", "default parameter selection: weights only",
          "chosen = [n for n, p in named if p.requires_grad]",
          'chosen = [n for n, p in named if p.requires_grad and n.endswith("weight")]'),
    Fault("offset", "matrix-vector product V Uᵀ drops the offset mᵀDu",
          "rows.append(y - offset)", "rows.append(y)"),
    # further faults of our own
    Fault("fisher_exponent", "Fisher scaling I^-1 instead of I^-1/2",
          "torch.where(damped > 0, safe.rsqrt(), torch.zeros_like(damped))",
          "torch.where(damped > 0, safe.reciprocal(), torch.zeros_like(damped))"),
    Fault("centre_off_by_one", "partition term divides by n + 1",
          "mean = (total / n).to(acc_dtype)", "mean = (total / (n + 1)).to(acc_dtype)"),
    Fault("uncentred_diag", "Fisher diagonal from uncentred scores",
          "sq, n = score_moment(op, reference(), mean if centered else None, 2, reducer, tick)",
          "sq, n = score_moment(op, reference(), None, 2, reducer, tick)"),
    Fault("rmatvec_offset", "product Aᵀ V drops the (Σa) mᵀ term",
          "total.addr_(weight_sums, self.mean, alpha=-1)", "total.addr_(weight_sums, self.mean, alpha=0)"),
    Fault("joint_max", "joint score max instead of logsumexp",
          "return torch.logsumexp(logits, dim=-1)", "return logits.max(dim=-1).values"),
    Fault("vae_kl", "VAE KL term loses its -log σ² part",
          "kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)\n        return rec.mean(1) - kl",
          "kl = 0.5 * (mu**2 + logvar.exp() - 1.0).sum(-1)\n        return rec.mean(1) - kl"),
    Fault("sampler_seed", "sampler draws ignore the estimator's seed",
          "torch.manual_seed(seed)\n            out = self.sampler(self.n_samples)",
          "torch.manual_seed(0)\n            out = self.sampler(self.n_samples)"),
    Fault("trace_unscaled", "trace K summed over unscaled scores",
          "return float((sq * fisher.scale.to(sq.dtype) ** 2).sum())", "return float(sq.sum())"),
    Fault("power_iters_capped", "power iterations capped at one",
          "n_passes = 2 * power_iters + 2", "n_passes = 2 * min(power_iters, 1) + 2"),
    Fault("no_sign_flip", "no svd_flip sign convention on the components",
          "return svd_flip(Wt[:rank]), S[:rank]", "return Wt[:rank].contiguous(), S[:rank]",
          tuple(CORE + MODES)),
    Fault("no_eval_mode", "eval mode never entered",
          "                module.eval()\n", "                pass\n", tuple(MODES)),
]


def find_target(pkg: Path, old: str) -> Path:
    """The one file of the package that holds ``old`` exactly once."""
    hits = [(p, p.read_text(encoding="utf-8").count(old)) for p in sorted(pkg.rglob("*.py"))]
    hits = [(p, c) for p, c in hits if c]
    if len(hits) != 1 or hits[0][1] != 1:
        where = ", ".join(f"{p.relative_to(pkg.parent)} ×{c}" for p, c in hits) or "nowhere"
        raise LookupError(f"the fault's line must occur exactly once in nfk_nb; found: {where}")
    return hits[0][0]


def make_copy(dest: Path) -> None:
    """The package, the tests and the pytest configuration, without caches."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("nfk_nb", "tests", "notebooks"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def run_tests(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, list[str], str]:
    """Run pytest on ``tests`` inside ``copy``; return (exit code, failed test ids, output tail)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--no-header",
           *tests]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, [], "timed out"
    out = proc.stdout + proc.stderr
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)))
    return proc.returncode, failed, out[-3000:]


def short(test_id: str) -> str:
    """``tests/test_x.py::test_y[a]`` -> ``test_x::test_y[a]``."""
    return test_id.removeprefix("tests/").replace(".py::", "::")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="fault keys to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the faults and exit")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    ap.add_argument("--max-names", type=int, default=3, help="failing tests named per fault in the table")
    args = ap.parse_args(argv)
    faults = [f for f in FAULTS if not args.only or f.key in args.only]
    if args.list:
        for f in faults:
            print(f"{f.key:18s} {f.what}")
        return 0
    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="nfk-mutation-") as tmp:
        base = Path(tmp) / "base"
        make_copy(base)
        tests = tuple(sorted({t for f in faults for t in f.tests}))
        rc, failed, tail = run_tests(base, tests, args.timeout)
        if rc != 0:
            print(f"The unmutated copy does not pass {' '.join(tests)}:\n{tail}")
            return 2
        print(f"baseline: {' '.join(tests)} pass")
        for f in faults:
            work = Path(tmp) / f.key
            shutil.copytree(base, work)
            try:
                target = find_target(work / "nfk_nb", f.old)
            except LookupError as exc:
                rows.append((f, "STALE", str(exc), 0.0))
                ok = False
                continue
            target.write_text(target.read_text(encoding="utf-8").replace(f.old, f.new), encoding="utf-8")
            start = time.perf_counter()
            rc, failed, tail = run_tests(work, f.tests, args.timeout)
            took = time.perf_counter() - start
            # rc 1: tests ran and some failed. Anything else (2 interrupted, 4 usage, 5 nothing
            # collected, timeout) is not a test catching the fault.
            caught = rc == 1 and bool(failed)
            names = ", ".join(short(t) for t in failed[: args.max_names])
            if len(failed) > args.max_names:
                names += f", … ({len(failed)} in all)"
            missed = "no test failed" if rc == 0 else f"pytest exit {rc}: {tail[-300:]}"
            detail = names if caught else missed
            rows.append((f, "caught" if caught else "MISSED", detail, took))
            ok &= caught
            print(f"{f.key:18s} {'caught' if caught else 'MISSED'} ({took:.0f} s, {len(failed)} failed, "
                  f"in {target.relative_to(work)})", flush=True)
            shutil.rmtree(work)
    print("\n| fault | result | tests that caught it |\n|---|---|---|")
    for f, result, detail, _ in rows:
        print(f"| {f.what} (`{f.key}`) | {result} | {detail} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
