"""nfk_nb next to the other tools that compute per-example gradients or Gram matrices, in one run.

Same trained model, same data, same rank, joint score ``log p̃(x) = logsumexp f(x)`` centred by its
mean over the data (the partition term), one process. Peers (each only if it imports; the table says
why not otherwise; install them with ``pip install -e .[bench]``):

* plain ``torch.func``: ``vmap(grad)`` per-example gradients, ``G Gᵀ``, ``eigh``;
* BackPACK ``BatchGrad`` and Opacus ``GradSampleModule``: their per-example gradients, then the same;
* nngeometry: its layer-wise Gram matrix (``FMatDense`` on the hooks backend), then ``eigh``;
* TRAK (``traker``): per-example gradients through its CPU ``BasicProjector`` (Gaussian, d columns),
  then an SVD of the N×d sketch (its CUDA projector needs a GPU).

Each peer gets its own deep copy of the model (BackPACK and Opacus leave hooks on the modules they
touch). Centring is applied the same way to every peer: ``K_c = H K H`` with ``H = I - 11ᵀ/N`` for Gram
matrices, column centring for TRAK's sketch (``(G - 1mᵀ) R = G R - 1 (mᵀR)``). Columns: CPU and wall
seconds (for exact kernels: kernel, then ``eigh``, with the kernel's share in ``kernel cpu s``), peak
resident-set growth, ``err/opt`` = ‖K − E Eᵀ‖_F / ‖K − K_k‖_F against the exact kernel
of the row's own metric, and ``vs nfk K`` = ‖K_peer − K‖_F / ‖K‖_F against
``nfk.fisher_kernel(..., fisher="identity")`` for the exact peers (an independent check of nfk_nb's
Fisher vectors; agreement to 1e-4 is asserted).

Run: ``python -m benchmarks.peers [--n 1797] [--rank 32] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

import nfk_nb as nfk

from ._common import (
    _user_grads,
    add_common_arguments,
    apply_common_arguments,
    digits_inputs,
    kernel_error,
    machine,
    measure,
    optimal_error,
    print_table,
    trained_mlp,
)

COLUMNS = ("method", "metric", "cpu s", "wall s", "cpu/torch.func", "kernel cpu s", "peak MB", "err/opt",
           "vs nfk K")


def _centre(K: Tensor) -> Tensor:
    """``H K H``: the Gram of centred vectors from the Gram of raw ones."""
    K = K - K.mean(0, keepdim=True)
    return K - K.mean(1, keepdim=True)


def _top(K: Tensor, rank: int) -> Tensor:
    """Rank-k embedding ``U_k √λ_k`` of a PSD kernel by ``eigh``."""
    evals, evecs = torch.linalg.eigh(K)
    return evecs[:, -rank:].flip(1) * evals[-rank:].flip(0).clamp_min(0).sqrt()


def _joint(net: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: torch.logsumexp(net(x), dim=-1)


def _centred_gram(rows: list[Tensor]) -> dict[str, Tensor]:
    """``G Gᵀ`` of the per-example gradient blocks ``rows`` after centring ``G``'s columns."""
    G = torch.cat(rows)
    G -= G.mean(0)
    return {"K": G @ G.T}


def _hooked_gram(model: nn.Module, X: Tensor, batch: int, field: str,
                 context: Callable[[], AbstractContextManager[Any]] = nullcontext) -> dict[str, Tensor]:
    """Centred Gram from the per-example gradients a hook library stores in ``p.<field>``."""
    rows = []
    for s in range(0, len(X), batch):
        model.zero_grad()
        for p in model.parameters():
            setattr(p, field, None)  # Opacus accumulates grad_sample over backward passes otherwise
        with context():
            _joint(model)(X[s : s + batch]).sum().backward()
        grads = [getattr(p, field) for p in model.parameters()]
        rows.append(torch.cat([g.reshape(len(g), -1) for g in grads], 1))
    return _centred_gram(rows)


def torch_func_way(net: nn.Module, X: Tensor, rank: int, batch: int) -> dict[str, Tensor]:
    return _centred_gram(list(_user_grads(net, X, batch)()))


def backpack_way(net: nn.Module, X: Tensor, rank: int, batch: int) -> dict[str, Tensor]:
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    return _hooked_gram(extend(net), X, batch, "grad_batch", lambda: backpack(BatchGrad()))


