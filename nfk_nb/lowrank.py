"""``LowRankNFK``: randomised SVD of the Fisher-vector matrix ``V`` (N×P) without forming it.

Halko, Martinsson & Tropp (2011), Algorithm 4.4 (power iterations with re-orthonormalisation), on the
matrix-free products of ``products.py``. With ``l = rank + oversample`` columns:

    Y = V Ωᵀ                          Ω: l×P Gaussian, from a generator seeded with ``seed``
    repeat power_iters times:  Z = orth(Qᵀ V),  Y = V Zᵀ      (Q = orth(Y))
    B = Qᵀ V  (l×P),   B = Ũ S Wᵀ     (thin SVD; signs fixed so each row of Wᵀ has its
                                       largest-magnitude entry positive, sklearn's svd_flip)
    embedding  e(x) = W_kᵀ v(x)       (k JVPs; for the fit data this is E ≈ U_k S_k, E Eᵀ ≈ K)

``transform(X_fit)`` equals ``fit_transform(X_fit)``: both are the same JVP map. The cost is
``2·power_iters + 2`` passes over the data with ``l`` columns, plus one with ``k`` columns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch import Tensor

from ._modes import eval_mode
from ._progress import make_bar
from .datasource import DataSource, as_source
from .distributed import Reducer, get_reducer
from .errors import NFKError, NFKTypeError
from .fisher import (
    DEFAULT_DAMPING,
    FisherEstimate,
    accumulation_dtype,
    check_fisher,
    estimate_fisher,
    score_moment,
)
from .functional import LogProbOperator, default_device, model_dtype
from .likelihoods import Batch, Likelihood
from .products import FisherVectorProducts
from .serialization import load_state, save_state


def svd_flip_rows(Wt: Tensor) -> Tensor:
    """Signs (±1 per row) that make each row's largest-magnitude entry positive."""
    idx = Wt.abs().argmax(dim=1)
    signs = torch.sign(Wt[torch.arange(len(Wt)), idx])
    return torch.where(signs == 0, torch.ones_like(signs), signs)


def _orth(Y: Tensor) -> Tensor:
    """Orthonormal basis of the columns of ``Y`` (reduced QR)."""
    return torch.linalg.qr(Y, mode="reduced")[0]


class LowRankNFK(TransformerMixin, BaseEstimator):
    """Low-rank Neural Fisher Kernel embeddings (scikit-learn transformer).

    Parameters
    ----------
    lik : Likelihood
        The model family (``Classifier``, ``EnergyModel``, ``VAE``, ``Regressor``, ``Likelihood``).
    rank : int
        Embedding dimension k (at most ``min(N, P)``).
    fisher : {"diagonal", "identity"}
        Fisher information estimate (see ``nfk_nb.fisher``).
    damping : float
        Relative damping of the diagonal Fisher: ``I + damping · mean(I)``.
    power_iters : int
        Power iterations q of the range finder (accuracy grows with q; cost is 2q + 3 passes).
    oversample : int
        Extra sketch columns p beyond ``rank``.
    batch_size : int
        Examples per batch.
    device : str or torch.device, optional
        Compute device; CUDA when present, else CPU.
    dtype : torch.dtype, optional
        Compute dtype (default: the model's). Sums, QR and SVD run in at least float32.
    seed : int
        Seeds the random test matrix and sampler draws: same seed, same embedding (signs included).
    whiten : bool
        Divide embeddings by the singular values.
    progress : bool or callable
        Show a progress bar (text in a terminal, a widget in a notebook), or a tqdm-like factory.
    chunk_size : int, optional
        ``vmap`` chunk over sketch columns, to bound memory for large models.

    Attributes
    ----------
    singular_values_ : Tensor (k,)
        Approximate top singular values of ``V`` (``S²`` are eigenvalues of ``K``).
    explained_variance_ratio_ : Tensor (k,)
        ``S_i² / trace(K)``, with ``trace K = Σ_i ‖v(x_i)‖²`` computed exactly from per-example
        scores on the fit data (from the Fisher pass when the fit data are the reference set, else in
        one more per-example pass).
    components_ : Tensor (k, P)
        ``W_kᵀ``: directions in Fisher-vector space; ``e(x) = components_ @ v(x)``.
    fisher_ : FisherEstimate
        Partition term ``m``, Fisher diagonal and damping.
    embedding_ : Tensor (N, k)
        The embedding of the fit data (this process's rows).
    n_samples_fit_, n_params_, trace_, fit_time_, device_ : fitted metadata.
    """

    def __init__(
        self,
        lik: Likelihood,
        rank: int = 64,
        fisher: str = "diagonal",
        damping: float = DEFAULT_DAMPING,
        power_iters: int = 2,
        oversample: int = 10,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        whiten: bool = False,
        progress: bool | Callable[..., Any] = True,
        chunk_size: int | None = None,
    ) -> None:
        self.lik = lik
        self.rank = rank
        self.fisher = fisher
        self.damping = damping
        self.power_iters = power_iters
        self.oversample = oversample
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.whiten = whiten
        self.progress = progress
        self.chunk_size = chunk_size

    # -- validation -----------------------------------------------------------------------------
    def _check_params(self) -> None:
        if not isinstance(self.lik, Likelihood):
            raise NFKTypeError(
                f"lik must be an nfk_nb likelihood (Classifier, EnergyModel, VAE, Regressor or "
                f"Likelihood), not {type(self.lik).__name__}."
            )
        check_fisher(self.fisher, self.damping)
        for name in ("rank", "power_iters", "oversample", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise NFKTypeError(f"{name} must be an integer, got {value!r}.")
        if self.rank < 1:
            raise NFKError(f"rank must be at least 1, got {self.rank}.")
        if self.power_iters < 0 or self.oversample < 0:
            raise NFKError("power_iters and oversample must be non-negative.")
        if self.batch_size < 1:
            raise NFKError(f"batch_size must be at least 1, got {self.batch_size}.")

    def _operator(self) -> LogProbOperator:
        op = getattr(self, "_op", None)
        if op is None:
            device = default_device(self.device)
            dtype = self.dtype or model_dtype(self.lik.model)
            op = LogProbOperator(self.lik, device, dtype, self.chunk_size)
            self._op = op
        return op

    def _source(self, X: Any, y: Any = None) -> DataSource:
        source = as_source(X, self.batch_size, y)
        if self.lik.needs_labels and not source.has_labels:
            raise NFKError(
                f"{type(self.lik).__name__} with this score needs labels: pass the data as (X, y)."
            )
        return source

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> LowRankNFK:
        """Fit on data ``X`` (tensor, ``(X, y)``, Dataset or DataLoader); returns ``self``."""
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Tensor:
        """Fit and return the embedding of ``X``, shape (N, k), on the CPU."""
        self._check_params()
        self._op = None
        start = time.perf_counter()
        source = self._source(X, y)
        op = self._operator()
        reducer = get_reducer()
        n_total = reducer.count(source.n)
        P = op.P
        if self.rank > min(n_total, P):
            raise NFKError(
                f"rank={self.rank} is larger than min(N, P) = min({n_total}, {P}); use rank <= "
                f"{min(n_total, P)}."
            )
        l = min(self.rank + self.oversample, n_total, P)
        acc = accumulation_dtype(op.dtype)
        with eval_mode(self.lik.model):
            reference, n_ref = self._reference_batches(source)
            fisher_passes = 2 if self.lik.centered else 1
            trace_pass = self.lik.reference == "sampler"
            # progress counts examples: Fisher passes, the trace pass, 2q + 2 sketch passes, embedding
            total = n_ref * fisher_passes + source.n * (trace_pass + 2 * self.power_iters + 3)
            bar = make_bar(total, "NFK fit", self.progress)
            try:
                tick = bar.update
                fisher, sq = estimate_fisher(
                    op,
                    reference,
                    centered=self.lik.centered,
                    kind=self.fisher,
                    damping=self.damping,
                    reducer=reducer,
                    tick=tick,
                )
                if trace_pass:
                    sq, _ = score_moment(op, iter(source), fisher.mean, 2, reducer, tick)
                trace = float((sq * fisher.scale.to(sq.dtype) ** 2).sum())
                products = FisherVectorProducts(op, lambda: iter(source), fisher, reducer, tick)
                Wt, S = self._sketch(products, reducer, l, P, acc)
                embedding = products.matvec(Wt)
            finally:
                bar.close()
        self.fisher_ = fisher
        self.components_ = Wt.cpu()
        self.singular_values_ = S.cpu()
        self.trace_ = trace
        self.explained_variance_ratio_ = (S**2 / trace).cpu() if trace > 0 else torch.zeros_like(S)
        self.n_samples_fit_ = n_total
        self.n_params_ = P
        self.device_ = str(op.device)
        out = embedding / S if self.whiten else embedding
        self.embedding_ = out.cpu()
        self.fit_time_ = time.perf_counter() - start
        return self.embedding_

    def _reference_batches(self, source: DataSource) -> tuple[Callable[[], Iterable[Batch]], int]:
        """The reference set of ``m`` and the Fisher information, and its size."""
        if self.lik.reference == "sampler":
            source = DataSource(self.lik.draw_reference(self.seed), self.batch_size)
        return (lambda: iter(source)), source.n

    def _sketch(
        self, products: FisherVectorProducts, reducer: Reducer, l: int, P: int, acc: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """Range finder with power iterations, then the thin SVD of ``B = Qᵀ V``."""
        gen = torch.Generator().manual_seed(int(self.seed))
        omega = torch.randn(l, P, generator=gen, dtype=torch.float64).to(acc)

        def orth_rows(Y: Tensor) -> Tensor:
            full = reducer.gather_rows(Y)
            return reducer.local_rows(_orth(full), len(Y))

        Y = products.matvec(omega)
        del omega
        for _ in range(self.power_iters):
            Z = products.rmatvec(orth_rows(Y))  # (l, P)
            Z = _orth(Z.T).T
            Y = products.matvec(Z)
        B = products.rmatvec(orth_rows(Y))  # (l, P) = Qᵀ V
        _, S, Wt = torch.linalg.svd(B, full_matrices=False)
        k = self.rank
        Wt, S = Wt[:k], S[:k]
        Wt = Wt * svd_flip_rows(Wt)[:, None]
        return Wt, S

    # -- using a fit ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NFKError("This LowRankNFK is not fitted yet: call fit(X) first.")

    def transform(self, X: Any, y: Any = None) -> Tensor:
        """Embed new data: ``e(x) = W_kᵀ v(x)`` (k JVPs per batch); returns (N, k) on the CPU."""
        self._check_fitted()
        source = self._source(X, y)
        op = self._operator()
        fisher = self.fisher_
        with eval_mode(self.lik.model):
            bar = make_bar(source.n, "NFK transform", self.progress)
            try:
                products = FisherVectorProducts(op, lambda: iter(source), fisher, None, bar.update)
                emb = products.matvec(self.components_)
            finally:
                bar.close()
        if self.whiten:
            emb = emb / self.singular_values_.to(emb)
        return emb.cpu()

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted state (safetensors + JSON metadata, atomic; never pickled)."""
        self._check_fitted()
        from . import __version__

        tensors = {
            "components": self.components_,
            "singular_values": self.singular_values_,
            "explained_variance_ratio": self.explained_variance_ratio_,
            "fisher_mean": self.fisher_.mean,
            "fisher_diag": self.fisher_.diag,
            "embedding": self.embedding_,
        }
        params = {k: v for k, v in self.get_params().items() if k not in ("lik", "progress")}
        params["dtype"] = None if self.dtype is None else str(self.dtype).removeprefix("torch.")
        params["device"] = None if self.device is None else str(self.device)
        meta = {
            "package_version": __version__,
            "params": params,
            "likelihood": self.lik.describe(),
            "fingerprint": self._operator().space.fingerprint(),
            "fisher": {"kind": self.fisher_.kind, "damping": self.fisher_.damping,
                       "n_reference": self.fisher_.n_reference},
            "fitted": {"n_samples_fit": self.n_samples_fit_, "n_params": self.n_params_,
                       "trace": self.trace_, "fit_time": self.fit_time_, "device": self.device_},
        }
        save_state(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, lik: Likelihood, device: Any = None) -> LowRankNFK:
        """Load a saved estimator for ``lik``; refuses files made for another model.

        Tensors load on the CPU and computations run on ``device`` (default: CUDA when present),
        so a fit saved on a GPU loads on a CPU-only machine.
        """
        tensors, meta = load_state(path)
        params = dict(meta["params"])
        params["dtype"] = None if params.get("dtype") is None else getattr(torch, params["dtype"])
        params["device"] = device
        est = cls(lik, **params)
        fingerprint = est._operator().space.fingerprint()
        if fingerprint != meta["fingerprint"]:
            raise NFKError(
                f"{str(path)!r} was saved for a model with other parameters (names or shapes "
                f"differ); load it with the model it was fitted on."
            )
        fisher = meta["fisher"]
        est.fisher_ = FisherEstimate(tensors["fisher_mean"], tensors["fisher_diag"],
                                     int(fisher["n_reference"]), fisher["kind"],
                                     float(fisher["damping"]))
        est.components_ = tensors["components"]
        est.singular_values_ = tensors["singular_values"]
        est.explained_variance_ratio_ = tensors["explained_variance_ratio"]
        est.embedding_ = tensors["embedding"]
        fitted = meta["fitted"]
        est.n_samples_fit_, est.n_params_ = fitted["n_samples_fit"], fitted["n_params"]
        est.trace_, est.fit_time_, est.device_ = fitted["trace"], fitted["fit_time"], fitted["device"]
        return est

    def _more_tags(self) -> dict[str, Any]:
        return {"non_deterministic": False, "requires_y": False}
