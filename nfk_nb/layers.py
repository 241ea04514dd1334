"""Per-example layer inputs ``a`` and output gradients ``δ`` of ``nn.Linear`` / ``nn.Conv1d/2d``.

For such a layer, ``out_t = W a_t (+ b)`` at each position ``t`` (one position for a Linear on
``(B, in)``, the sequence positions for a Linear on ``(B, T, in)``, the output pixels of a
convolution, whose ``a_t`` are the unfolded input patches). The per-example gradient of ``log p̃``
is therefore

    ∇_[W b] log p̃(x) = Σ_t δ_t [a_t; 1]ᵀ ,      δ_t = ∂ log p̃(x) / ∂ out_t ,

an ``out × (in + 1)`` matrix built from ``T·(in + out)`` numbers. One ordinary forward and one
backward of ``Σ_i log p̃(x_i)`` (model in eval mode, so examples do not interact) yield ``a`` and
``δ`` of every example and every layer at once (BackPACK / ASDL style, Dangel et al. 2020).

A layer takes part only when this identity is guaranteed: an exact ``nn.Linear``, ``nn.Conv1d`` or
``nn.Conv2d`` (subclasses may change ``forward``), zero padding, one group, its weight in θ and not
tied, called exactly once per forward, and on a probe batch ``Σ_i δ_i a_iᵀ`` equals autograd's
gradient of the weight (which catches a weight used elsewhere, e.g. in a penalty). Everything else
keeps the ``torch.func`` path (``layerwise.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(eq=False)
class Layer:
    """One ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` whose per-example gradients are ``δ aᵀ``.

    ``n_in`` counts the appended constant 1 when the bias is in θ; ``positions`` is ``T`` per example
    (set by the probe).
    """

    module_name: str
    module: nn.Module
    weight: str
    bias: str | None
    n_in: int
    n_out: int
    positions: int = 0
    calls: int = field(default=0, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.weight,) if self.bias is None else (self.weight, self.bias)

    @property
    def numel(self) -> int:
        return self.n_in * self.n_out

    def patches(self, x: Tensor) -> Tensor:
        """The layer's input as ``(B, T, n_in)`` rows ``[a_t; 1]`` (convolutions unfolded)."""
        m = self.module
        if isinstance(m, nn.Linear):
            a = x.reshape(len(x), -1, x.shape[-1])
        else:
            if isinstance(m, nn.Conv1d):
                x = x.unsqueeze(2)
                k, d, p, s = (1, *m.kernel_size), (1, *m.dilation), (0, *_padding(m)), (1, *m.stride)
            else:
                k, d, p, s = m.kernel_size, m.dilation, _padding(m), m.stride
            a = F.unfold(x, k, dilation=d, padding=p, stride=s).transpose(1, 2)
        if self.bias is not None:
            a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2)
        return a

    def out_grads(self, g: Tensor) -> Tensor:
        """The output gradient as ``(B, T, n_out)``."""
        if isinstance(self.module, nn.Linear):
            return g.reshape(len(g), -1, g.shape[-1])
        return g.reshape(len(g), g.shape[1], -1).transpose(1, 2)

    def join(self, parts: dict[str, Tensor]) -> Tensor:
        """``{weight: (k, ...), bias: (k, out)}`` -> the ``(k, n_out, n_in)`` matrix ``[W b]``."""
        w = parts[self.weight]
        try:  # a column block of a (k, P) matrix: a view, no copy of k × numel values
            w = w.view(len(w), self.n_out, -1)
        except RuntimeError:
            w = w.reshape(len(w), self.n_out, -1)
        if self.bias is None:
            return w
        return torch.cat([w, parts[self.bias].reshape(len(w), self.n_out, 1)], dim=2)

    def split(self, M: Tensor) -> dict[str, Tensor]:
        """Inverse of :meth:`join`: ``(k, n_out, n_in)`` -> ``{name: (k, numel)}``."""
        k = len(M)
        if self.bias is None:
            return {self.weight: M.reshape(k, -1)}
        return {self.weight: M[..., :-1].reshape(k, -1), self.bias: M[..., -1]}


    def add_into(self, views: dict[str, Tensor], M: Tensor) -> None:
        """``views[name] += block`` for ``M`` (k, n_out, n_in), ``views`` (k, numel) column slices."""
        k = len(M)
        w = M[..., :-1] if self.bias is not None else M
        views[self.weight].view(k, self.n_out, -1).add_(w)
        if self.bias is not None:
            views[self.bias].add_(M[..., -1])


def _padding(m: nn.Module) -> tuple[int, ...]:
    pad = m.padding
    if isinstance(pad, str):  # only "valid" passes find_layers
        return (0,) * len(m.kernel_size)
    return tuple(pad)


def find_layers(model: nn.Module, selected: list[str], tied: set[str]) -> list[Layer]:
    """The layers of ``model`` eligible for layer-wise products (before the probe).

    Parameters
    ----------
    model : nn.Module
    selected : list of str
        Names of the parameters in θ.
    tied : set of str
        Names of θ that appear under another name too (tied weights): those layers are left out.
    """
    chosen = set(selected)
    layers = []
    for name, m in model.named_modules():
        if type(m) not in LAYER_TYPES:
            continue
        prefix = f"{name}." if name else ""
        weight, bias = prefix + "weight", prefix + "bias"
        if weight not in chosen or weight in tied or (m.bias is not None and bias in tied):
            continue
        if not isinstance(m, nn.Linear):
            if m.groups != 1 or m.padding_mode != "zeros":
                continue
            if isinstance(m.padding, str) and m.padding != "valid":
                continue
        has_bias = m.bias is not None and bias in chosen
        n_in = m.weight[0].numel() + (1 if has_bias else 0)
        layers.append(Layer(name, m, weight, bias if has_bias else None, n_in, m.weight.shape[0]))
    return layers


@dataclass
class Captured:
    """Raw inputs and output gradients of each layer for one batch (``patches`` made on demand)."""

    inputs: dict[int, Tensor]
    grads: dict[int, Tensor]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.inputs.values(), *self.grads.values()))


@contextlib.contextmanager
def recording(layers: list) -> Iterator[tuple[dict[int, Tensor], dict[int, Tensor]]]:
    """Forward hooks that keep each layer's input (detached; ``x̂`` for a :class:`NormLayer`) and
    output (in the graph)."""
    inputs: dict[int, Tensor] = {}
    outputs: dict[int, Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        layer.calls = 0

        def hook(module: nn.Module, args: tuple, out: Tensor, i: int = i, layer=layer) -> None:
            layer.calls += 1
            x = args[0].detach()
            inputs[i] = layer.normalised(x) if isinstance(layer, NormLayer) else x
            outputs[i] = out

        handles.append(layer.module.register_forward_hook(hook))
    try:
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()


NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


@dataclass(eq=False)
class NormLayer:
    """An eval-mode ``nn.BatchNorm1d/2d`` or ``nn.LayerNorm`` with affine parameters in θ.

    ``out = γ ∘ x̂ + β`` with ``x̂`` the normalised input (running statistics for BatchNorm, per-example
    statistics for LayerNorm, both fixed per example), so the per-example gradients are
    ``Σ_pos δ ∘ x̂`` for ``γ`` and ``Σ_pos δ`` for ``β``: no ``vmap``, a few elementwise sums.
    """

    module_name: str
    module: nn.Module
    weight: str | None
    bias: str | None
    calls: int = field(default=0, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.weight, self.bias) if n is not None)

    def normalised(self, x: Tensor) -> Tensor:
        """``x̂`` (called inside the forward, where the module holds the buffers of the call)."""
        m = self.module
        if isinstance(m, nn.LayerNorm):
            return F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        return F.batch_norm(x, m.running_mean, m.running_var, None, None, False, 0.0, m.eps)

    def grads(self, xhat: Tensor, delta: Tensor) -> dict[str, Tensor]:
        """Per-example gradients ``{name: (B, numel)}`` from ``x̂`` and ``δ`` (both like the output)."""
        B = len(delta)
        if isinstance(self.module, nn.LayerNorm):
            k = len(self.module.normalized_shape)
            dims = tuple(range(1, delta.dim() - k))
        else:
            dims = tuple(range(2, delta.dim()))
        def total(t: Tensor) -> Tensor:  # sum(()) would reduce every dimension
            return (t.sum(dims) if dims else t).reshape(B, -1)

        out = {}
        if self.weight is not None:
            out[self.weight] = total(delta * xhat)
        if self.bias is not None:
            out[self.bias] = total(delta)
        return out


def find_norms(model: nn.Module, selected: list[str], tied: set[str]) -> list[NormLayer]:
    """Eval-mode normalisation layers whose affine parameters (some or all) are in θ."""
    chosen = set(selected)
    out = []
    for name, m in model.named_modules():
        if type(m) not in NORM_TYPES:
            continue
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and (not m.affine or not m.track_running_stats):
            continue  # without running statistics examples interact even in eval mode
        prefix = f"{name}." if name else ""
        w = prefix + "weight" if getattr(m, "weight", None) is not None else None
        b = prefix + "bias" if getattr(m, "bias", None) is not None else None
        w = w if w in chosen and w not in tied else None
        b = b if b in chosen and b not in tied else None
        if w is not None or b is not None:
            out.append(NormLayer(name, m, w, b))
    return out
