"""When ``vmap`` over examples fails: find the module torch failed in, and say so once.

Some forwards cannot be ``vmap``-ped over examples although each example differentiates fine:
PyTorch's GRU / RNN / GRUCell (in-place updates of the hidden state), Hugging Face's SDPA mask
helpers with a 2-D attention mask (Python branches on mask values), data-dependent branches in
user code. :class:`~nfk_nb.functional.LogProbOperator` then computes per-example gradients one
example at a time; this module names the culprit for the one warning, or for the error when the
single-example path fails too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from .errors import NFKError


class VmapFallbackWarning(UserWarning):
    """Per-example gradients fall back from ``vmap`` to a loop over examples (slower, exact)."""


def torch_reason(exc: BaseException) -> str:
    """The first line of torch's message (the op or module it names)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def locate_failure(model: nn.Module, run: Callable[[], Any]) -> str | None:
    """Run ``run`` with hooks that track the module stack; the innermost module active when it fails.

    Returns ``"'name' (Type)"`` or None when ``run`` succeeds or fails outside every module.
    """
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[nn.Module] = []
    culprit: list[nn.Module] = []

    def enter(module: nn.Module, args: Any) -> None:
        stack.append(module)

    def leave(module: nn.Module, args: Any, out: Any) -> None:
        if stack:
            stack.pop()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        run()
    except Exception:  # the failure being diagnosed: only its location is wanted
        culprit = stack[-1:]
    finally:
        for h in handles:
            h.remove()
    if not culprit:
        return None
    module = culprit[0]
    name = names.get(id(module), "")
    return f"{name or '<root>'!r} ({type(module).__name__})"


def warn_fallback(where: str | None, exc: BaseException, batch_size: int) -> None:
    """The one warning when per-example gradients switch to the single-example loop."""
    at = f"in module {where} " if where else ""
    warnings.warn(
        f"nfk_nb: torch.func cannot vmap this model over examples {at}(torch said: "
        f"{torch_reason(exc)}); per-example gradients now run one example at a time, exact but "
        f"about {batch_size}x the Python overhead of one vectorised pass per batch of {batch_size}.",
        VmapFallbackWarning,
        stacklevel=4,
    )


def cannot_differentiate(where: str | None, exc: BaseException) -> NFKError:
    """The error when even single-example gradients fail, naming the module/op and the options."""
    at = f", in module {where}" if where else ""
    return NFKError(
        f"The model runs but torch.func cannot differentiate it per example, even one example at a "
        f"time{at} (torch said: {torch_reason(exc)}); exclude that module's parameters with "
        f"params=, or use a custom nfk.Likelihood whose log_prob avoids what torch names (NumPy "
        f"calls on tensors, .item() on parameters and in-place updates of module state break "
        f"torch.func)."
    )
