"""Checks that turn a plausible but wrong fit into one clear sentence before or right after the work.

* :func:`check_seed`: seeds that ``torch.Generator.manual_seed`` takes (``|seed| < 2**63``).
* :func:`check_fit_size`: a centred score estimated on the fit data needs at least two examples (one
  example's centred score is exactly zero, and so would be its embedding).
* :func:`check_trace`: ``trace K`` must be finite and positive: all-zero Fisher vectors have nothing to
  embed, and the explained-variance ratios would be ``0/0``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import NFKError, NFKTypeError

SEED_LIMIT = 2**63


def check_seed(seed: Any) -> None:
    """Refuse a seed that is not an integer with ``|seed| < 2**63``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise NFKTypeError(f"seed must be an integer, got {seed!r}.")
    if not -SEED_LIMIT < int(seed) < SEED_LIMIT:
        raise NFKError(f"seed must be an integer with |seed| < 2**63, got {seed}.")


def check_fit_size(lik: Any, n_total: int) -> None:
    """Refuse fitting a centred score on fewer than two examples of the data it is centred on."""
    if getattr(lik, "centered", False) and getattr(lik, "reference", None) == "data" and n_total < 2:
        raise NFKError(
            f"The score is centred on the fit data (m = mean score), so {n_total} example has a "
            f"Fisher vector of exactly zero; fit on at least 2 examples, or give the likelihood a "
            f"sampler."
        )


def check_trace(trace: float, n_total: int) -> None:
    """Refuse a fit whose Fisher vectors are all zero or whose trace is not finite."""
    if not math.isfinite(trace):
        raise NFKError(
            f"trace K = sum of squared Fisher vector norms over the {n_total} examples is {trace}; "
            f"check the model and the data for overflow (dtype=torch.float64 may help)."
        )
    if trace <= 0.0:
        raise NFKError(
            f"The Fisher vectors of all {n_total} examples are zero (trace K = 0), so there is "
            f"nothing to embed: the model's log-likelihood does not depend on the selected "
            f"parameters for these data."
        )