def opacus_way(net: nn.Module, X: Tensor, rank: int, batch: int) -> dict[str, Tensor]:
    from opacus import GradSampleModule

    net.train()  # Opacus records activations only in training mode (the MLP has no dropout/BN)
    model = GradSampleModule(net, loss_reduction="sum")
    K = _hooked_gram(model, X, batch, "grad_sample")
    model._close()
    return K


def nngeometry_way(net: nn.Module, X: Tensor, rank: int, batch: int) -> dict[str, Tensor]:
    from nngeometry.backend import TorchHooksJacobianBackend
    from nngeometry.object import FMatDense
    from torch.utils.data import DataLoader, TensorDataset

    gen = TorchHooksJacobianBackend(model=net, function=lambda x: _joint(net)(x)[:, None])
    loader = DataLoader(TensorDataset(X), batch_size=batch, shuffle=False)
    K = FMatDense(gen, examples=loader).data.reshape(len(X), len(X))
    K = _centre(K)
    return {"K": K}


def trak_way(net: nn.Module, X: Tensor, rank: int, batch: int, dim: int) -> Tensor:
    from trak.projectors import BasicProjector, ProjectionType

    P = sum(p.numel() for p in net.parameters())
    proj = BasicProjector(grad_dim=P, proj_dim=dim, seed=0, proj_type=ProjectionType.normal,
                          device=torch.device("cpu"), block_size=min(dim, 128))
    S = torch.cat([proj.project(g, model_id=0) / math.sqrt(dim) for g in _user_grads(net, X, batch)()])
    S -= S.mean(0)
    U, sv, _ = torch.linalg.svd(S, full_matrices=False)
    return U[:, :rank] * sv[:rank]


def nfk_exact(lik: nfk.Likelihood, X: Tensor, rank: int, kind: str, batch: int) -> dict[str, Tensor]:
    K = nfk.fisher_kernel(lik, X, fisher=kind, batch_size=batch)
    return {"K": K}


def nfk_lowrank(lik: nfk.Likelihood, X: Tensor, rank: int, batch: int, **kw: Any) -> Tensor:
    return nfk.LowRankNFK(lik, rank=rank, batch_size=batch, progress=False, **kw).fit_transform(X)


# Exact reference kernels that need per-example gradients (the diagonal metric) are skipped above this
# many bytes of N×P (their err/opt reads "-").
REF_BYTES = 2 * 2**30


