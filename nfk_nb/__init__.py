"""nfk_nb: the Neural Fisher Kernel and its low-rank approximation for PyTorch models.

The math (likelihoods, Fisher information, exact and low-rank kernels) imports no Jupyter package;
``%load_ext nfk_nb`` loads the IPython magics on top.
"""

from __future__ import annotations

from typing import Any

from .elbo import VAE
from .errors import NFKError, NFKMemoryError, NFKTypeError
from .exact import fisher_kernel, fisher_vectors
from .fisher import DEFAULT_DAMPING, FisherEstimate
from .likelihoods import CausalLM, Classifier, EnergyModel, Likelihood, Regressor
from .lowrank import LowRankNFK
from .records import read_records, record, records_table

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "CausalLM",
    "Classifier",
    "DEFAULT_DAMPING",
    "EnergyModel",
    "FisherEstimate",
    "Likelihood",
    "LowRankNFK",
    "NFKError",
    "NFKMemoryError",
    "NFKTypeError",
    "Regressor",
    "fisher_kernel",
    "fisher_vectors",
    "load_ipython_extension",
    "read_records",
    "record",
    "records_table",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nfk_nb``: register the ``%nfk`` magics."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nfk_nb``."""
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)
