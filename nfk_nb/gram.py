"""The exact NFK layer by layer, without a P-sized row per example where the metric allows.

``K(x, z) = ⟨w(g(x) - m), w(g(z) - m)⟩`` is a sum over θ's blocks. For a ``nn.Linear`` / ``nn.Conv``
layer with ``g = Σ_t δ_t a_tᵀ`` and a metric that is the identity or a Kronecker product
``w = A^{-1/2} ⊗ G^{-1/2}`` (``fisher="kfac"``), with ``ã = A^{-1/2} a``, ``δ̃ = G^{-1/2} δ`` and
``M̃ = G^{-1/2} M A^{-1/2}`` (``M`` the layer's block of the partition term):

    K_l(x, z) = Σ_{t,t'} (δ̃_t(x)·δ̃_t'(z)) (ã_t(x)·ã_t'(z)) - c(x) - c(z) + ‖M̃‖²,
    c(x) = Σ_t δ̃_t(x)ᵀ M̃ ã_t(x)

(for ``T = 1``: ``(Δ G⁻¹ Δᵀ) ∘ (X A⁻¹ Xᵀ)``, nngeometry's layer-wise Gram), in float64 (see
``HADAMARD_DTYPE``). It costs
``N·M·T²·(in + out)`` FLOPs against ``N·M·in·out`` for the Gram of per-example gradients, so each
layer takes the cheaper of the two ("hadamard" when ``T²·(in + out) ≤ in·out``). The diagonal metric,
the other layers and the parameters outside layers use per-example gradients (whitened, centred),
one block of columns at a time, so memory is ``(N + M)·(Σ_hadamard T·(in + out) + P_rest) + N·M``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .datasource import DataSource
from .fisher import FisherEstimate
from .layers import Layer
from .layerwise import LayerwiseOperator
from .likelihoods import Batch

# Elements of the largest temporary of a Hadamard block (rows × columns × T²).
BLOCK_ELEMENTS = 2**24
# The Hadamard blocks and their centring terms are computed in float64: the expanded centring
# ⟨g, g'⟩ - c - c' + ‖M̃‖² cancels when the scores barely vary (‖g - m‖ ≪ ‖m‖). In float64 it is exact
# for the float32-rounded g, whose own error (eps32·‖g‖) is what the formed route has too.
HADAMARD_DTYPE = torch.float64


def hadamard_layers(op: LayerwiseOperator, kind: str) -> list[Layer]:
    """Layers whose kernel block is cheaper as a Hadamard product (identity and KFAC metrics)."""
    if kind not in ("identity", "kfac"):
        return []
    return [layer for layer in op.layers
            if layer.positions**2 * (layer.n_in + layer.n_out) <= layer.n_in * layer.n_out]


def feature_size(op: LayerwiseOperator, kind: str) -> int:
    """Numbers stored per example: ``T·(in + out)`` per Hadamard layer, the other coordinates."""
    had = hadamard_layers(op, kind)
    covered = sum(layer.numel for layer in had)
    return sum(layer.positions * (layer.n_in + layer.n_out) for layer in had) + op.P - covered


@dataclass
class _Features:
    a: list[Tensor]  # per Hadamard layer (n, T, in), whitened
    d: list[Tensor]  # per Hadamard layer (n, T, out), whitened
    c: list[Tensor]  # per Hadamard layer (n,), ⟨w g, w m⟩
    rows: Tensor  # (n, P_other): the other coordinates of w(g - m)


def _blocks(est: FisherEstimate, op: LayerwiseOperator, flat: Tensor, layer: Layer) -> Tensor:
    parts = op.space.unflatten(flat)
    return layer.join({n: parts[n].reshape(1, -1) for n in layer.names})[0]


def _roots(est: FisherEstimate, layer: Layer) -> tuple[Tensor, Tensor] | None:
    if est.kron is None:
        return None
    return est.kron.roots()[est.kron.layers.index(layer)]


def _features(op: LayerwiseOperator, source: DataSource, est: FisherEstimate,
              had: list[Layer]) -> _Features:
    acc = op.acc_dtype
    mean, scale = est.mean.to(op.device, acc), est.scale.to(op.device, acc)
    index = {id(layer): i for i, layer in enumerate(op.layers)}
    others = [layer for layer in op.layers if layer not in had]
    rest = list(op.rest)
    mean_parts = op.space.unflatten(mean)
    scale_parts = op.space.unflatten(scale)
    Mt, roots = [], []
    for layer in had:
        r = _roots(est, layer)
        M = _blocks(est, op, mean.to(HADAMARD_DTYPE), layer)
        if r is not None:
            Ai, Gi = (x.to(op.device, HADAMARD_DTYPE) for x in r)
            M = Gi @ M @ Ai
            r = (Ai, Gi)
        Mt.append(M)
        roots.append(r)
    a_all: list[list[Tensor]] = [[] for _ in had]
    d_all: list[list[Tensor]] = [[] for _ in had]
    c_all: list[list[Tensor]] = [[] for _ in had]
    rows = []
    for batch in source:
        prepared = op.to_batch(batch)
        for _, sub in op._sub_batches(prepared):
            cap = op.capture(sub)
            for j, layer in enumerate(had):
                i = index[id(layer)]
                a = layer.patches(cap.inputs[i]).to(HADAMARD_DTYPE)
                d = layer.out_grads(cap.grads[i]).to(HADAMARD_DTYPE)
                if roots[j] is not None:
                    a, d = a @ roots[j][0], d @ roots[j][1]
                a_all[j].append(a)
                d_all[j].append(d)
                c_all[j].append(((d @ Mt[j]) * a).sum((1, 2)))
            parts = []
            for layer in others:
                i = index[id(layer)]
                a = layer.patches(cap.inputs[i]).to(acc)
                d = layer.out_grads(cap.grads[i]).to(acc)
                g = d.transpose(1, 2) @ a - _blocks(est, op, mean, layer)
                r = _roots(est, layer)
                if r is not None:
                    g = r[1].to(g) @ g @ r[0].to(g)
                elif est.kind != "identity":
                    g = g * _blocks(est, op, scale, layer)
                parts.append(g.reshape(len(g), -1))
            grads = op._other_grads(cap, sub)
            for n in [*(n for norm in op.norms for n in norm.names), *rest]:
                g = grads[n].reshape(len(grads[n]), -1).to(acc) - mean_parts[n].reshape(-1)
                parts.append(g * scale_parts[n].reshape(-1))
            width = sum(p.shape[1] for p in parts)
            rows.append(torch.cat(parts, 1) if parts else torch.zeros(len(sub[0]), width, dtype=acc,
                                                                        device=op.device))
    return _Features([torch.cat(x) for x in a_all], [torch.cat(x) for x in d_all],
                     [torch.cat(x) for x in c_all], torch.cat(rows))


def layerwise_kernel(op: LayerwiseOperator, source: DataSource, other: DataSource | None,
                     est: FisherEstimate) -> Tensor:
    """Exact ``K = V_X V_Zᵀ`` (N×M, in the accumulation dtype) from layer-wise features."""
    had = hadamard_layers(op, est.kind)
    fx = _features(op, source, est, had)
    fz = fx if other is None else _features(op, other, est, had)
    K = _gram(fx.rows) if other is None else fx.rows @ fz.rows.T
    for j, layer in enumerate(had):
        ax, dx, az, dz = fx.a[j], fx.d[j], fz.a[j], fz.d[j]
        n_pos = ax.shape[1]
        step = max(1, BLOCK_ELEMENTS // max(1, len(az) * n_pos * n_pos))
        az2, dz2 = az.reshape(-1, az.shape[2]), dz.reshape(-1, dz.shape[2])
        mean_norm = _mean_norm(op, est, layer)
        for s in range(0, len(ax), step):
            blk = ax[s : s + step].reshape(-1, ax.shape[2]) @ az2.T
            blk *= dx[s : s + step].reshape(-1, dx.shape[2]) @ dz2.T
            if n_pos > 1:
                blk = blk.view(-1, n_pos, len(az), n_pos).sum((1, 3))
            # centring: ⟨g̃(x) - M̃, g̃(z) - M̃⟩ = ⟨g̃(x), g̃(z)⟩ - c(x) - c(z) + ‖M̃‖², exact in
            # float64 for the rounded g̃ (so no worse than centring formed gradients; see below)
            blk -= fx.c[j][s : s + step, None]
            blk -= fz.c[j][None, :]
            blk += mean_norm
            K[s : s + step] += blk.to(K.dtype)
    return K


def _gram(R: Tensor, step: int = 512) -> Tensor:
    """``R Rᵀ`` computing only the blocks on and above the diagonal (about half the FLOPs)."""
    n = len(R)
    K = R.new_empty(n, n)
    for s in range(0, n, step):
        K[s : s + step, s:] = R[s : s + step] @ R[s:].T
        K[s + step :, s : s + step] = K[s : s + step, s + step :].T
    return K


def _mean_norm(op: LayerwiseOperator, est: FisherEstimate, layer: Layer) -> Tensor:
    M = _blocks(est, op, est.mean.to(op.device, HADAMARD_DTYPE), layer)
    r = _roots(est, layer)
    if r is not None:
        M = r[1].to(M) @ M @ r[0].to(M)
    return (M * M).sum()


# Largest N×N kernel the low-rank fit may form instead of sketching (bytes).
GRAM_BYTES = 512 * 2**20


def _pass_flops(op: LayerwiseOperator, k: int, reuse: float) -> float:
    """FLOPs per example of one product pass with ``k`` columns (the FLOP model of layerwise.py)."""
    forward = 2 * op.P * reuse
    cost = 2 * forward
    for layer in op.layers:
        flops = 2 * layer.positions * layer.numel
        cost += k * flops if op._is_direct(layer, k) else flops + 4 * k * layer.numel
    if op.rest:
        cost += 3 * forward + 4 * k * (op.P - sum(layer.numel for layer in op.layers))
    return cost


def gram_is_cheaper(op: LayerwiseOperator, kind: str, n: int, l: int, k: int, passes: int,
                    batch: Batch) -> bool:
    """Whether forming K layer-wise beats ``passes`` sketch passes plus the embedding pass.

    Deterministic (shapes only). The Gram route costs ``2·N²·(Σ_hadamard T²(in + out) + P_other)``
    plus one product pass with ``k`` columns (for the components); it needs the identity or KFAC
    metric (else no layer is a Hadamard block) and an N×N kernel within ``GRAM_BYTES``.
    """
    if not isinstance(op, LayerwiseOperator) or not op.layers or kind not in ("identity", "kfac"):
        return False
    item = torch.empty((), dtype=op.acc_dtype).element_size()
    if n * n * item > GRAM_BYTES:
        return False
    op.probe(batch)
    if not op.layers:
        return False
    reuse = op.weight_reuse(batch)
    had = hadamard_layers(op, kind)
    width = sum(layer.positions**2 * (layer.n_in + layer.n_out) for layer in had)
    width += op.P - sum(layer.numel for layer in had)
    gram = 2.0 * n * n * width + n * _pass_flops(op, k, reuse)
    sketch = n * (passes * _pass_flops(op, l, reuse) + _pass_flops(op, k, reuse))
    return gram < sketch


def gram_fit(op: LayerwiseOperator, source: DataSource, fisher: FisherEstimate, products,
             rank: int, l: int, power_iters: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Low-rank NFK from the exact kernel: top-``rank`` eigenpairs of K, then ``W_kᵀ = S⁻¹ U_kᵀ V``.

    The eigenpairs come from subspace iteration on the explicit K (``power_iters + 3`` products
    with K, each worth two passes over the data of the matrix-free sketch, then Rayleigh–Ritz), so
    the result is at least as accurate as the sketch with the same ``power_iters``. The embedding
    of the fit data is ``K U_k S_k⁻¹ = V W_k``, the same map as :meth:`LowRankNFK.transform`.

    Returns
    -------
    Wt (k, P), S (k,), embedding (N, k)
    """
    K = layerwise_kernel(op, source, None, fisher)
    gen = torch.Generator().manual_seed(int(seed))
    Q = torch.randn(len(K), l, generator=gen, dtype=torch.float64).to(K)
    for _ in range(power_iters + 3):
        Q = torch.linalg.qr(K @ Q, mode="reduced")[0]
    evals, U = torch.linalg.eigh(Q.T @ K @ Q)
    evals, U = evals.flip(0)[:rank], (Q @ U.flip(1))[:, :rank]
    S = evals.clamp_min(0).sqrt()
    inv = torch.where(S > 0, 1 / S.clamp_min(1e-300), torch.zeros_like(S))
    A = U * inv
    Wt = products.rmatvec(A)  # (k, P) = S⁻¹ U_kᵀ V
    idx = Wt.abs().argmax(dim=1)
    signs = torch.sign(Wt[torch.arange(len(Wt)), idx])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    Wt = (Wt * signs[:, None]).contiguous()
    embedding = (K @ A) * signs
    return Wt, S, embedding