def compare_peers(net: nn.Module, X: Tensor, rank: int, batch: int = 256,
                  trak_dims: tuple[int, ...] = (32, 512), title: str = "",
                  skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every available peer and nfk_nb's rows on one model and data; prints and returns the table.

    ``skip``: rows whose name starts with one of these prefixes are not run (e.g. the per-example
    gradient peers at N=8,000, which need N×P floats).
    """
    N, P = len(X), sum(p.numel() for p in net.parameters())
    print(f"\n## peers side by side{title}: N={N}, P={P}, rank={rank}, joint score")
    print(f"machine: {machine()}")
    lik = nfk.Classifier(net)
    # oracles (outside the timings): exact kernels of each metric and their optimal rank-k errors
    kinds = ["identity", "kfac"] + (["diagonal"] if N * P * 4 <= REF_BYTES else [])
    refs = {kind: nfk.fisher_kernel(lik, X, fisher=kind, batch_size=batch).double() for kind in kinds}
    opts = {kind: optimal_error(torch.linalg.eigvalsh(K).flip(0), rank) for kind, K in refs.items()}
    K_id = refs["identity"]
    # warm-up of the torch.func transforms
    nfk_lowrank(lik, X[:64], 8, batch, power_iters=0, oversample=0)
    torch_func_way(net, X[:64], 8, batch)
    notes = []

    def peer(name: str, module: str | None, fn: Callable[[], Any], kind: str) -> dict[str, Any] | None:
        if any(name.startswith(prefix) for prefix in skip):
            notes.append(f"{name}: skipped (--skip)")
            return None
        if module is not None:
            try:
                __import__(module)
            except Exception as exc:  # a missing or broken peer is reported, not fatal
                notes.append(f"{name}: not run ({module} does not import: {exc!r})")
                return None
        gc.collect()
        try:
            m = measure(name, fn)
        except Exception as exc:
            notes.append(f"{name}: failed on this model ({type(exc).__name__}: {exc})")
            return None
        out = m.out
        row = {"method": name, "metric": kind, "cpu s": m.cpu, "wall s": m.wall, "peak MB": m.peak_mb}
        if isinstance(out, dict):  # an exact kernel: then its top-k eigenpairs, timed apart
            K = out["K"]
            eig = measure(name, lambda: _top(K, rank))
            E = eig.out
            row.update({"kernel cpu s": m.cpu, "cpu s": m.cpu + eig.cpu, "wall s": m.wall + eig.wall,
                        "peak MB": max(m.peak_mb, eig.peak_mb)})
        else:
            E, K = out, None
        row["err/opt"] = kernel_error(E, refs[kind], opts[kind]) if kind in refs else None
        if K is not None and kind == "identity":
            rel = float(torch.linalg.matrix_norm(K.double() - K_id) / torch.linalg.matrix_norm(K_id))
            row["vs nfk K"] = rel
            if rel > 1e-4:
                notes.append(f"{name}: kernel differs from nfk's identity kernel by {rel:.2e} (> 1e-4)")
        return row

    rows = [
        peer("torch.func vmap(grad) + Gram + eigh", None,
             lambda: torch_func_way(net, X, rank, batch), "identity"),
        peer("BackPACK BatchGrad + Gram + eigh", "backpack",
             lambda: backpack_way(copy.deepcopy(net), X, rank, batch), "identity"),
        peer("Opacus GradSampleModule + Gram + eigh", "opacus",
             lambda: opacus_way(copy.deepcopy(net), X, rank, batch), "identity"),
        peer("nngeometry FMatDense (layer-wise Gram) + eigh", "nngeometry",
             lambda: nngeometry_way(copy.deepcopy(net), X, rank, batch), "identity"),
    ]
    rows += [peer(f"TRAK BasicProjector d={d} + SVD", "trak",
                  lambda d=d: trak_way(net, X, rank, batch, d), "identity") for d in trak_dims]
    rows += [
        peer("nfk fisher_kernel identity + eigh", None,
             lambda: nfk_exact(lik, X, rank, "identity", batch), "identity"),
        peer("nfk fisher_kernel kfac + eigh", None, lambda: nfk_exact(lik, X, rank, "kfac", batch), "kfac"),
        peer("nfk fisher_kernel diagonal + eigh", None,
             lambda: nfk_exact(lik, X, rank, "diagonal", batch), "diagonal"),
        peer("nfk LowRankNFK identity", None,
             lambda: nfk_lowrank(lik, X, rank, batch, fisher="identity"), "identity"),
        peer("nfk LowRankNFK kfac", None, lambda: nfk_lowrank(lik, X, rank, batch, fisher="kfac"), "kfac"),
        peer("nfk LowRankNFK default (diagonal)", None,
             lambda: nfk_lowrank(lik, X, rank, batch), "diagonal"),
        peer("nfk LowRankNFK diagonal q=1", None,
             lambda: nfk_lowrank(lik, X, rank, batch, power_iters=1), "diagonal"),
    ]
    rows = [r for r in rows if r is not None]
    base = next((r["cpu s"] for r in rows if r["method"].startswith("torch.func")), float("nan"))
    for r in rows:
        r["cpu/torch.func"] = r["cpu s"] / base
    print_table(f"peers{title}, N={N}, P={P}, rank {rank}", rows, COLUMNS)
    for note in notes:
        print(f"- {note}")
    return rows


def resampled_digits(n: int, seed: int = 0) -> Tensor:
    """``n`` digits drawn with replacement plus Gaussian noise (sd 0.05), for N beyond 1,797."""
    X, _ = digits_inputs()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(X), (n,), generator=g)
    return X[idx] + 0.05 * torch.randn(n, X.shape[1], generator=g)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1797, help="examples (> 1797: resampled + noise)")
    parser.add_argument("--hidden", type=int, default=256, help="width of the two hidden layers")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--trak", type=int, nargs="*", default=[32, 512])
    parser.add_argument("--skip", nargs="*", default=[], help="prefixes of rows not to run")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    X, y = digits_inputs()
    net = trained_mlp([64, args.hidden, args.hidden, 10], X[:1200], y[:1200])
    data = X if args.n == len(X) else resampled_digits(args.n)
    title = f" (MLP 64-{args.hidden}-{args.hidden}-10)"
    return compare_peers(net, data, args.rank, trak_dims=tuple(args.trak), title=title,
                         skip=tuple(args.skip))


if __name__ == "__main__":
    main()
