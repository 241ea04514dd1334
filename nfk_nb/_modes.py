"""Context managers that make examples independent: eval mode, restored afterwards."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator

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
