"""Closed-form per-layer products: ``G Tᵀ``, ``Aᵀ G`` and per-example gradients from ``a`` and ``δ``.

With ``a`` (B, T, in) and ``δ`` (B, T, out) of a layer (``layers.py``) and ``T_j`` the layer's block
of a direction, the products are batched GEMMs without ``vmap`` over the k columns:

* ``(G Tᵀ)_{ij} = Σ_t δ_itᵀ T_j a_it``                    ("direct": (B·T)×in @ in×(k·out))
* ``(Aᵀ G)_j   = Σ_{i,t} A_ij δ_it a_itᵀ``                 ("direct": (k·out)×(B·T) @ (B·T)×in)
* per-example gradients ``g_i = Σ_t δ_it a_itᵀ``             (one batched matmul, "formed")

"direct" costs ``2·B·T·k·in·out`` FLOPs and "formed" (per-example gradients, then one GEMM)
``2·B·T·in·out + 4·B·k·in·out`` (the second term charged twice for writing ``g`` to memory): direct
wins for ``T = 1`` (MLPs, pooled heads), formed for convolutions. Parameters outside such layers
(norms, embeddings, custom modules, tied weights) get per-example gradients from ``vmap(grad)``
restricted to them, in the same call.

:class:`LayerwiseOperator` is a :class:`~nfk_nb.functional.LogProbOperator` whose ``jvp``/``vjp``
use these products when the FLOP model says they are cheaper than the ``torch.func`` strategies
(deterministic: decided from the model's shapes, never from a clock), and whose per-example
gradients (``per_example_grads``, ``score_moment``) always come from them. The capture of one batch
(a forward and a backward) is cached by the batch's content up to ``CACHE_BYTES``, so the passes of a
fit over the same data pay for it once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import Tensor

from .batch import slice_batch
from .data_digest import update_digest
from .functional import DENSE_BYTES, LogProbOperator
from .layers import Captured, Layer, NormLayer, find_layers, find_norms, recording
from .likelihoods import Batch, Likelihood

# Captured a and δ kept between passes (bytes); the digits MLP at N=20,000 needs ~170 MB.
CACHE_BYTES = 256 * 2**20


def _digest(batch: Batch) -> bytes:
    """Exact content key of a batch (shape, dtype and bytes of every tensor)."""
    h = hashlib.blake2b(digest_size=20)
    update_digest(h, batch)
    return h.digest()


class LayerwiseOperator(LogProbOperator):
    """``LogProbOperator`` with closed-form products for ``nn.Linear`` / ``nn.Conv1d/2d`` layers.

    Same constructor as :class:`~nfk_nb.functional.LogProbOperator`; use :func:`make_operator`.
    """

    def __init__(self, lik: Likelihood, device: torch.device, dtype: torch.dtype,
                 chunk_size: int | None = None, strategy: str = "auto") -> None:
        super().__init__(lik, device, dtype, chunk_size, strategy)
        tied = set(self._aliases) | set(self._aliases.values())
        self.layers: list[Layer] = find_layers(lik.model, list(self.space.names), tied)
        self.norms: list[NormLayer] = find_norms(lik.model, list(self.space.names), tied)
        self._probed = False
        self._step: int | None = None
        self._cache: dict[bytes, Captured] = {}
        self._cached_bytes = 0
        self._update_rest()

    def _update_rest(self) -> None:
        covered = {n for layer in [*self.layers, *self.norms] for n in layer.names}
        self.rest = [n for n in self.space.names if n not in covered]
        self._direct = {}

    # -- capture ----------------------------------------------------------------------------------
    def _record(self, batch: Batch) -> Captured:
        """One forward and one backward of ``Σ log p̃``: every layer's input and output gradient.

        Each layer's output gets a zero leaf ``ε`` added by a forward hook; the gradient with respect
        to ``ε`` is ``δ`` even when a later op modifies the output in place, and no weight gradient
        is computed.
        """
        probes: dict[int, Tensor] = {}
        hooked = [*self.layers, *self.norms]
        with recording(hooked) as (inputs, _), torch.enable_grad():
            handles = []
            for i, layer in enumerate(hooked):
                def add_leaf(module, args, out, i=i):
                    probes[i] = torch.zeros_like(out, requires_grad=True)
                    return out + probes[i]
                handles.append(layer.module.register_forward_hook(add_leaf))
            try:
                logp = self(self.theta, batch)
            finally:
                for h in handles:
                    h.remove()
            for layer in hooked:
                if layer.calls != 1:
                    raise _NotLayerwise(layer)
            leaves = [probes[i] for i in range(len(hooked))]
            grads = torch.autograd.grad(logp.sum(), leaves, allow_unused=True)
        deltas = {i: (g if g is not None else torch.zeros_like(probes[i])) for i, g in enumerate(grads)}
        return Captured(dict(inputs), deltas)

    def probe(self, batch: Batch) -> None:
        """Check each layer on (up to) three examples; layers that fail keep the ``torch.func`` path.

        A layer fails when it is not called exactly once per forward, when its input's leading
        dimension is not the batch (e.g. a decoder run on several samples per example), or when its
        per-example gradients ``Σ_t δ_t a_tᵀ`` differ from ``vmap(grad)``'s (a weight also used
        elsewhere, examples reordered inside the model, ...).
        """
        if self._probed or not (self.layers or self.norms):
            self._probed = True
            return
        self._probed = True
        example = slice_batch(batch, 0, 3)
        n = len(example[0])
        reference = super()._grads(example)  # the torch.func oracle, on a few examples
        if self._loop_examples:  # not vmappable over examples: every product per example (functional)
            self.layers, self.norms = [], []
            self._update_rest()
            return
        cap = None
        while self.layers or self.norms:
            try:
                cap = self._record(example)
                break
            except _NotLayerwise as bad:
                self.layers = [layer for layer in self.layers if layer is not bad.layer]
                self.norms = [layer for layer in self.norms if layer is not bad.layer]
        norms_kept, kept_bytes = [], 0
        for j, norm in enumerate(self.norms):
            i = len(self.layers) + j
            if len(cap.inputs[i]) == n and len(cap.grads[i]) == n and all(
                    _close(g, reference[name].reshape(n, -1))
                    for name, g in norm.grads(cap.inputs[i], cap.grads[i]).items()):
                norms_kept.append(norm)
                kept_bytes += 2 * cap.inputs[i][:1].numel() * cap.inputs[i].element_size()
        keep = []
        for i, layer in enumerate(self.layers):
            x = cap.inputs[i]
            if x.dim() < 2 or len(x) != n or len(cap.grads[i]) != n:
                continue
            g = layer.out_grads(cap.grads[i]).transpose(1, 2) @ layer.patches(x)
            mine = layer.split(g)
            if all(_close(mine[name], reference[name].reshape(n, -1)) for name in layer.names):
                layer.positions = int(layer.patches(x[:1]).shape[1])
                keep.append(layer)
                kept_bytes += (x[:1].numel() + cap.grads[i][:1].numel()) * x.element_size()
        self.layers, self.norms = keep, norms_kept
        self._update_rest()
        if self.layers or self.norms:
            item = torch.empty((), dtype=self.dtype).element_size()
            widest = max([max(layer.positions * layer.n_in, layer.numel) for layer in self.layers] + [0])
            per = kept_bytes + item * widest
            per += item * sum(self.space.numels[self.space.names.index(n)] for n in self.rest)
            self._step = max(1, DENSE_BYTES // max(per, 1))

    def capture(self, batch: Batch) -> Captured:
        """``a`` and ``δ`` of a prepared batch (cached by content up to ``CACHE_BYTES``)."""
        key = _digest(batch)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        cap = self._record(batch)
        size = cap.nbytes()
        if self._cached_bytes + size <= CACHE_BYTES:
            self._cache[key] = cap
            self._cached_bytes += size
        return cap

    def clear_cache(self) -> None:
        """Drop the cached captures (call when a fit is done)."""
        self._cache.clear()
        self._cached_bytes = 0

    def _sub_batches(self, batch: Batch) -> Iterator[tuple[int, Batch]]:
        self.probe(batch)
        if not (self.layers or self.norms):
            yield from super()._sub_batches(batch)
            return
        n = len(batch[0])
        step = min(n, self._step or n)
        for start in range(0, n, step):
            yield start, slice_batch(batch, start, start + step)

    # -- per-example gradients --------------------------------------------------------------------
    def _grads(self, batch: Batch) -> dict[str, Tensor]:
        self.probe(batch)
        if not (self.layers or self.norms):
            return super()._grads(batch)
        cap = self.capture(batch)
        out: dict[str, Tensor] = {}
        shapes = dict(zip(self.space.names, self.space.shapes))
        for i, layer in enumerate(self.layers):
            g = layer.out_grads(cap.grads[i]).transpose(1, 2) @ layer.patches(cap.inputs[i])
            for name, t in layer.split(g).items():
                out[name] = t.reshape(len(g), *shapes[name])
        for name, g in self._other_grads(cap, batch).items():
            out[name] = g.reshape(len(g), *shapes[name])
        return out

    def score_moment(self, batch: Batch, mean: Tensor | None, power: int) -> Tensor:
        """As :meth:`LogProbOperator.score_moment`; for ``power == 2`` a layer with one position sums
        ``(δ aᵀ - M)²`` in float64 by GEMMs (``(δ²)ᵀ(a²)`` without a mean, else
        :func:`_centred_square_sum`, which does not cancel: the expanded ``Σ g² - 2 M Σ g + n M²``
        lost 0.3% of ``trace K`` in float64 on inputs that differ at 1e-7, tests/test_numerics.py);
        other layers form the per-example gradients with one batched matmul."""
        self.probe(batch)
        if power != 2 or not (self.layers or self.norms):
            return super().score_moment(batch, mean, power)
        acc = self.acc_dtype
        total = torch.zeros(self.P, dtype=acc, device=self.device)
        views = self._slices(total[None])
        means = None if mean is None else self._slices(mean.to(total)[None])
        for _, sub in self._sub_batches(batch):
            cap = self.capture(sub)
            for i, layer in enumerate(self.layers):
                a = layer.patches(cap.inputs[i]).double()
                d = layer.out_grads(cap.grads[i]).double()
                M = None if means is None else layer.join(means).double()[0]
                if layer.positions == 1 and M is None:
                    a, d = a[:, 0], d[:, 0]
                    s2 = (d * d).T @ (a * a)
                elif layer.positions == 1:
                    s2 = _centred_square_sum(a[:, 0], d[:, 0], M)
                else:  # centred: Σ g² - 2 M Σ g + n M² would cancel when ‖g - M‖ ≪ ‖M‖ (consistency.py)
                    g = d.transpose(1, 2) @ a
                    if M is not None:
                        g -= M
                    s2 = (g * g).sum(0)
                layer.add_into(views, s2[None].to(acc))
            for name, g in self._other_grads(cap, sub).items():
                g = g.reshape(len(g), -1).to(acc)
                if means is not None:
                    g = g - means[name]
                views[name] += (g * g).sum(0)[None]
        return total

    def _other_grads(self, cap: Captured, batch: Batch) -> dict[str, Tensor]:
        """Per-example gradients ``{name: (B, …)}`` of the parameters outside the linear/conv layers:
        the normalisation layers' (from ``cap``) and the rest (by ``vmap(grad)`` on ``batch``)."""
        out = self._norm_grads(cap)
        if self.rest:
            out.update(self._rest_grads(batch))
        return out

    def _norm_grads(self, cap: Captured) -> dict[str, Tensor]:
        """Per-example gradients ``{name: (B, numel)}`` of the normalisation layers' parameters."""
        out: dict[str, Tensor] = {}
        for j, norm in enumerate(self.norms):
            i = len(self.layers) + j
            out.update(norm.grads(cap.inputs[i], cap.grads[i]))
        return out

    def _rest_grads(self, batch: Batch) -> dict[str, Tensor]:
        """Per-example gradients of the parameters outside the layers, by ``vmap(grad)``."""
        return self._grads_vmap(batch, {n: self.theta[n] for n in self.rest})

    # -- the FLOP model ---------------------------------------------------------------------------

    def _is_direct(self, layer: Layer, k: int) -> bool:
        """Direct products beat forming per-example gradients when ``T·k ≤ T + 2k``."""
        T = layer.positions
        return T * k <= T + 2 * k

    def _layerwise_cheaper(self, k: int, batch: Batch) -> bool:
        """Layer-wise FLOPs ≤ the cheaper ``torch.func`` strategy's (per example)."""
        if self.strategy != "auto" or not (self.layers or self.norms):
            return False
        key = ("layerwise", k)
        if key not in self.choices:
            P = max(self.P, 1)
            forward = 2 * P * self.weight_reuse(batch)
            base = min(2 * k * forward, 3 * forward + 4 * k * P)
            cost = 2 * forward  # the capture: one forward, one backward without weight gradients
            for layer in self.layers:
                flops = 2 * layer.positions * layer.numel
                cost += k * flops if self._is_direct(layer, k) else flops + 4 * k * layer.numel
            cost += sum(4 * k * self.space.numels[self.space.names.index(n)]
                        for norm in self.norms for n in norm.names)
            if self.rest:
                n_rest = sum(self.space.numels[self.space.names.index(n)] for n in self.rest)
                cost += 3 * forward + 4 * k * n_rest
            self.choices[key] = "layerwise" if cost <= base else "base"
        return self.choices[key] == "layerwise"

    # -- products ---------------------------------------------------------------------------------
    def jvp(self, batch: Batch, tangents: Tensor) -> Tensor:
        self.probe(batch)
        if not self._layerwise_cheaper(len(tangents), batch):
            return super().jvp(batch, tangents)
        k = len(tangents)
        tan = self._slices(tangents)
        blocks = [layer.join(tan) for layer in self.layers]
        rows = []
        for _, sub in self._sub_batches(batch):
            cap = self.capture(sub)
            y = torch.zeros(len(sub[0]), k, dtype=tangents.dtype, device=tangents.device)
            for i, layer in enumerate(self.layers):
                a = layer.patches(cap.inputs[i])
                d = layer.out_grads(cap.grads[i])
                y += _jvp_block(a, d, blocks[i], self._is_direct(layer, k))
            for name, g in self._other_grads(cap, sub).items():
                y += g.reshape(len(g), -1) @ tan[name].T
            rows.append(y)
        return torch.cat(rows)

    def vjp(self, batch: Batch, cotangents: Tensor, out: Tensor | None = None) -> Tensor:
        self.probe(batch)
        k = cotangents.shape[1]
        if not self._layerwise_cheaper(k, batch):
            return super().vjp(batch, cotangents, out)
        if out is None:
            out = torch.zeros(k, self.P, dtype=self.dtype, device=self.device)
        views = self._slices(out)
        for start, sub in self._sub_batches(batch):
            cap = self.capture(sub)
            A = cotangents[start : start + len(sub[0])]
            for i, layer in enumerate(self.layers):
                a = layer.patches(cap.inputs[i])
                d = layer.out_grads(cap.grads[i])
                layer.add_into(views, _vjp_block(a, d, A, self._is_direct(layer, k)))
            for name, g in self._other_grads(cap, sub).items():
                views[name] += A.T @ g.reshape(len(g), -1)
        return out


