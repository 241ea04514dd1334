"""Model families: per-example (unnormalised) log-likelihood ``log p̃(x)`` and its partition term.

Every family is a :class:`Likelihood`. It owns a module, says which of its parameters are θ, computes
``log p̃`` for a batch (a tuple of tensors, the input first) and says where the partition term ``m``
and the Fisher information come from (docs/design.md, "The math"):

* ``reference == "data"``    – the fit data (``m`` = mean score over them when ``centered``);
* ``reference == "sampler"`` – ``sampler(n_samples)`` drawn once, seeded (energy models, JEM).

Batches are tuples ``(x, y, ...)`` or, for dict data (Hugging Face tokenizers), keyed tuples: the
model is then called as ``model(**batch)`` without the ``labels`` key, which gives the targets.
Outputs may be tensors, tuples (first element) or objects with ``.logits`` (see :func:`call_model`).

The functions here are plain batched PyTorch; ``functional.py`` turns them into per-example
gradients, JVPs and VJPs with ``torch.func``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._modes import restored_modules
from .batch import Batch, KeyedBatch, labels_of
from .errors import NFKError, NFKTypeError
from .options import SCORES

ParamSelector = Union[None, str, Sequence[str], Callable[[str, nn.Parameter], bool]]


def select_parameters(model: nn.Module, params: ParamSelector = None) -> list[str]:
    """Names of the parameters that make up θ.

    Parameters
    ----------
    model : nn.Module
    params : None, str, sequence of str or callable
        ``None`` takes every parameter with ``requires_grad``; a string is a glob pattern
        (``"fc2.*"``); a sequence lists names or patterns; a callable ``(name, param) -> bool``.

    Returns
    -------
    list of str
        Names in the module's own order (tied weights appear once).
    """
    named = list(model.named_parameters())
    if params is None:
        chosen = [n for n, p in named if p.requires_grad]
    elif isinstance(params, str):
        chosen = [n for n, _ in named if fnmatch.fnmatchcase(n, params)]
    elif callable(params):
        chosen = [n for n, p in named if params(n, p)]
    elif isinstance(params, Sequence):
        pats = list(params)
        chosen = [n for n, _ in named if any(fnmatch.fnmatchcase(n, q) for q in pats)]
    else:
        raise NFKTypeError(
            f"params must be None, a name pattern, a list of names or a predicate, "
            f"not {type(params).__name__}."
        )
    if not chosen:
        available = ", ".join(n for n, _ in named[:8]) + (", ..." if len(named) > 8 else "")
        raise NFKError(
            f"The parameter selection {params!r} selects no parameter; the model has: {available}."
        )
    return chosen


class Likelihood:
    """A custom log-likelihood: ``log_prob(model, batch) -> (B,)``.

    Parameters
    ----------
    log_prob : callable
        ``log_prob(model, batch)`` returns the per-example ``log p̃`` of shape ``(B,)``. ``batch`` is
        the input tensor when the data are a plain tensor, else the tuple ``(x, y, ...)``.
    model : nn.Module
        The module whose parameters are θ (must be the one ``log_prob`` uses).
    params : selector, optional
        Restrict θ to a subset (see :func:`select_parameters`).
    partition : {"none", "data", "sampler"}
        Where the partition term ``m`` comes from: none (``m = 0``), the mean score over the fit data,
        or the mean over ``sampler(n_samples)``. The Fisher information is estimated on the same set
        (the sampler draws for ``"sampler"``, else the fit data).
    sampler : callable, optional
        ``sampler(n) -> Tensor`` of model samples; implies ``partition="sampler"``.
    n_samples : int
        Number of sampler draws (seeded with the estimator's seed).
    """

    family = "custom"

    def __init__(
        self,
        log_prob: Callable[[nn.Module, Any], Tensor] | None,
        model: nn.Module,
        *,
        params: ParamSelector = None,
        partition: str | None = None,
        sampler: Callable[[int], Any] | None = None,
        n_samples: int = 1024,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise NFKTypeError(f"model must be a torch.nn.Module, not {type(model).__name__}.")
        if partition is None:
            partition = "sampler" if sampler is not None else "none"
        if partition not in ("none", "data", "sampler"):
            raise NFKError(
                f"partition={partition!r} is not one of 'none', 'data', 'sampler'."
            )
        if partition == "sampler" and sampler is None:
            raise NFKError("partition='sampler' needs a sampler: pass sampler=callable(n).")
        if sampler is not None and not callable(sampler):
            raise NFKTypeError("sampler must be a callable taking a number of samples.")
        if int(n_samples) < 1:
            raise NFKError(f"n_samples must be at least 1, got {n_samples}.")
        self._user_log_prob = log_prob
        self.model = model
        self.params = params
        self.partition = partition
        self.sampler = sampler
        self.n_samples = int(n_samples)
        self.param_names = select_parameters(model, params)

    # -- what the engine asks of a family -------------------------------------------------------
    @property
    def centered(self) -> bool:
        """Whether a partition term ``m`` is subtracted from the scores."""
        return self.partition != "none"

    @property
    def reference(self) -> str:
        """``"sampler"`` or ``"data"``: the set that ``m`` and the Fisher information come from."""
        return "sampler" if self.partition == "sampler" else "data"

    @property
    def needs_labels(self) -> bool:
        """Whether batches must carry targets ``(x, y)``."""
        return False

    def prepare(self, batch: Batch) -> Batch:
        """Extra per-example inputs fixed outside autodiff (e.g. a VAE's seeded noise)."""
        return batch

    def log_prob(self, model: nn.Module, batch: Batch) -> Tensor:
        """Per-example ``log p̃`` of a batch tuple, shape ``(B,)``.

        The user's function gets the input tensor for one-tensor data, the dict for dict data,
        else the tuple ``(x, y, ...)``.
        """
        if isinstance(batch, KeyedBatch):
            arg: Any = batch.as_dict()
        else:
            arg = batch[0] if len(batch) == 1 else batch
        return self._user_log_prob(model, arg)

    def draw_reference(self, seed: int) -> Tensor:
        """``sampler(n_samples)`` under a fixed seed, detached.

        The draw leaves the user's models alone: every module that runs during it gets its buffers
        (e.g. BatchNorm running statistics of a generator left in train mode) and train/eval flags
        restored afterwards, and an in-place change of a parameter is refused (see
        :func:`nfk_nb._modes.restored_modules`). The sampler runs in the mode it was written for.
        """
        with torch.random.fork_rng(devices=_cuda_devices()), torch.no_grad(), restored_modules():
            torch.manual_seed(seed)
            out = self.sampler(self.n_samples)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor):
            raise NFKTypeError(f"sampler(n) must return a tensor, not {type(out).__name__}.")
        return out.detach()

    @property
    def log_prob_function(self) -> Callable[..., Tensor] | None:
        """The user's ``log_prob`` of a custom likelihood; ``None`` for the built-in families."""
        return self._user_log_prob

    def describe(self) -> dict[str, Any]:
        """Settings that identify this likelihood (stored with saved estimators)."""
        return {"family": self.family, "partition": self.partition, "n_samples": self.n_samples}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.model).__name__}, params={len(self.param_names)} "
            f"tensors, partition={self.partition!r})"
        )


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def output_tensor(out: Any, who: str = "The model") -> Tensor:
    """The tensor in a model's output: a tensor, ``.logits`` (Hugging Face), or a tuple's first item."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, dict) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise NFKTypeError(
        f"{who} returned {type(out).__name__}; expected a tensor, a tuple starting with one or an "
        f"object with .logits."
    )


def call_model(model: nn.Module, batch: Batch, who: str = "The model") -> Tensor:
    """``model(x)`` for tuple batches, ``model(**inputs)`` for dict batches; the output tensor."""
    if isinstance(batch, KeyedBatch):
        return output_tensor(model(**batch.inputs()), who)
    return output_tensor(model(batch[0]), who)


def _squeeze_scalar_output(out: Tensor, who: str) -> Tensor:
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.dim() != 1:
        raise NFKError(f"{who} must give one number per example, got output shape {tuple(out.shape)}.")
    return out


class Classifier(Likelihood):
    """A classifier ``f(x) ∈ R^C`` read as a model of the data.

    Parameters
    ----------
    net : nn.Module
        Maps a batch of inputs to logits ``(B, C)``.
    score : {"joint", "label", "predicted"}
        ``"joint"``: ``log p̃(x) = logsumexp_y f(x)_y`` (JEM's energy model of x), with partition
        term the mean score over ``sampler`` draws, or over the fit data when no sampler is given
        (an approximation: the data stand in for model samples). ``"label"``:
        ``log softmax(f(x))_y`` with the given label (data as ``(X, y)``). ``"predicted"``: the same
        with ``y = argmax f(x)``. The conditional scores have ``m = 0``.
    sampler : callable, optional
        ``sampler(n)`` returns inputs drawn from the model (joint score only).
    params, n_samples
        As in :class:`Likelihood`.
    """

    family = "classifier"

    def __init__(
        self,
        net: nn.Module,
        score: str = "joint",
        sampler: Callable[[int], Any] | None = None,
        *,
        params: ParamSelector = None,
        n_samples: int = 1024,
    ) -> None:
        if score not in SCORES:
            raise NFKError(f"score={score!r} is not one of 'joint', 'label', 'predicted'.")
        if sampler is not None and score != "joint":
            raise NFKError("A sampler only applies to score='joint'; the conditional scores have m = 0.")
        partition = ("sampler" if sampler is not None else "data") if score == "joint" else "none"
        super().__init__(
            None, net, params=params, partition=partition, sampler=sampler, n_samples=n_samples
        )
        self.score = score

    @property
    def needs_labels(self) -> bool:
        return self.score == "label"

    def log_prob(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = call_model(model, batch, "The classifier")
        if logits.dim() != 2:
            raise NFKError(
                f"The classifier must return logits of shape (batch, classes), got {tuple(logits.shape)}."
            )
        if self.score == "joint":
            return torch.logsumexp(logits, dim=-1)
        logp = F.log_softmax(logits, dim=-1)
        if self.score == "label":
            labels = labels_of(batch)
            if labels is None:
                raise NFKError("score='label' needs labels: pass the data as (X, y).")
            y = labels.long().reshape(-1, 1)
        else:
            y = logits.argmax(dim=-1, keepdim=True)
        return logp.gather(-1, y)[:, 0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "score": self.score}


class EnergyModel(Likelihood):
    """An energy model or GAN discriminator: ``log p̃(x) = D(x)`` (logit = negative energy).

    Parameters
    ----------
    disc : nn.Module
        Maps inputs to one number each, shape ``(B,)`` or ``(B, 1)``.
    sampler : callable
        ``sampler(n)`` returns ``n`` model samples, e.g. ``lambda n: gen(torch.randn(n, 16))``. The
        partition term ``m = mean ∇D(G(z))`` and the Fisher information come from ``n_samples`` draws
        made once with the estimator's seed.
    n_samples : int
        Number of generator samples (default 1024).
    params
        As in :class:`Likelihood`.
    """

    family = "energy"

    def __init__(
        self,
        disc: nn.Module,
        sampler: Callable[[int], Any],
        n_samples: int = 1024,
        *,
        params: ParamSelector = None,
    ) -> None:
        if sampler is None:
            raise NFKError("EnergyModel needs a sampler: sampler(n) returning n model samples.")
        super().__init__(
            None, disc, params=params, partition="sampler", sampler=sampler, n_samples=n_samples
        )

    def log_prob(self, model: nn.Module, batch: Batch) -> Tensor:
        who = "The energy model / discriminator"
        return _squeeze_scalar_output(call_model(model, batch, who), who)


class Regressor(Likelihood):
    """Gaussian regression: ``log p(y|x) = -‖y - f(x)‖² / (2σ²)``; data as ``(X, y)``, ``m = 0``."""

    family = "regression"

    def __init__(self, net: nn.Module, sigma: float = 1.0, *, params: ParamSelector = None) -> None:
        if not float(sigma) > 0:
            raise NFKError(f"sigma must be positive, got {sigma}.")
        super().__init__(None, net, params=params, partition="none")
        self.sigma = float(sigma)

    @property
    def needs_labels(self) -> bool:
        return True

    def log_prob(self, model: nn.Module, batch: Batch) -> Tensor:
        target = labels_of(batch)
        if target is None:
            raise NFKError("Regressor needs targets: pass the data as (X, y).")
        pred = call_model(model, batch, "The regressor")
        y = target.to(pred.dtype).reshape(pred.shape)
        return -((y - pred) ** 2).reshape(len(pred), -1).sum(-1) / (2 * self.sigma**2)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sigma": self.sigma}


class CausalLM(Likelihood):
    """A causal language model scored by its sequence log-likelihood (``m = 0``).

    ``log p(x) = Σ_{t≥1} mask_t · log p(x_t | x_<t)``, with ``p(· | x_<t)`` the softmax of the
    model's next-token logits at position ``t - 1``. The model is normalised, so there is no
    partition term and the Fisher information is estimated on the fit data.

    Parameters
    ----------
    model : nn.Module
        Returns next-token logits ``(B, T, V)``: a tensor, a tuple starting with one, or an object
        with ``.logits`` (Hugging Face causal LMs). Tied input/output embeddings are one parameter
        and count once in θ.
    params
        As in :class:`Likelihood`.

    Notes
    -----
    Data: a tensor of token ids ``(B, T)`` (``model(ids)``), optionally with a padding mask as a
    second tensor ``(ids, mask)`` (used for the sum only); or a dict / ``BatchEncoding`` with
    ``input_ids`` and optionally ``attention_mask`` (``model(**batch)``). A ``labels`` key, as
    Hugging Face builds for causal LMs, gives the targets instead of ``input_ids``; positions whose
    label is ``-100`` are left out, like padding.
    """

    family = "causal-lm"

    def __init__(self, model: nn.Module, params: ParamSelector = None) -> None:
        super().__init__(None, model, params=params, partition="none")

    def log_prob(self, model: nn.Module, batch: Batch) -> Tensor:
        if isinstance(batch, KeyedBatch):
            inputs = batch.inputs()
            if "input_ids" not in inputs:
                raise NFKError("CausalLM needs an 'input_ids' key in dict batches.")
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
            targets = labels_of(batch)
        else:
            ids, mask, targets = batch[0], (batch[1] if len(batch) > 1 else None), None
        logits = call_model(model, batch, "The language model")
        if logits.dim() != 3 or logits.shape[:2] != ids.shape[:2]:
            raise NFKError(
                f"CausalLM needs next-token logits of shape (batch, length, vocabulary) for ids of "
                f"shape {tuple(ids.shape)}, got {tuple(logits.shape)}."
            )
        target = (ids if targets is None else targets)[:, 1:].long()
        keep = target != -100
        if mask is not None:
            keep = keep & mask[:, 1:].bool()
        logp = F.log_softmax(logits[:, :-1], dim=-1)
        token = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (token * keep.to(token.dtype)).sum(-1)
