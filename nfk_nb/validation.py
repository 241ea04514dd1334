"""Input checks that turn the model's and the data's failures into one clear sentence.

* :func:`check_inputs` runs the model once on two examples of the first batch (in eval mode, no
  gradients) before any expensive pass, so a wrong input shape, integer pixels fed to a ``Linear`` or
  a ``log_prob`` that does not return one number per example fail at once, with the expected shape
  named when the model's first layer tells it; then per-example gradients and one JVP of those two
  examples, so a model that ``torch.func`` cannot transform (Python branches on tensor values,
  ``.item()``) fails in one sentence too.
* :func:`check_labels` refuses unlabelled data for scores that need labels.
* :func:`check_finite_rows` / :func:`check_finite_columns` check the outputs of the sketch passes
  (``V Uᵀ`` and ``Aᵀ V``): O(size of the output), negligible next to the passes themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .batch import labels_of, slice_batch, with_labels
from .data_checks import global_index
from .datasource import DataSource
from .errors import NFKError, NFKTypeError
from .functional import LogProbOperator
from .likelihoods import Likelihood

# Errors a model raises on inputs it cannot take (shape or dtype mismatch).
_MODEL_ERRORS = (RuntimeError, TypeError, IndexError, ValueError)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_INTEGER_INPUT = (nn.Embedding, nn.EmbeddingBag)


def _shape(t: Tensor) -> str:
    """A per-example shape written as ``(batch, d1, d2, ...)``."""
    return "(" + ", ".join(["batch", *(str(s) for s in t.shape[1:])]) + ")"


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first leaf module that owns parameters, in registration order (usually the input layer)."""
    for name, module in model.named_modules():
        if next(iter(module.children()), None) is None and next(module.parameters(False), None) is not None:
            return name, module
    return None


def expected_input(model: nn.Module) -> str | None:
    """A sentence naming the input shape the model's first layer expects, when it can be inferred."""
    found = first_layer(model)
    if found is None:
        return None
    name, layer = found
    if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.has_uninitialized_params():
        return None
    label = f"its first layer {name!r} ({type(layer).__name__})"
    if isinstance(layer, nn.Linear):
        n = layer.in_features
        return f"{label} expects {n} features, i.e. inputs of shape (batch, {n})"
    if isinstance(layer, _CONV):
        dims = {1: "L", 2: "H, W", 3: "D, H, W"}[len(layer.kernel_size)]
        return (
            f"{label} expects {layer.in_channels} input channels, i.e. inputs of shape "
            f"(batch, {layer.in_channels}, {dims})"
        )
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)):
        size = layer.normalized_shape if isinstance(layer, nn.LayerNorm) else (layer.num_features,)
        return f"{label} expects {tuple(size)} features per example"
    return None


def _needs_float(model: nn.Module) -> bool:
    found = first_layer(model)
    return found is None or not isinstance(found[1], _INTEGER_INPUT)


def check_labels(lik: Likelihood, source: DataSource) -> None:
    """Refuse data without targets when the likelihood's score needs them."""
    if lik.needs_labels and not source.has_labels:
        score = getattr(lik, "score", None)
        who = f"{type(lik).__name__}(score={score!r})" if score is not None else type(lik).__name__
        raise NFKError(f"{who} needs labels: pass the data as (X, y).")


