"""``fisher="kfac"``: a Kronecker-factored Fisher metric for ``nn.Linear`` / ``nn.Conv`` layers.

For a layer with inputs ``a_t`` (bias as a constant 1 appended) and output gradients ``δ_t`` at ``T``
positions (``layers.py``), on the reference set R of the Fisher information (Martens & Grosse 2015;
Grosse & Martens 2016 for the position sums of convolutions):

    A = mean_{x∈R} Σ_t a_t a_tᵀ           (n_in × n_in)
    G = mean_{x∈R} (1/T) Σ_t δ_t δ_tᵀ      (n_out × n_out)
    I_layer ≈ A ⊗ G                        (exact for T = 1 if a and δ were independent)

**Partition term.** The factors are those of the *uncentred* second moment ``E[g gᵀ]`` of the
gradients ``g = ∇ log p̃``: centring does not factorise, so for families with a partition term the
metric is KFAC of ``I + m mᵀ`` (``m`` the partition term). The Fisher vectors themselves are centred
exactly, ``v = (A^{-1/2} ⊗ G^{-1/2})(g - m)``, as for the other metrics; for normalised families
(``m = 0``) this is plain KFAC.

**Damping** is relative, with the π-correction of Martens & Grosse (2015, §6.3): with
``λ_abs = damping · mean diag(A ⊗ G) = damping · ā ḡ`` (``ā = tr A / n_in``, ``ḡ = tr G / n_out``)
and ``π = sqrt(ā / ḡ)``, ``(A ⊗ G + λ_abs I) ≈ (A + π√λ_abs I) ⊗ (G + √λ_abs/π I)``
``= (A + √damping·ā I) ⊗ (G + √damping·ḡ I)``. Eigenvalues that are still not positive (damping 0
and a rank-deficient factor) get inverse root 0, like zero-information coordinates of the diagonal.

Every parameter outside such layers keeps the damped diagonal of ``fisher.py``. Applying
``A^{-1/2} ⊗ G^{-1/2}`` to a matrix of directions is ``G^{-1/2} M_l A^{-1/2}`` per layer block, once
per sketch pass, so a KFAC fit costs what a diagonal one does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .layers import Layer
from .likelihoods import Batch


@dataclass
class KroneckerFactors:
    """Per-layer factors ``A`` (n_in²) and ``G`` (n_out²), means over the reference set."""

    layers: list[Layer]
    A: list[Tensor]
    G: list[Tensor]
    damping: float
    _roots: list[tuple[Tensor, Tensor]] | None = field(default=None, repr=False)

    def roots(self) -> list[tuple[Tensor, Tensor]]:
        """``(A_d^{-1/2}, G_d^{-1/2})`` per layer, damped as in the module docstring (float64)."""
        if self._roots is None:
            self._roots = [(_inv_root(A, self.damping), _inv_root(G, self.damping))
                           for A, G in zip(self.A, self.G)]
        return self._roots

    def whiten_(self, M: Tensor, names: tuple[str, ...], numels: tuple[int, ...],
                blocks: list[Tensor]) -> None:
        """Write ``G^{-1/2} B_l A^{-1/2}`` of the saved blocks ``B_l`` of ``M`` (n, P) into ``M``."""
        offsets = dict(zip(names, _starts(numels)))
        sizes = dict(zip(names, numels))
        for layer, block, (Ai, Gi) in zip(self.layers, blocks, self.roots()):
            w = Gi.to(M) @ block @ Ai.to(M)
            for name, t in layer.split(w).items():
                M[:, offsets[name] : offsets[name] + sizes[name]] = t

    def blocks(self, M: Tensor, names: tuple[str, ...], numels: tuple[int, ...]) -> list[Tensor]:
        """Each layer's ``(n, n_out, n_in)`` block of ``M`` (n, P), copied."""
        offsets = dict(zip(names, _starts(numels)))
        sizes = dict(zip(names, numels))
        out = []
        for layer in self.layers:
            parts = {n: M[:, offsets[n] : offsets[n] + sizes[n]] for n in layer.names}
            out.append(layer.join(parts).clone())
        return out


def _starts(numels: tuple[int, ...]) -> list[int]:
    starts, s = [], 0
    for n in numels:
        starts.append(s)
        s += n
    return starts


def _inv_root(F: Tensor, damping: float) -> Tensor:
    """``(F + √damping · mean diag(F) · I)^{-1/2}`` through an eigendecomposition in float64."""
    F = F.double()
    d = len(F)
    damped = F + (damping**0.5) * (torch.trace(F) / d) * torch.eye(d, dtype=F.dtype, device=F.device)
    evals, evecs = torch.linalg.eigh(damped)
    tiny = evals.abs().max().clamp_min(1e-300) * d * torch.finfo(torch.float64).eps
    inv = torch.where(evals > tiny, evals.clamp_min(1e-300).rsqrt(), torch.zeros_like(evals))
    return (evecs * inv) @ evecs.T


def _zeros(d: int, device: torch.device) -> Tensor:
    return torch.zeros(d, d, dtype=torch.float64, device=device)


