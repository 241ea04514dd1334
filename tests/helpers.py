"""Small helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import torch


def same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two modules' parameters are equal, tensor by tensor."""
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
