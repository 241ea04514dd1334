"""Fit a low-rank NFK from a Python file (``nfk-nb fit SCRIPT``), under torchrun, SLURM or local workers.

The script defines ``likelihood`` (or ``model`` and ``kind``, read by
:func:`nfk_nb.options.make_likelihood`) and ``data`` (or ``shard(rank, world_size)``); see
:mod:`nfk_nb.launch` for the launch recipes. Math only: no Jupyter package is imported.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .data_checks import shard_offset
from .distributed import get_reducer
from .errors import NFKError
from .launch import DEFAULT_TIMEOUT_S, _split, fit_workers
from .options import DEFAULTS, DTYPES, FISHER_KINDS, HELP, SKETCHES, make_likelihood
from .process_group import init_from_env
from .records import format_seconds

ESTIMATOR_ARGS = ("rank", "fisher", "damping", "power_iters", "oversample", "batch_size", "seed",
                  "whiten", "chunk_size", "sketch")


def _help(name: str) -> str:
    default = DEFAULTS[name]
    return HELP[name] + ("" if default is None else f" (default: {default})")


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nfk-nb fit``."""
    parser.description = ("Fit a low-rank NFK from a Python file that defines `likelihood` (or `model` "
                          "and `kind`) and `data` (or `shard(rank, world_size)`); run it under torchrun "
                          "for several processes, or pass --workers N.")
    parser.add_argument("script", help="Python file defining the likelihood and the data.")
    parser.add_argument("--rank", type=int, help=_help("rank"))
    parser.add_argument("--fisher", choices=FISHER_KINDS, help=_help("fisher"))
    parser.add_argument("--damping", type=float, help=_help("damping"))
    parser.add_argument("--power-iters", dest="power_iters", type=int, help=_help("power_iters"))
    parser.add_argument("--oversample", type=int, help=_help("oversample"))
    parser.add_argument("--batch-size", dest="batch_size", type=int, help=_help("batch_size"))
    parser.add_argument("--seed", type=int, help=_help("seed"))
    parser.add_argument("--whiten", action="store_true", default=None, help=HELP["whiten"])
    parser.add_argument("--chunk-size", dest="chunk_size", type=int, help=HELP["chunk_size"])
    parser.add_argument("--sketch", choices=SKETCHES, help=_help("sketch"))
    parser.add_argument("--dtype", choices=DTYPES, help=HELP["dtype"])
    parser.add_argument("--device", help="device (default: cuda:LOCAL_RANK when CUDA is present, else cpu)")
    parser.add_argument("--out", default="nfk_fit", help="output folder (default: ./nfk_fit)")
    parser.add_argument("--workers", type=int, default=None,
                        help="start this many local processes instead of running under torchrun")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds any collective may wait for a peer before the job fails")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _likelihood(ns: dict[str, Any], script: str) -> Any:
    if "likelihood" in ns:
        return ns["likelihood"]
    if "model" in ns:
        try:
            return make_likelihood(ns["model"], ns.get("kind", "classifier"), score=ns.get("score"),
                                   sampler=ns.get("sampler"), sigma=ns.get("sigma", 1.0),
                                   n_samples=ns.get("n_samples", 1024))
        except NFKError as exc:
            raise NFKError(f"{script}: {exc} Define `likelihood` for other families.") from None
    raise NFKError(f"{script} defines neither `likelihood` nor `model`.")


def _build(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from .lowrank import LowRankNFK

    script = str(args.script)
    if not os.path.isfile(script):
        raise NFKError(f"No script at {script!r}.")
    ns = runpy.run_path(script, run_name="__nfk_fit__")
    est = ns.get("estimator")
    if est is None:
        est = LowRankNFK(_likelihood(ns, script))
    given = {k: getattr(args, k) for k in ESTIMATOR_ARGS if getattr(args, k, None) is not None}
    if args.dtype is not None:
        given["dtype"] = getattr(torch, args.dtype)
    if args.device is not None:
        given["device"] = args.device
    est.set_params(progress=args.progress, **given)
    if "data" not in ns and "shard" not in ns:
        raise NFKError(f"{script} defines neither `data` nor `shard(rank, world_size)`.")
    return est, ns


def _check_same_model(est: Any, reducer: Any) -> None:
    """Every rank must hold the same θ (same seed or checkpoint); compare sums of values."""
    named = dict(est.lik.model.named_parameters())
    stats = torch.tensor([[float(named[n].detach().double().sum()), float(named[n].detach().double().norm())]
                          for n in est.lik.param_names], dtype=torch.float64).reshape(1, -1)
    every = reducer.gather_rows(stats)
    differ = [r for r in range(len(every)) if not torch.equal(every[r], every[0])]
    if differ:
        raise NFKError(f"The model's parameters on rank {differ[0]} differ from rank 0's; build the model "
                       f"deterministically in the script (seed it, or load a checkpoint).")


def _write_outputs(out: Path, est: Any, embedding: Tensor, world: int) -> None:
    from safetensors.torch import save

    from .serialization import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    meta = {"n": str(len(embedding)), "k": str(embedding.shape[1]), "world_size": str(world)}
    atomic_write_bytes(out / "embedding.safetensors",
                       save({"embedding": embedding.contiguous()}, metadata=meta))
    est.embedding_ = embedding  # the saved estimator holds every row, like a single-process fit
    est.save(out / "estimator.safetensors")


def _fit_distributed(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    init_from_env(args.device, args.timeout)
    reducer = get_reducer()
    rank, world = reducer.rank, reducer.world_size
    est, ns = _build(args)
    if rank != 0:
        est.set_params(progress=False)
    if "shard" in ns:
        part = ns["shard"](rank, world)
    else:
        part = _split(ns["data"], None, world)[0][rank]
    sizes = reducer.gather_rows(torch.tensor([[len(part)]], dtype=torch.float64)).flatten()
    if bool((sizes == 0).any()):
        raise NFKError(f"Shard sizes {sizes.long().tolist()}: every rank needs at least one example.")
    if world > 1:
        _check_same_model(est, reducer)
    with shard_offset(int(sizes[:rank].sum())):  # errors name the example's row in the whole data set
        E_local = est.fit_transform(part)
    embedding = reducer.gather_rows(E_local)
    if rank == 0:
        _write_outputs(Path(args.out), est, embedding, world)
        print(f"nfk-nb fit: {len(embedding)} examples x {embedding.shape[1]} dims on {world} process(es) "
              f"in {format_seconds(est.fit_time_)} -> {args.out}/ "
              "(embedding.safetensors, estimator.safetensors)")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _fit_local_workers(args: argparse.Namespace) -> int:
    est, ns = _build(args)
    if "data" not in ns:
        raise NFKError("--workers shards `data` itself; the script must define `data`.")
    embedding = fit_workers(est, ns["data"], workers=args.workers, timeout=None)
    _write_outputs(Path(args.out), est, embedding, args.workers)
    print(f"nfk-nb fit: {len(embedding)} examples x {embedding.shape[1]} dims on {args.workers} "
          f"worker(s) in {format_seconds(est.fit_time_)} -> {args.out}/")
    return 0


def fit_command(args: argparse.Namespace) -> int:
    """Run ``nfk-nb fit``; an ``NFKError`` prints one line (with the rank) and exits with status 1."""
    from torch.distributed.elastic.multiprocessing.errors import record

    run = _fit_local_workers if args.workers else record(_fit_distributed)
    try:
        return run(args)
    except NFKError as exc:
        rank = os.environ.get("RANK", "0")
        print(f"nfk-nb fit (rank {rank}): {exc}", file=sys.stderr, flush=True)
        return 1