def estimate_factors(op, reference: Callable[[], Iterable[Batch]], damping: float,
                     reducer) -> KroneckerFactors:
    """``A`` and ``G`` of every layer of a :class:`~nfk_nb.layerwise.LayerwiseOperator` on R.

    One pass of captures (cached, so the sketch passes over the same data reuse them); sums in
    float64, then summed over processes.
    """
    layers: list[Layer] = []
    A: list[Tensor] = []
    G: list[Tensor] = []
    n = 0
    for batch in reference():
        prepared = op.to_batch(batch)
        if n == 0:
            op.probe(prepared)  # may leave layers out; the factors are made for those that stay
            layers = list(op.layers)
            A = [_zeros(layer.n_in, op.device) for layer in layers]
            G = [_zeros(layer.n_out, op.device) for layer in layers]
        for _, sub in op._sub_batches(prepared):
            cap = op.capture(sub)
            for i, layer in enumerate(layers):
                a = layer.patches(cap.inputs[i]).reshape(-1, layer.n_in).double()
                d = layer.out_grads(cap.grads[i]).double()
                A[i] += a.T @ a
                G[i] += (d.reshape(-1, layer.n_out).T @ d.reshape(-1, layer.n_out)) / d.shape[1]
        n += len(prepared[0])
    if n == 0:  # a process without reference examples still joins the sums
        layers = list(op.layers)
        A = [_zeros(layer.n_in, op.device) for layer in layers]
        G = [_zeros(layer.n_out, op.device) for layer in layers]
    n = reducer.count(n)
    A = [reducer.sum(t) / max(n, 1) for t in A]
    G = [reducer.sum(t) / max(n, 1) for t in G]
    return KroneckerFactors(layers, A, G, float(damping))


def whitened_trace(op, batches: Iterable[Batch], fisher, sq: Tensor, reducer) -> float:
    """``Σ_x ‖v(x)‖²`` under a KFAC metric: layers from ``a`` and ``δ``, the rest from ``sq``.

    ``sq`` is ``Σ_x (g(x) - m)²`` per coordinate (the diagonal pass), used for the parameters
    outside the layers; for each layer ``‖G^{-1/2}(g - m)A^{-1/2}‖²`` is summed per example.
    """
    kron = fisher.kron
    covered = {n for layer in kron.layers for n in layer.names}
    scale = fisher.scale.to(sq.dtype)
    views = dict(zip(op.space.names, torch.split(sq * scale**2, list(op.space.numels))))
    total = sum(float(v.sum()) for name, v in views.items() if name not in covered)
    means = op.space.unflatten(fisher.mean.double())
    roots = kron.roots()
    # whitened mean blocks G^{-1/2} M A^{-1/2}, once per layer rather than once per sub-batch
    mean_blocks = [Gi @ layer.join({n: means[n].reshape(1, -1) for n in layer.names})[0] @ Ai
                   for layer, (Ai, Gi) in zip(kron.layers, roots)]
    layer_sum = torch.zeros((), dtype=torch.float64, device=op.device)
    for batch in batches:
        prepared = op.to_batch(batch)
        for _, sub in op._sub_batches(prepared):
            cap = op.capture(sub)
            for i, layer in enumerate(kron.layers):
                Ai, Gi = roots[i]
                Mt = mean_blocks[i]
                a = layer.patches(cap.inputs[i]).double() @ Ai
                d = layer.out_grads(cap.grads[i]).double() @ Gi
                if a.shape[1] == 1:  # ‖δ̃ ãᵀ - M̃‖² without forming δ̃ ãᵀ
                    a, d = a[:, 0], d[:, 0]
                    cross = ((d @ Mt) * a).sum(1)
                    layer_sum += ((d * d).sum(1) * (a * a).sum(1) - 2 * cross).sum()
                    layer_sum += len(a) * (Mt * Mt).sum()
                else:
                    g = d.transpose(1, 2) @ a - Mt
                    layer_sum += (g * g).sum()
    return total + float(reducer.sum(layer_sum))


def fisher_trace(op, fisher, sq: Tensor, batches: Iterable[Batch], reducer) -> float:
    """``trace K = Σ_x ‖v(x)‖²`` from the diagonal pass ``sq``; KFAC adds a pass over ``batches``."""
    if fisher.kron is None:
        return float((sq * fisher.scale.to(sq.dtype) ** 2).sum())
    return whitened_trace(op, batches, fisher, sq, reducer)


def factor_tensors(kron: KroneckerFactors | None) -> dict[str, Tensor]:
    """The factors as named tensors for saving (empty without KFAC)."""
    if kron is None:
        return {}
    out = {}
    for i, (A, G) in enumerate(zip(kron.A, kron.G)):
        out[f"kfac_A_{i}"], out[f"kfac_G_{i}"] = A, G
    return out


def factor_layout(kron: KroneckerFactors | None) -> list[list] | None:
    """``[weight name, bias name or None, n_out, n_in]`` per layer, for saving."""
    if kron is None:
        return None
    return [[layer.weight, layer.bias, layer.n_out, layer.n_in] for layer in kron.layers]


def factors_from(tensors: dict[str, Tensor], layout: list[list] | None,
                 damping: float) -> KroneckerFactors | None:
    """Inverse of :func:`factor_tensors` and :func:`factor_layout`."""
    if layout is None:
        return None
    layers = [Layer("", None, str(w), None if b is None else str(b), int(n_in), int(n_out))
              for w, b, n_out, n_in in layout]
    A = [tensors[f"kfac_A_{i}"] for i in range(len(layers))]
    G = [tensors[f"kfac_G_{i}"] for i in range(len(layers))]
    for layer, a, g in zip(layers, A, G):
        if tuple(a.shape) != (layer.n_in,) * 2 or tuple(g.shape) != (layer.n_out,) * 2:
            from .errors import NFKError

            raise NFKError(f"The saved KFAC factors of {layer.weight!r} have the wrong shape.")
    return KroneckerFactors(layers, A, G, float(damping))
