"""``torch.func`` plumbing: θ as one flat vector and the three batched products the NFK needs.

For a batch of B examples with per-example gradients ``G`` (B×P, never formed here except in
:meth:`LogProbOperator.per_example_grads`):

* ``jvp(batch, T)``  = ``G Tᵀ``  (B×k): one forward-mode pass, ``vmap``-ped over the k tangents;
* ``vjp(batch, A)``  = ``Aᵀ G``  (k×P): one forward, then k reverse passes ``vmap``-ped;
* ``per_example_grads(batch)`` = ``G``: ``vmap(grad)`` over the examples;
* ``score_moment(batch, m, p)`` = ``Σ_i (g_i - m)^p``: ``p = 1`` is one ordinary backward pass,
  ``p ≥ 2`` runs ``vmap(grad)`` on sub-batches of ``MOMENT_CHUNK`` examples, parameter by parameter,
  so the B×P matrix is never copied into one flat block (measured on the digits MLP, 1 thread:
  ~2× faster than ``per_example_grads`` followed by the moment, ~3× faster with the old copies).

Two strategies compute ``jvp``/``vjp`` (same results to float tolerance; ``strategy=``):

* ``"vmap"``: forward-mode / reverse-mode AD ``vmap``-ped over the k columns, cost ≈ 2k forwards;
* ``"dense"``: per-example gradients of sub-batches (at most ``DENSE_BYTES`` each), then GEMMs
  ``G Tᵀ`` / ``Aᵀ G``; cost ≈ one per-example-gradient pass, almost independent of k. It wins when
  per-example gradients are cheap next to 2k forwards: measured (1 thread, batch 256, k=42) on a
  small CNN (P=16k) 27 ms against 720 ms; on an MLP (P=85k) about even.
* ``"auto"`` (default) decides from the model's arithmetic, never from a clock, so a seeded fit is
  bit-for-bit the same in every process: with ``r`` = forward FLOPs per example / ``2P`` (how often
  each weight is reused per example: ≈1 for an MLP, ≈H·W for a convolution, counted once with
  ``FlopCounterMode``), "vmap" costs ≈ ``2k·r`` and "dense" ≈ ``3r + 2k`` units of ``2P`` FLOPs
  (the factor 2 on the GEMM charges for writing the per-example gradients to memory), and the
  cheaper is taken. The JVP also falls back to "dense" when forward-mode AD is not implemented for
  an op of the model (e.g. fused attention kernels, CPU LSTM): "dense" needs reverse mode only.

Forwards that cannot be ``vmap``-ped over examples (GRU / RNN / GRUCell, Hugging Face SDPA masks
built from a 2-D attention mask, data-dependent branches) get their per-example gradients from a
loop over single examples instead, with one warning naming the module (``_fallback.py``). Every
product then comes from those single-example gradients ("dense", and the sum of ``power == 1``
moments too): a branch on the values of a whole batch would otherwise make the batched products
disagree with the per-example scores. The cost is one forward and backward per example and pass.

Examples never interact because the model runs in eval mode (see ``_modes.eval_mode``), so the JVP
of the batched ``log p̃`` is the stack of per-example JVPs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ._fallback import cannot_differentiate, locate_failure, warn_fallback
from .batch import Batch, like, map_batch, slice_batch
from .likelihoods import Likelihood

# Examples per vmap(grad) call in score_moment: per-example gradients of 64 examples of a ~100k-
# parameter model stay in cache; 256 or 1024 at once were 1.7× and 2.2× slower per example.
MOMENT_CHUNK = 64
# Largest block of per-example gradients the dense strategy forms at once.
DENSE_BYTES = 256 * 2**20
STRATEGIES = ("auto", "vmap", "dense")
# torch's words for an op without a forward-mode rule (aten ops; custom autograd.Functions)
NO_FORWARD_RULE = ("Trying to use forward AD with", "to use it with forward mode AD")


@dataclass(frozen=True)
class ParamSpace:
    """Names, shapes and offsets of θ inside the flat vector of length ``P``."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.numels)

    def flatten(self, tensors: dict[str, Tensor], lead: int = 0) -> Tensor:
        """Concatenate ``{name: (*lead, *shape)}`` into ``(*lead, P)``."""
        parts = [tensors[n].reshape(*tensors[n].shape[:lead], -1) for n in self.names]
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split ``(*lead, P)`` into ``{name: (*lead, *shape)}`` views."""
        lead = flat.shape[:-1]
        out, start = {}, 0
        for name, shape, n in zip(self.names, self.shapes, self.numels):
            out[name] = flat[..., start : start + n].reshape(*lead, *shape)
            start += n
        return out

    def name_at(self, column: int) -> str:
        """The parameter tensor that flat coordinate ``column`` belongs to."""
        end = 0
        for name, n in zip(self.names, self.numels):
            end += n
            if column < end:
                return name
        raise IndexError(f"column {column} is outside θ (P = {self.size}).")

    def fingerprint(self) -> list[list]:
        return [[n, list(s)] for n, s in zip(self.names, self.shapes)]


class _LogProbModule(nn.Module):
    """Binds a likelihood to its model so ``functional_call`` can swap the parameters."""

    def __init__(self, lik: Likelihood) -> None:
        super().__init__()
        self.model = lik.model
        self._lik = lik

    def forward(self, batch: Batch) -> Tensor:
        return self._lik.log_prob(self.model, batch)


def _add_batch_dim(example: Batch) -> Batch:
    return map_batch(example, lambda t: t.unsqueeze(0))


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 if it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def compute_dtype(model: nn.Module) -> torch.dtype:
    """Default compute dtype: the model's, but at least float32.

    bfloat16 / float16 models are differentiated on a float32 copy of θ: with bf16 products the
    kernel of a small transformer changed by 2-4% between batch sizes 3 and 16 (the rounding of
    each batched matmul depends on the batch); in float32 it agrees to ~1e-6. Pass ``dtype=`` to
    the estimator to compute in reduced precision anyway (sums stay float32).
    """
    return torch.promote_types(model_dtype(model), torch.float32)


class LogProbOperator:
    """Per-example ``log p̃`` of a likelihood as a function of flat θ, and its batched derivatives.

    Parameters are copied (detached) to ``device`` and ``dtype``; the user's model is not moved.

    Parameters
    ----------
    lik : Likelihood
    device : torch.device
    dtype : torch.dtype
        Dtype of θ and of floating inputs.
    chunk_size : int, optional
        Passed to ``vmap`` over tangents/cotangents to bound memory (None: all at once).
    strategy : {"auto", "vmap", "dense"}
        How ``jvp``/``vjp`` are computed (see the module docstring).
    """

    def __init__(
        self,
        lik: Likelihood,
        device: torch.device,
        dtype: torch.dtype,
        chunk_size: int | None = None,
        strategy: str = "auto",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}.")
        self.lik, self.device, self.dtype, self.chunk_size = lik, device, dtype, chunk_size
        self.strategy = strategy
        self.choices: dict[tuple[str, int], str] = {}  # "auto": (product, k) -> strategy kept
        self._reuse: float | None = None
        self._no_forward_ad = False
        self._loop_examples = False  # vmap over examples failed: per-example loop (see _grads)
        self.module = _LogProbModule(lik)
        selected = set(lik.param_names)
        named = dict(lik.model.named_parameters())
        self.space = ParamSpace(
            tuple(lik.param_names), tuple(named[n].shape for n in lik.param_names)
        )

        def cast(t: Tensor) -> Tensor:
            t = t.detach()
            return t.to(device, dtype) if t.is_floating_point() else t.to(device)

        self.theta = {n: cast(named[n]) for n in lik.param_names}
        # Everything else (frozen parameters, buffers) is passed explicitly too, on the device.
        self.frozen = {
            f"model.{n}": cast(p)
            for n, p in lik.model.named_parameters(remove_duplicate=False)
            if n not in selected
        }
        self.frozen.update(
            {f"model.{n}": cast(b) for n, b in lik.model.named_buffers(remove_duplicate=False)}
        )
        # A parameter tied to a selected one must follow it; map the alias names to the owner.
        self._aliases = _tied_aliases(lik.model, selected)
        for alias in self._aliases:
            self.frozen.pop(f"model.{alias}", None)

    @property
    def P(self) -> int:
        return self.space.size

    def theta_flat(self) -> Tensor:
        return self.space.flatten(self.theta)

    def to_batch(self, batch: Batch) -> Batch:
        """Move a batch to the device (floats in the compute dtype) and add prepared inputs."""
        moved = map_batch(
            batch, lambda t: t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)
        )
        return self.lik.prepare(moved)

    # -- the function of θ ----------------------------------------------------------------------
    def __call__(self, theta: dict[str, Tensor], batch: Batch) -> Tensor:
        state = {f"model.{n}": t for n, t in theta.items()}
        for alias, owner in self._aliases.items():
            state[f"model.{alias}"] = theta[owner]
        state.update(self.frozen)
        return functional_call(self.module, state, (batch,), tie_weights=False, strict=False)

    # -- products ---------------------------------------------------------------------------------
    def log_prob(self, batch: Batch) -> Tensor:
        """``log p̃`` of a prepared batch, shape ``(B,)``."""
        with torch.no_grad():
            return self(self.theta, batch)

    def per_example_grads(self, batch: Batch) -> Tensor:
        """Per-example gradients ``G`` of a prepared batch, shape ``(B, P)``."""

        return self.space.flatten(self._grads(batch), lead=1)

    def _grads(self, batch: Batch) -> dict[str, Tensor]:
        """Per-example gradients as ``{name: (B, *shape)}`` (no flat copy).

        ``vmap(grad)`` over the examples; when torch cannot vmap the forward but single examples
        differentiate, a loop over examples from then on (one warning). When single examples fail
        too, an ``NFKError`` names the module torch failed in.
        """
        if not self._loop_examples:
            try:
                return self._grads_vmap(batch)
            except (RuntimeError, NotImplementedError) as exc:
                where = locate_failure(self.lik.model, lambda: self._grads_vmap(slice_batch(batch, 0, 2)))
                try:
                    out = self._grads_loop(batch)
                except (RuntimeError, NotImplementedError) as inner:
                    raise cannot_differentiate(where, inner) from exc
                self._loop_examples = True
                self.choices.clear()  # the cost model changes: per-example gradients are dear now
                warn_fallback(where, exc, len(batch[0]))
                return out
        return self._grads_loop(batch)

    def loop_examples_like(self, other: LogProbOperator) -> None:
        """Start in ``other``'s mode: per-example gradients by a loop over examples when ``vmap`` over
        them already failed there (so the fallback found once is not warned about a second time)."""
        if other._loop_examples and not self._loop_examples:
            self._loop_examples = True
            self.choices.clear()  # the cost model changes, as in _grads

    def _single(self, template: Batch, fixed: dict[str, Tensor] | None = None):
        """``log p̃`` of one example as a function of (some of) θ; the rest of θ is ``fixed``."""

        def single(theta: dict[str, Tensor], example: tuple[Tensor, ...]) -> Tensor:
            full = theta if not fixed else {**fixed, **theta}
            return self(full, _add_batch_dim(like(template, example)))[0]

        return single

    def _grads_vmap(self, batch: Batch, params: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``vmap(grad)`` over the examples, with respect to ``params`` (default: all of θ)."""
        params = self.theta if params is None else params
        fixed = {n: t for n, t in self.theta.items() if n not in params}
        # vmap sees a plain tuple (a pytree); the keys of a dict batch are put back inside
        return vmap(grad(self._single(batch, fixed)), in_dims=(None, 0))(params, tuple(batch))

    def _grads_loop(self, batch: Batch) -> dict[str, Tensor]:
        g = grad(self._single(batch))
        rows = [g(self.theta, tuple(t[i] for t in batch)) for i in range(len(batch[0]))]
        return {name: torch.stack([r[name] for r in rows]) for name in self.space.names}

    @property
    def acc_dtype(self) -> torch.dtype:
        """Dtype of sums: at least float32, float64 for float64 models."""
        return torch.promote_types(self.dtype, torch.float32)

    def score_moment(self, batch: Batch, mean: Tensor | None, power: int) -> Tensor:
        """``Σ_i (g_i - mean)^power`` over a prepared batch, shape ``(P,)``, in :attr:`acc_dtype`.

        Equals ``((per_example_grads(batch) - mean) ** power).sum(0)`` without forming the flat
        B×P matrix; ``power == 1`` needs no per-example gradients at all (``Σ_i g_i`` is the
        gradient of ``Σ_i log p̃(x_i)``). A non-finite gradient makes the result non-finite.
        """
        acc = self.acc_dtype
        n = len(batch[0])
        total = torch.zeros(self.P, dtype=acc, device=self.device)
        if power == 1 and not self._loop_examples:
            _, pullback = vjp(lambda th: self(th, batch), self.theta)
            ones = torch.ones(n, dtype=self.dtype, device=self.device)
            self._add_flat(total, pullback(ones)[0])
            return total if mean is None else total - n * mean.to(total)
        views = self.space.unflatten(total)
        means = None if mean is None else self.space.unflatten(mean.to(total))

        for _, sub in self._sub_batches(batch):
            for name, g in self._grads(sub).items():
                # out of place first: vmap may return an expanded (stride-0) tensor for an unused
                # parameter; later steps are in place on the fresh tensor
                d = g.to(acc) - means[name] if means is not None else g.to(acc) * 1
                views[name] += (d.square_() if power == 2 else d.pow_(power)).sum(0)
        return total

    def _add_flat(self, out: Tensor, grads: dict[str, Tensor]) -> None:
        """``out (…, P) += flatten(grads)`` through views, without a concatenated copy."""
        views = self.space.unflatten(out)
        for name in self.space.names:
            views[name] += grads[name]

    def _sub_batches(self, batch: Batch) -> Iterator[tuple[int, Batch]]:
        """``(start, sub-batch)`` of at most ``MOMENT_CHUNK`` examples and ``DENSE_BYTES`` of G."""
        n = len(batch[0])
        item = torch.empty((), dtype=self.dtype).element_size()
        step = max(1, min(MOMENT_CHUNK, DENSE_BYTES // max(1, self.P * item)))
        for start in range(0, n, step):
            yield start, slice_batch(batch, start, start + step)

    def _slices(self, M: Tensor) -> dict[str, Tensor]:
        """Column blocks ``M[:, θ_name]`` as (k, numel) views."""
        out, start = {}, 0
        for name, n in zip(self.space.names, self.space.numels):
            out[name] = M[:, start : start + n]
            start += n
        return out

    def weight_reuse(self, batch: Batch) -> float:
        """Forward FLOPs of one example over ``2P``: how often each weight is used per example."""
        if self._reuse is None:
            from torch.utils.flop_counter import FlopCounterMode

            example = slice_batch(batch, 0, 1)
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                self(self.theta, example)
            self._reuse = counter.get_total_flops() / (2 * max(self.P, 1))
        return self._reuse

    def _strategy(self, kind: str, k: int, batch: Batch) -> str:
        """The strategy for (kind, k): fixed, or under "auto" the cheaper by the FLOP model above."""
        if self._loop_examples:  # products from single-example gradients only (module docstring)
            return "dense"
        if self.strategy != "auto":
            return self.strategy
        chosen = self.choices.get((kind, k))
        if chosen is None:
            r = self.weight_reuse(batch)
            chosen = "dense" if 3 * r + 2 * k < 2 * k * r else "vmap"
            if kind == "jvp" and self._no_forward_ad:
                chosen = "dense"
            self.choices[(kind, k)] = chosen
        return chosen

    def jvp(self, batch: Batch, tangents: Tensor) -> Tensor:
        """``G Tᵀ`` for tangents ``T`` of shape ``(k, P)``; returns ``(B, k)``."""
        runs = {"vmap": self._jvp_vmap, "dense": self._jvp_dense}
        name = self._strategy("jvp", len(tangents), batch)
        if name == "vmap" and self.strategy == "auto":
            try:
                return self._jvp_vmap(batch, tangents)
            except (NotImplementedError, RuntimeError) as exc:
                if not any(text in str(exc) for text in NO_FORWARD_RULE):
                    raise  # only a missing forward-mode rule switches strategy, never a passing error
                # an op without a forward-mode rule: build the JVP from reverse mode from now on
                self._no_forward_ad = True
                self.choices = {key: v for key, v in self.choices.items() if key[0] != "jvp"}
                name = "dense"
        return runs[name](batch, tangents)

    def _jvp_dense(self, batch: Batch, tangents: Tensor) -> Tensor:
        tan = self._slices(tangents)
        rows = []
        for _, sub in self._sub_batches(batch):
            y = None
            for name, g in self._grads(sub).items():
                part = g.reshape(len(g), -1) @ tan[name].T
                y = part if y is None else y.add_(part)
            rows.append(y)
        return torch.cat(rows)

    def _jvp_vmap(self, batch: Batch, tangents: Tensor) -> Tensor:
        tan = self.space.unflatten(tangents)

        def along(t: dict[str, Tensor]) -> Tensor:
            return jvp(lambda th: self(th, batch), (self.theta,), (t,))[1]

        return vmap(along, chunk_size=self.chunk_size)(tan).T

    def vjp(self, batch: Batch, cotangents: Tensor, out: Tensor | None = None) -> Tensor:
        """``Aᵀ G`` for cotangents ``A`` of shape ``(B, k)``; returns ``(k, P)``.

        With ``out`` (a ``(k, P)`` tensor, any floating dtype) the product is added into ``out``
        in place and ``out`` is returned: accumulating over batches this way skips one (k, P)
        concatenation per batch (~20% of a VJP of the digits MLP).
        """
        k = cotangents.shape[1]

        def fresh() -> Tensor:
            return torch.zeros(k, self.P, dtype=self.dtype, device=self.device)

        runs = {"vmap": self._vjp_vmap, "dense": self._vjp_dense}
        name = self._strategy("vjp", k, batch)
        return runs[name](batch, cotangents, fresh() if out is None else out)

    def _vjp_vmap(self, batch: Batch, cotangents: Tensor, out: Tensor) -> Tensor:
        _, pullback = vjp(lambda th: self(th, batch), self.theta)
        grads = vmap(pullback, chunk_size=self.chunk_size)(cotangents.T.contiguous())[0]
        self._add_flat(out, grads)
        return out

    def _vjp_dense(self, batch: Batch, cotangents: Tensor, out: Tensor) -> Tensor:
        views = self._slices(out)
        for start, sub in self._sub_batches(batch):
            a = cotangents[start : start + len(sub[0])].T
            for name, g in self._grads(sub).items():
                views[name].add_(a @ g.reshape(len(g), -1))
        return out


def _tied_aliases(model: nn.Module, selected: set[str]) -> dict[str, str]:
    """Names under which a selected parameter appears again (tied weights) -> its canonical name."""
    owner_of: dict[int, str] = {}
    for name, p in model.named_parameters():
        owner_of.setdefault(id(p), name)
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owner = owner_of[id(p)]
        if name != owner and owner in selected:
            aliases[name] = owner
    return aliases

