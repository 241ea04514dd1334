"""One source of truth for the options of a low-rank NFK fit: defaults, choices, help and checks.

The estimator's signature (``LowRankNFK``), the ``NFKMagics`` traits, the ``%nfk`` parser and the
``nfk-nb fit`` command all read :data:`DEFAULTS`, the choice lists and :data:`HELP` from here, and
:func:`make_likelihood` is the one factory from (model, kind, options) to a likelihood.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch

from .errors import NFKError, NFKTypeError
from .guards import check_seed

# Relative damping λ in I + λ·mean(I). Measured (benchmarks/damping_study.py; GAN discriminator on
# digits, rank-16 linear probe, 3 seeds): 0 -> 0.248, 1e-4 -> 0.850, 1e-3 -> 0.903, 1e-2 -> 0.929
# (smallest spread, ±0.001), 1e-1 -> 0.942, identity -> 0.950; the MLP classifier scores 0.968 at
# every setting. 1e-2 keeps Fisher weighting for every coordinate with at least 1% of the mean
# information while no longer letting near-zero-information coordinates dominate.
DEFAULT_DAMPING = 1e-2
# Beyond this relative damping the Fisher diagonal is lost in it (a scaled gradient kernel) and
# Fisher vectors underflow towards zero: fisher="identity" is what such a setting means.
MAX_DAMPING = 1e6

FISHER_KINDS = ("diagonal", "identity", "kfac")
SKETCHES = ("power", "single_pass")
SCORES = ("joint", "label", "predicted")
DTYPES = ("float32", "float64")
# One vocabulary of model kinds: the likelihood families as ``Likelihood.describe()["family"]`` says.
MODEL_KINDS = ("classifier", "energy", "vae", "regression", "causal-lm")
KIND_ALIASES = {"gan": "energy", "regressor": "regression"}  # accepted on input, never stored

# The estimator's defaults (``LowRankNFK.__init__`` reads them; so do the magics and the CLI).
DEFAULTS: dict[str, Any] = {
    "rank": 64,
    "fisher": "diagonal",
    "damping": DEFAULT_DAMPING,
    "power_iters": 2,
    "oversample": 10,
    "batch_size": 256,
    "device": None,
    "dtype": None,
    "seed": 0,
    "whiten": False,
    "progress": True,
    "chunk_size": None,
    "sketch": "power",
}

HELP: dict[str, str] = {
    "rank": "embedding dimension k",
    "fisher": "Fisher information estimate: diagonal, identity (the gradient kernel), or kfac "
              "(Kronecker factors per Linear/Conv layer)",
    "damping": "relative damping of the diagonal Fisher, I + damping * mean(I) (>= 0)",
    "power_iters": "power iterations q of the randomised SVD",
    "oversample": "extra sketch columns p beyond the rank",
    "batch_size": "examples per batch",
    "device": "compute device (default: CUDA when present, else cpu)",
    "dtype": "compute dtype (default: the model's)",
    "seed": "seed of the random sketch and of sampler draws",
    "whiten": "divide the embedding by the singular values",
    "chunk_size": "vmap chunk over sketch columns (bounds memory for large models)",
    "sketch": "power: range finder with power iterations; single_pass: one sweep over the data",
    "kind": "model family of a torch module: classifier, energy (gan), vae, regression, causal-lm "
            "(next-token logits of token ids or tokenizer dicts)",
    "score": "classifier score: joint = logsumexp of the logits, label = log p(y|x), "
             "predicted = log p(argmax|x)",
}


def canonical_kind(kind: str) -> str:
    """The model kind in the one vocabulary of :data:`MODEL_KINDS` (``"gan"`` -> ``"energy"``)."""
    kind = KIND_ALIASES.get(kind, kind)
    if kind not in MODEL_KINDS:
        raise NFKError(f"kind={kind!r} is not one of {', '.join(MODEL_KINDS)} (or gan, regressor).")
    return kind


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_params(params: dict[str, Any]) -> None:
    """Check the estimator settings (all of :data:`DEFAULTS`), before any computation.

    Raises
    ------
    NFKTypeError
        A setting has the wrong type.
    NFKError
        A setting is out of range or not one of its choices.
    """
    p = params
    for name in ("rank", "power_iters", "oversample", "batch_size", "seed"):
        if not _is_int(p[name]):
            raise NFKTypeError(f"{name} must be an integer, got {p[name]!r}.")
    check_seed(p["seed"])
    if isinstance(p["damping"], bool) or not isinstance(p["damping"], numbers.Real):
        raise NFKTypeError(f"damping must be a number, got {p['damping']!r}.")
    check_fisher(p["fisher"], p["damping"])
    if p["rank"] < 1:
        raise NFKError(f"rank must be at least 1, got {p['rank']}.")
    if p["sketch"] not in SKETCHES:
        raise NFKError(f"sketch={p['sketch']!r} is not one of 'power', 'single_pass'.")
    if p["power_iters"] < 0 or p["oversample"] < 0:
        raise NFKError("power_iters and oversample must be non-negative.")
    if p["batch_size"] < 1:
        raise NFKError(f"batch_size must be at least 1, got {p['batch_size']}.")
    if p["chunk_size"] is not None and not (_is_int(p["chunk_size"]) and p["chunk_size"] >= 1):
        raise NFKError(f"chunk_size must be None or a positive integer, got {p['chunk_size']!r}.")
    if p["dtype"] is not None and not (isinstance(p["dtype"], torch.dtype) and p["dtype"].is_floating_point):
        raise NFKTypeError(
            f"dtype must be None or a floating torch dtype such as torch.float64, got {p['dtype']!r}."
        )
    if not isinstance(p["whiten"], bool):  # "no" would be truthy
        raise NFKTypeError(f"whiten must be True or False, got {p['whiten']!r}.")
    if not (isinstance(p["progress"], bool) or callable(p["progress"])):
        raise NFKTypeError(f"progress must be True, False or a tqdm-like factory, got {p['progress']!r}.")
    check_device(p["device"])


def check_fisher(kind: str, damping: float) -> None:
    """Refuse an unknown Fisher estimate or a negative (or NaN) damping."""
    if kind not in FISHER_KINDS:
        raise NFKError(f"fisher={kind!r} is not one of 'diagonal', 'identity', 'kfac'.")
    if not (0.0 <= float(damping) <= MAX_DAMPING):
        raise NFKError(
            f"damping must be a non-negative number at most {MAX_DAMPING:g}, got {damping}; a larger "
            f"one drowns the Fisher information and shrinks every Fisher vector towards zero (use "
            f"fisher='identity' for the plain gradient kernel)."
        )


def check_device(device: Any) -> torch.device:
    """``device`` as a torch device (default: CUDA when present), refusing unusable ones."""
    from .functional import default_device

    try:
        dev = default_device(device)
    except (RuntimeError, TypeError, ValueError):
        raise NFKError(
            f"device={device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NFKError(f"device={device!r} asks for CUDA, which is not available here; use 'cpu'.")
    return dev


def make_likelihood(
    model: Any,
    kind: str = "classifier",
    *,
    score: str | None = None,
    sampler: Callable[[int], Any] | None = None,
    sigma: float = 1.0,
    n_samples: int = 1024,
) -> Any:
    """The likelihood of ``model`` read as ``kind`` (used by the ``%nfk`` magics and ``nfk-nb fit``).

    Parameters
    ----------
    model : nn.Module, (encoder, decoder) tuple, or an nfk_nb likelihood (returned as is)
    kind : {"classifier", "energy", "vae", "regression", "causal-lm"} (or "gan", "regressor")
    score : {"joint", "label", "predicted"}, optional
        Classifier score (default "joint"); refused for other kinds.
    sampler : callable, optional
        ``sampler(n)`` returning model samples (needed by "energy", optional for "classifier").
    sigma : float
        Noise standard deviation of "regression".
    n_samples : int
        Sampler draws for the partition term.

    Raises
    ------
    NFKError
        The model does not fit the kind, or an option does not apply to it.
    """
    from torch import nn

    from . import likelihoods as L

    if isinstance(model, L.Likelihood):
        return model
    kind = canonical_kind(kind)
    if score is not None and kind != "classifier":
        raise NFKError(f"--score applies to classifiers only, not --kind {kind}.")
    if kind == "vae":
        if isinstance(model, (tuple, list)) and len(model) == 2:
            enc, dec = model
        elif hasattr(model, "encoder") and hasattr(model, "decoder"):
            enc, dec = model.encoder, model.decoder
        else:
            raise NFKError(f"--kind vae needs MODEL to be an (encoder, decoder) tuple, not a "
                           f"{type(model).__name__}.")
        if not (isinstance(enc, nn.Module) and isinstance(dec, nn.Module)):
            raise NFKError("The VAE model must hold two torch modules (encoder, decoder).")
        from .elbo import VAE

        return VAE(enc, dec)
    if not isinstance(model, nn.Module):
        raise NFKError(f"MODEL is a {type(model).__name__}, not a torch.nn.Module or an nfk_nb likelihood.")
    if kind == "classifier":
        return L.Classifier(model, score=score or "joint", sampler=sampler, n_samples=n_samples)
    if kind == "energy":
        if sampler is None:
            raise NFKError("--kind gan needs --sampler NAME: a function sampler(n) returning n "
                           "generator samples.")
        return L.EnergyModel(model, sampler, n_samples=n_samples)
    if kind == "causal-lm":
        return L.CausalLM(model)
    return L.Regressor(model, sigma=sigma)