def check_inputs(op: LogProbOperator, source: DataSource) -> None:
    """Run ``log p̃`` on two examples of the first batch and explain any failure in one sentence.

    Call it inside ``eval_mode`` (a BatchNorm in train mode refuses a batch of one).

    Raises
    ------
    NFKTypeError
        Integer or boolean inputs for a model whose first layer needs floating-point inputs.
    NFKError
        Inputs whose shape the model cannot take (naming the expected shape when the first layer
        tells it), a ``log_prob`` that does not return one number per example, or a model that
        ``torch.func`` cannot differentiate per example.
    """
    batch = slice_batch(source.first(), 0, 2)  # keys of a dict batch kept
    x = batch[0]
    model = op.lik.model
    try:
        with torch.no_grad():
            prepared = op.to_batch(batch)
            _limit_labels(op, prepared, source)
            out = op.log_prob(prepared)
    except NFKError:
        raise
    except _MODEL_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not (x.is_floating_point() or x.is_complex()) and _needs_float(model):
            raise NFKTypeError(
                f"The inputs are {str(x.dtype).removeprefix('torch.')} but the model needs "
                f"floating-point inputs; convert them first, e.g. X.float() (the model said: {reason})."
            ) from exc
        expected = expected_input(model)
        hint = f"; {expected}" if expected else ""
        raise NFKError(
            f"The model cannot take inputs of shape {_shape(x)}{hint} (the model said: {reason})."
        ) from exc
    if not isinstance(out, Tensor) or tuple(out.shape) != (len(x),):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise NFKError(
            f"log_prob must return one number per example, shape ({len(x)},) for {len(x)} examples, "
            f"got {got}."
        )
    _check_differentiable(op, prepared)


def _limit_labels(op: LogProbOperator, prepared: tuple[Tensor, ...], source: DataSource) -> None:
    """For a classifier scored on given labels, read C off its logits and refuse other labels."""
    labels = labels_of(prepared)
    if getattr(op.lik, "score", None) != "label" or labels is None:
        return
    seen: list = []
    handle = op.lik.model.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        probe = with_labels(slice_batch(prepared, 0, 1), torch.zeros_like(labels[:1]))
        op.log_prob(probe)  # label 0 always exists: only the logits' width is wanted here
    finally:
        handle.remove()
    logits = getattr(seen[0], "logits", seen[0]) if seen else None
    if isinstance(logits, Tensor) and logits.dim() >= 1:
        source.limit_labels(int(logits.shape[-1]))


def _check_differentiable(op: LogProbOperator, prepared: tuple[Tensor, ...]) -> None:
    """Per-example gradients and one JVP on the probe batch: torch.func failures get one sentence."""
    try:
        op.per_example_grads(prepared)
        op.jvp(prepared, torch.zeros(1, op.P, dtype=op.dtype, device=op.device))
    except NFKError:
        raise
    except (RuntimeError, NotImplementedError) as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise NFKError(
            f"The model runs but torch.func cannot differentiate it per example; avoid Python "
            f"branches on tensor values, .item() and in-place updates of module state in forward "
            f"(torch said: {reason})."
        ) from exc


def check_finite_rows(Y: Tensor, what: str, first_index: int = 0) -> None:
    """Refuse a non-finite ``(n, k)`` pass output, naming the first bad example."""
    if bool(torch.isfinite(Y.sum())):  # all finite: no boolean temporaries the size of Y
        return
    bad = ~torch.isfinite(Y)
    if bool(bad.any()):
        row = global_index(first_index + int(bad.any(1).nonzero()[0]))
        raise NFKError(
            f"The {what} of example {row} is not finite; check the model and the data "
            f"for overflow (a float64 model, dtype=torch.float64, may help)."
        )


def check_finite_columns(Z: Tensor, op: LogProbOperator, what: str) -> None:
    """Refuse a non-finite ``(k, P)`` pass output, naming the parameter tensor of the first bad entry."""
    if bool(torch.isfinite(Z.sum())):  # all finite: no boolean temporaries the size of Z
        return
    bad = ~torch.isfinite(Z)
    if bool(bad.any()):
        col = int(bad.any(0).nonzero()[0])
        raise NFKError(
            f"The {what} is not finite in parameter {op.space.name_at(col)!r}; check the model and the "
            f"data for overflow (a float64 model, dtype=torch.float64, may help)."
        )


def check_source(op: LogProbOperator, source: DataSource) -> None:
    """:func:`check_labels` then :func:`check_inputs` (call inside ``eval_mode``)."""
    check_labels(op.lik, source)
    check_inputs(op, source)
