"""Context managers that leave the user's modules as they were: eval mode, restored afterwards."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import nn

# One re-entrant lock per model: the eval-mode switch and ``functional_call`` (which swaps the
# module's parameters while it runs) mutate the user's model, so computations on one model from
# several threads take turns instead of racing (a race gave 11-12% wrong results, vmap errors, and
# left the model in eval mode).
_REGISTRY = threading.Lock()
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()


def _reset_after_fork() -> None:
    """A forked child must not inherit a lock held by a thread that does not exist in it."""
    global _REGISTRY, _LOCKS
    _REGISTRY, _LOCKS = threading.Lock(), weakref.WeakKeyDictionary()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def model_lock(module: nn.Module) -> threading.RLock:
    """The lock that serialises nfk_nb's use of ``module`` across threads."""
    with _REGISTRY:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
        return lock


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag on exit (also on error).

    BatchNorm in train mode mixes the examples of a batch and Dropout makes scores random, so all NFK
    computations run in eval mode; users' per-module flags survive. The block holds the models'
    locks (:func:`model_lock`), so threads using the same model take turns.
    """
    with contextlib.ExitStack() as stack:
        for module in sorted(set(modules), key=id):  # one order for all threads: no deadlock
            stack.enter_context(model_lock(module))
        saved = [(m, m.training) for module in modules for m in module.modules()]
        try:
            for module in modules:
                module.eval()
            yield
        finally:
            for m, flag in saved:
                m.training = flag


@contextlib.contextmanager
def restored_modules() -> Iterator[None]:
    """Undo what running modules does to them inside the block (for user samplers).

    A sampler is an opaque callable (``lambda n: G(torch.randn(n, 16))``), so the modules it uses
    are found as they run: a global forward pre-hook records, the first time each module runs, its
    train/eval flag, a copy of its own buffers (BatchNorm running statistics, spectral-norm power
    iteration vectors) and the version counters of its parameters. On exit the buffers and flags
    are put back; a parameter changed in place after its module first ran cannot be put back
    cheaply and is refused (state a sampler changes before a module's first forward is not seen).
    """
    from torch.nn.modules.module import register_module_forward_pre_hook

    from .errors import NFKError

    seen: dict[int, tuple[nn.Module, bool, dict[str, torch.Tensor], dict[str, int]]] = {}

    def record(module: nn.Module, args: object) -> None:
        if id(module) not in seen:
            buffers = {n: b.detach().clone() for n, b in module.named_buffers(recurse=False)
                       if b is not None}
            versions = {n: p._version for n, p in module.named_parameters(recurse=False)}
            seen[id(module)] = (module, module.training, buffers, versions)

    handle = register_module_forward_pre_hook(record)
    ok = False
    try:
        yield
        ok = True
    finally:
        handle.remove()
        changed = []
        with torch.no_grad():
            for module, flag, buffers, versions in seen.values():
                for name, saved in buffers.items():
                    current = getattr(module, name)
                    if isinstance(current, torch.Tensor) and current.shape == saved.shape:
                        current.copy_(saved)
                    else:
                        setattr(module, name, saved)
                module.training = flag
                changed += [f"{type(module).__name__}.{n}"
                            for n, p in module.named_parameters(recurse=False)
                            if p._version != versions.get(n, p._version)]
        if changed and ok:
            raise NFKError(
                f"The sampler changed model parameters in place ({', '.join(changed[:3])}); draw "
                f"samples without updating the model."
            )
