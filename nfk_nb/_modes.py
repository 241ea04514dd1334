"""Context managers that make examples independent: eval mode, restored afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag on exit (also on error).

    BatchNorm in train mode mixes the examples of a batch and Dropout makes scores random, so all NFK
    computations run in eval mode; users' per-module flags survive.
    """
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag
