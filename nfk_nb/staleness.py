"""Notice a model whose weights changed after the fit (trained further in place, a parameter replaced).

A fit's Fisher estimate and components belong to the weights it was computed with. ``transform`` reads
the model's parameters when it is called (so a replaced parameter object is used, not ignored) and
compares a digest of the model's parameters and buffers with the one recorded at fit time: when they
differ it still embeds (the user may mean it, e.g. to watch embeddings drift during training) but warns
that the result no longer matches the fit.
"""

from __future__ import annotations

import warnings

from torch import nn

from .serialization import tensors_checksum


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``model`` (names, dtypes, shapes, values)."""
    named = {f"param:{n}": p for n, p in model.named_parameters(remove_duplicate=False)}
    named.update({f"buffer:{n}": b for n, b in model.named_buffers(remove_duplicate=False)})
    return tensors_checksum(named)


def warn_if_changed(fitted: str | None, model: nn.Module, what: str = "this estimator was fitted with",
                    stacklevel: int = 3, now: str | None = None) -> None:
    """Warn when ``model``'s weights (digest ``now``, computed if not given) differ from the digest
    ``fitted`` (``None``: unknown, no check)."""
    if fitted is not None and fitted != (now or weights_digest(model)):
        warnings.warn(
            f"The model's weights differ from those {what} (same names and shapes, e.g. trained "
            f"further); the embedding uses the current weights with the fit's Fisher estimate and "
            f"components, so it does not match the fit: refit to embed consistently.",
            UserWarning,
            stacklevel=stacklevel,
        )