def _centred_square_sum(a: Tensor, d: Tensor, M: Tensor) -> Tensor:
    """``Σ_i (d_i a_iᵀ - M)²`` (float64) by GEMMs on the centred factors, without forming ``d_i a_iᵀ``.

    With ``a = ā + a'``, ``d = d̄ + d'`` (batch means) and ``c = mean d' a'ᵀ``, entrywise
    ``Σ (d a - d̄ā - c)² = d̄² Σa'² + ā² Σd'² + Σ d'² a'² - n c² + 2n d̄ ā c + 2 d̄ Σ d' a'² + 2 ā Σ d'² a'``,
    plus ``n (d̄ā + c - M)²`` for the shift to ``M``. The large means enter only multiplied by
    centred terms, so scores that barely vary (the case where ``Σ g² - 2 M Σ g + n M²`` cancels) keep
    their accuracy: measured 8e-10 relative to the formed sum on factors varying at 1e-7, where the
    expanded form was off by 4e-2.
    """
    n = len(a)
    ab, db = a.mean(0), d.mean(0)
    a1, d1 = a - ab, d - db
    a2, d2 = a1 * a1, d1 * d1
    c = d1.T @ a1 / n
    s2 = d2.T @ a2 - n * c * c
    s2 += torch.outer(db * db, a2.sum(0)) + torch.outer(d2.sum(0), ab * ab)
    s2 += 2 * n * torch.outer(db, ab) * c
    s2 += 2 * db[:, None] * (d1.T @ a2) + 2 * ab[None, :] * (d2.T @ a1)
    shift = torch.outer(db, ab) + c - M
    return s2 + n * shift * shift


def _jvp_block(a: Tensor, d: Tensor, T: Tensor, direct: bool) -> Tensor:
    """``y_ij = Σ_t d_itᵀ T_j a_it`` for a (B,T,in), d (B,T,out), T (k,out,in): (B, k)."""
    B, n_pos, n_in = a.shape
    k, n_out, _ = T.shape
    T = T.to(a.dtype)
    if not direct:
        g = d.transpose(1, 2) @ a  # (B, out, in) per-example gradients
        return g.reshape(B, -1) @ T.reshape(k, -1).T
    if n_in <= n_out:  # contract the output side first: (B·T, out) @ (out, k·in)
        z = d.reshape(-1, n_out) @ T.permute(1, 0, 2).reshape(n_out, k * n_in)
        return (z.view(B, n_pos, k, n_in) * a.view(B, n_pos, 1, n_in)).sum((1, 3))
    z = a.reshape(-1, n_in) @ T.reshape(k * n_out, n_in).T  # (B·T, k·out)
    return (z.view(B, n_pos, k, n_out) * d.view(B, n_pos, 1, n_out)).sum((1, 3))


def _vjp_block(a: Tensor, d: Tensor, A: Tensor, direct: bool) -> Tensor:
    """``Σ_{i,t} A_ij d_it a_itᵀ`` for a (B,T,in), d (B,T,out), A (B,k): (k, out, in)."""
    B, n_pos, n_in = a.shape
    n_out = d.shape[2]
    k = A.shape[1]
    A = A.to(a.dtype)
    if not direct:
        g = d.transpose(1, 2) @ a
        return (A.T @ g.reshape(B, -1)).view(k, n_out, n_in)
    if n_out <= n_in:  # weight the output gradients: (k·out, B·T) @ (B·T, in)
        w = (d.view(B, n_pos, 1, n_out) * A.view(B, 1, k, 1)).reshape(B * n_pos, k * n_out)
        return (w.T @ a.reshape(-1, n_in)).view(k, n_out, n_in)
    w = (a.view(B, n_pos, 1, n_in) * A.view(B, 1, k, 1)).reshape(B * n_pos, k * n_in)
    return (d.reshape(-1, n_out).T @ w).view(n_out, k, n_in).transpose(0, 1)


def _close(mine: Tensor, auto: Tensor) -> bool:
    tol = 1e-4 if mine.dtype in (torch.float32, torch.float64) else 1e-2
    scale = float(auto.abs().max()) if auto.numel() else 0.0
    return bool(torch.allclose(mine, auto, rtol=tol, atol=tol * scale + 1e-12))


class _NotLayerwise(Exception):
    """A layer was not called exactly once in a forward."""

    def __init__(self, layer: Layer) -> None:
        super().__init__(layer.module_name)
        self.layer = layer


def make_operator(lik: Likelihood, device: torch.device, dtype: torch.dtype,
                  chunk_size: int | None = None, strategy: str = "auto") -> LogProbOperator:
    """A :class:`LayerwiseOperator` when the model has eligible layers and ``strategy="auto"``."""
    if strategy == "auto":
        op = LayerwiseOperator(lik, device, dtype, chunk_size, strategy)
        if op.layers or op.norms:
            return op
    return LogProbOperator(lik, device, dtype, chunk_size, strategy)
