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

import json
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch import Tensor

from ._modes import eval_mode
from ._progress import make_bar
from .checkpoint import FitCheckpoint, tensors_digest
from .consistency import check_cancellation, check_consistency, fit_with_precision_guard
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
from .functional import LogProbOperator, compute_dtype, default_device
from .guards import check_fit_size, check_seed, check_trace
from .kfac import estimate_factors, factor_layout, factor_tensors, factors_from, fisher_trace
from .layerwise import make_operator
from .likelihoods import Batch, Likelihood
from .products import FisherVectorProducts, gaussian_test_matrix
from .serialization import load_state, save_state
from .validation import check_finite_columns, check_finite_rows, check_inputs, check_labels


def svd_flip_rows(Wt: Tensor) -> Tensor:
    """Signs (±1 per row) that make each row's largest-magnitude entry positive."""
    idx = Wt.abs().argmax(dim=1)
    signs = torch.sign(Wt[torch.arange(len(Wt)), idx])
    return torch.where(signs == 0, torch.ones_like(signs), signs)


def _jsonable(value: Any) -> Any:
    """A JSON-friendly stand-in for a setting (dtypes and other objects become strings)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return repr(value)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _lik_text(described: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in described.items())


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
    fisher : {"diagonal", "identity", "kfac"}
        Fisher information estimate (see ``nfk_nb.fisher``; ``"kfac"``: Kronecker factors per
        ``nn.Linear`` / ``nn.Conv`` layer, see ``nfk_nb.kfac``).
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
    sketch : {"power", "single_pass"}
        ``"power"``: range finder with ``power_iters`` power iterations (2q + 2 passes).
        ``"single_pass"``: Tropp et al. (2017) one-pass sketch, range and co-range sketches in one
        sweep over the data (``power_iters`` is ignored); less accurate, for data that are costly
        to read again. Both then embed with one more pass.

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
        sketch: str = "power",
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
        self.sketch = sketch

    # -- validation -----------------------------------------------------------------------------
    def _check_params(self) -> None:
        if not isinstance(self.lik, Likelihood):
            raise NFKTypeError(
                f"lik must be an nfk_nb likelihood (Classifier, EnergyModel, VAE, Regressor or "
                f"Likelihood), not {type(self.lik).__name__}."
            )
        if isinstance(self.damping, bool) or not isinstance(self.damping, numbers.Real):
            raise NFKTypeError(f"damping must be a number, got {self.damping!r}.")
        check_fisher(self.fisher, self.damping)
        for name in ("rank", "power_iters", "oversample", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise NFKTypeError(f"{name} must be an integer, got {value!r}.")
        check_seed(self.seed)
        if self.rank < 1:
            raise NFKError(f"rank must be at least 1, got {self.rank}.")
        if self.sketch not in ("power", "single_pass"):
            raise NFKError(f"sketch={self.sketch!r} is not one of 'power', 'single_pass'.")
        if self.power_iters < 0 or self.oversample < 0:
            raise NFKError("power_iters and oversample must be non-negative.")
        if self.batch_size < 1:
            raise NFKError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.chunk_size is not None and (
            isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, numbers.Integral)
            or self.chunk_size < 1
        ):
            raise NFKError(f"chunk_size must be None or a positive integer, got {self.chunk_size!r}.")
        if self.dtype is not None and not (
            isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point
        ):
            raise NFKTypeError(
                f"dtype must be None or a floating torch dtype such as torch.float64, got {self.dtype!r}."
            )
        if not (isinstance(self.progress, bool) or callable(self.progress)):
            raise NFKTypeError(f"progress must be True, False or a tqdm-like factory, got {self.progress!r}.")
        try:
            device = default_device(self.device)
        except (RuntimeError, TypeError, ValueError):
            raise NFKError(
                f"device={self.device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'."
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise NFKError(f"device={self.device!r} asks for CUDA, which is not available here; use 'cpu'.")

    def _operator(self) -> LogProbOperator:
        op = getattr(self, "_op", None)
        if op is None:
            device = default_device(self.device)
            dtype = getattr(self, "_dtype_override", None) or self.dtype or compute_dtype(self.lik.model)
            op = make_operator(self.lik, device, dtype, self.chunk_size)
            self._op = op
        return op

    def _source(self, X: Any, y: Any = None) -> DataSource:
        source = as_source(X, self.batch_size, y)
        check_labels(self.lik, source)
        return source

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, checkpoint: str | os.PathLike | None = None) -> LowRankNFK:
        """Fit on data ``X`` (tensor, ``(X, y)``, Dataset or DataLoader); returns ``self``.

        ``checkpoint`` makes the fit resumable after a crash (see :meth:`fit_transform`).
        """
        self.fit_transform(X, y, checkpoint=checkpoint)
        return self

    def fit_transform(
        self, X: Any, y: Any = None, checkpoint: str | os.PathLike | None = None
    ) -> Tensor:
        """Fit and return the embedding of ``X``, shape (N, k), on the CPU.

        Parameters
        ----------
        X : Tensor, ndarray, (X, y) tuple, Dataset or DataLoader
            The data (a DataLoader must not shuffle).
        y : Tensor, optional
            Targets for a plain tensor ``X`` when the score needs labels.
        checkpoint : path-like, optional
            File where the fit's state is saved, atomically, after each pass over the data (the
            Fisher estimate, the trace, the current sketch matrix; safetensors + JSON, never pickle).
            Running the same call again after a crash, even SIGKILL, resumes after the last finished
            pass and gives the same embedding as an uninterrupted fit (bitwise on the CPU). A
            checkpoint made for another model, data size or setting is refused with a message that
            names the difference. The file is deleted when the fit succeeds.

        Warns
        -----
        PrecisionWarning
            The fit failed its numerical self-check (see ``nfk_nb.consistency``) and was recomputed
            in float64 (without checkpointing); an inconsistent fit is never returned.
        """
        self._check_params()
        self._dtype_override, self._op = None, None
        return fit_with_precision_guard(
            lambda dtype: self._fit_transform(X, y, checkpoint, dtype), self._operator().dtype
        )

    def _fit_transform(self, X: Any, y: Any, checkpoint: Any, dtype: torch.dtype | None) -> Tensor:
        if dtype is not None and checkpoint is not None:  # the refit: the saved passes are not reusable
            checkpoint = os.fspath(checkpoint)
            if os.path.exists(checkpoint):
                os.remove(checkpoint)
            checkpoint = None
        self._dtype_override = dtype
        self._op = None
        start = time.perf_counter()
        source = self._source(X, y)
        op = self._operator()
        reducer = get_reducer()
        n_total = reducer.count(source.n)
        P = op.P
        check_fit_size(self.lik, n_total)
        if self.rank > min(n_total, P):
            raise NFKError(
                f"rank={self.rank} is larger than min(N, P) = min({n_total}, {P}); use rank <= "
                f"{min(n_total, P)}."
            )
        l = min(self.rank + self.oversample, n_total, P)
        acc = accumulation_dtype(op.dtype)
        with eval_mode(self.lik.model):
            check_inputs(op, source)
            ckpt = self._checkpoint(checkpoint, op, source, n_total, reducer)
            state = ckpt.load() if ckpt is not None else None
            if ckpt is not None and reducer.world_size > 1:
                from .distributed import same_on_all_ranks

                # a kill can stop ranks one stage apart; resuming apart would pair the wrong collectives
                stage = -1 if state is None else (1 + (state[1].get("trace") is not None)
                                                  + int(state[1].get("sketch_passes", 0)))
                if not same_on_all_ranks(reducer, stage):
                    state = None  # every rank starts over, together
            reference, n_ref = self._reference_batches(source)
            fisher_passes = 2 if self.lik.centered else 1
            trace_pass = self.lik.reference == "sampler"
            # progress counts examples: Fisher passes, the trace pass, 2q + 2 sketch passes, embedding
            total = n_ref * fisher_passes + source.n * (trace_pass + 2 * self.power_iters + 3)
            bar = make_bar(total, "NFK fit", self.progress)
            try:
                tick = bar.update
                if state is not None:
                    tick(n_ref * fisher_passes)  # resumed: finished passes count as done
                fisher, trace = self._fisher_and_trace(op, source, reference, reducer, tick, ckpt, state)
                check_trace(trace, n_total)
                check_cancellation(fisher, op.dtype)
                products = FisherVectorProducts(op, lambda: iter(source), fisher, reducer, tick)
                resume, save = None, None
                if ckpt is not None:
                    tensors, info = state if state is not None else ({}, {})
                    if "sketch" in tensors:
                        resume = (int(info["sketch_passes"]), tensors["sketch"].to(op.device))
                        tick(source.n * resume[0])

                    def save(passes: int, M: Tensor) -> None:
                        ckpt.save({"fisher_mean": fisher.mean, "fisher_diag": fisher.diag, "sketch": M},
                                  {"n_reference": fisher.n_reference, "trace": trace,
                                   "sketch_passes": passes})

                if self.sketch == "single_pass":
                    Wt, S = self._sketch_single_pass(products, reducer, l, P, acc)
                else:
                    Wt, S = self._sketch(products, reducer, l, P, acc, resume=resume, save=save)
                embedding = products.matvec(Wt)
                check_finite_rows(embedding, "embedding")
                check_consistency(products, source, Wt, S, embedding, trace, reducer)
            finally:
                bar.close()
                getattr(op, "clear_cache", lambda: None)()
        if ckpt is not None:
            ckpt.remove()
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

    def _checkpoint(
        self, path: Any, op: LogProbOperator, source: DataSource, n_total: int, reducer: Reducer
    ) -> FitCheckpoint | None:
        """The fit's checkpoint, identified by everything that changes its numbers."""
        if path is None:
            return None
        skip = ("lik", "progress", "device", "whiten")  # these do not change the saved state
        params = {k: _jsonable(v) for k, v in self.get_params().items() if k not in skip}
        identity: dict[str, Any] = {
            "params": params,
            "likelihood": self.lik.describe(),
            "log_prob": _qualname(getattr(self.lik, "_user_log_prob", None) or type(self.lik)),
            "model": op.space.fingerprint(),
            "weights": tensors_digest({**op.theta, **op.frozen}),
            "compute_dtype": str(op.dtype),
            "n_samples": n_total,
            "data": tensors_digest(list(source.first())),
        }
        world = int(getattr(reducer, "world_size", 1))
        if world > 1:
            identity["n_local"] = source.n
            identity["world"] = [int(reducer.rank), world]
        identity = json.loads(json.dumps(identity))  # tuples -> lists, as they come back from JSON
        return FitCheckpoint(path, identity, int(getattr(reducer, "rank", 0)), world)

    def _fisher_and_trace(
        self,
        op: LogProbOperator,
        source: DataSource,
        reference: Callable[[], Iterable[Batch]],
        reducer: Reducer,
        tick: Callable[[int], None],
        ckpt: FitCheckpoint | None,
        state: tuple[dict[str, Tensor], dict[str, Any]] | None,
    ) -> tuple[FisherEstimate, float]:
        """The Fisher estimate and ``trace K``: from the checkpoint when it holds them, else computed."""
        tensors, info = state if state is not None else ({}, {})
        trace = info.get("trace")
        if "fisher_mean" in tensors:
            fisher = FisherEstimate(tensors["fisher_mean"].to(op.device),
                                    tensors["fisher_diag"].to(op.device), int(info["n_reference"]),
                                    self.fisher, float(self.damping))
            if self.fisher == "kfac":  # the factors are not checkpointed: recomputed, deterministic
                fisher.kron = estimate_factors(op, reference, self.damping, reducer)
        else:
            fisher, sq = estimate_fisher(op, reference, centered=self.lik.centered, kind=self.fisher,
                                         damping=self.damping, reducer=reducer, tick=tick)
            if self.lik.reference != "sampler":  # the fit data are the reference set
                trace = fisher_trace(op, fisher, sq, reference(), reducer)
            self._save_stage(ckpt, fisher, trace)
        if trace is None:  # one more pass: ‖v(x)‖² summed over the fit data
            sq, _ = score_moment(op, iter(source), fisher.mean, 2, reducer, tick)
            trace = fisher_trace(op, fisher, sq, iter(source), reducer)
            self._save_stage(ckpt, fisher, trace)
        elif self.lik.reference == "sampler" and state is not None and "fisher_mean" in tensors:
            tick(source.n)  # the trace pass was finished before the crash
        return fisher, trace

    @staticmethod
    def _save_stage(ckpt: FitCheckpoint | None, fisher: FisherEstimate, trace: float | None) -> None:
        if ckpt is not None:
            ckpt.save({"fisher_mean": fisher.mean, "fisher_diag": fisher.diag},
                      {"n_reference": fisher.n_reference, "trace": trace, "sketch_passes": 0})

    def _reference_batches(self, source: DataSource) -> tuple[Callable[[], Iterable[Batch]], int]:
        """The reference set of ``m`` and the Fisher information, and this process's size of it.

        Sampler draws are made in full (seeded) on every process and each keeps a disjoint slice,
        so the sums over processes are those of a single process.
        """
        if self.lik.reference == "sampler":
            from .distributed import shard_bounds

            draws = self.lik.draw_reference(self.seed)
            reducer = get_reducer()
            lo, hi = shard_bounds(len(draws), reducer.world_size, reducer.rank)
            if hi == lo:  # more processes than draws: this one only joins the sums
                return (lambda: iter(())), 0
            source = DataSource(draws[lo:hi], self.batch_size)
        return (lambda: iter(source)), source.n

    def _sketch(
        self,
        products: FisherVectorProducts,
        reducer: Reducer,
        l: int,
        P: int,
        acc: torch.dtype,
        *,
        resume: tuple[int, Tensor] | None = None,
        save: Callable[[int, Tensor], None] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Range finder with power iterations, then the thin SVD of ``B = Qᵀ V``.

        The 2q + 2 passes alternate ``Y = V Uᵀ`` (even) and ``Z = Aᵀ V`` (odd). ``resume`` is
        ``(finished passes, latest matrix)`` from a checkpoint; ``save(finished, matrix)`` is called
        after each pass. Each pass's output is checked for non-finite values (cheap next to the pass).
        """

        def orth_rows(Y: Tensor) -> Tensor:
            full = reducer.gather_rows(Y)
            return reducer.local_rows(_orth(full), len(Y))

        n_passes = 2 * self.power_iters + 2
        done, M = resume if resume is not None else (0, None)
        for j in range(done, n_passes):
            if j == 0:
                omega = gaussian_test_matrix(l, P, self.seed, acc, products.op.device)
                M = products.matvec(omega)  # Y = V Ωᵀ  (n, l)
                del omega
            elif j % 2 == 1:
                Z = products.rmatvec(orth_rows(M))  # (l, P); the last one is B = Qᵀ V
                check_finite_columns(Z, products.op, "sketch product Qᵀ V")
                M = Z if j == n_passes - 1 else _orth(Z.T).T
            else:
                M = products.matvec(M)  # Y = V Zᵀ
            if j % 2 == 0:
                check_finite_rows(M, "sketch product V Uᵀ")
            if save is not None:
                save(j + 1, M)
        _, S, Wt = torch.linalg.svd(M, full_matrices=False)
        k = self.rank
        Wt, S = Wt[:k], S[:k]
        Wt = (Wt * svd_flip_rows(Wt)[:, None]).contiguous()  # row-major, as it is saved and loaded
        return Wt, S

    def _sketch_single_pass(
        self, products: FisherVectorProducts, reducer: Reducer, l: int, P: int, acc: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """Tropp, Yurtsever, Udell & Cevher (2017): one sweep for ``Y = V Ωᵀ`` and ``W = Ψ V``.

        With ``Q = orth(Y)`` (N×l) and ``m = 2l + 1`` co-range rows, ``X = (Ψ Q)⁺ W`` (l×P)
        estimates ``Qᵀ V`` without a second pass; its thin SVD gives ``S`` and ``Wᵀ``.
        """
        omega = gaussian_test_matrix(l, P, self.seed, acc, products.op.device)
        m = 2 * l + 1  # co-range size, Tropp et al.'s recommendation
        # Ψ rows are drawn per example; each process draws its own independent rows
        psi_gen = torch.Generator().manual_seed(int(self.seed) + 1 + 7919 * reducer.rank)

        def draw(b: int) -> Tensor:
            return torch.randn(b, m, generator=psi_gen, dtype=torch.float64)

        Y, W, Psi = products.sweep(omega, draw)
        del omega
        check_finite_rows(Y, "sketch product V Uᵀ")
        check_finite_columns(W, products.op, "sketch product Ψ V")
        products.tick(len(Y) * 2 * self.power_iters)  # the progress total counts 2q + 2 passes
        Q = reducer.local_rows(_orth(reducer.gather_rows(Y)), len(Y))
        PsiQ = reducer.sum(Psi.to(Q).T @ Q)  # (m, l)
        Q2, R2 = torch.linalg.qr(PsiQ)  # least squares through the small QR: W stays where it is
        X = torch.linalg.solve_triangular(R2, Q2.T @ W, upper=True)
        _, S, Wt = torch.linalg.svd(X, full_matrices=False)
        k = self.rank
        Wt, S = Wt[:k], S[:k]
        Wt = (Wt * svd_flip_rows(Wt)[:, None]).contiguous()
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
            check_inputs(op, source)
            bar = make_bar(source.n, "NFK transform", self.progress)
            try:
                products = FisherVectorProducts(op, lambda: iter(source), fisher, None, bar.update)
                emb = products.matvec(self.components_)
                check_finite_rows(emb, "embedding")
            finally:
                bar.close()
                getattr(op, "clear_cache", lambda: None)()
        if self.whiten:
            emb = emb / self.singular_values_.to(emb)
        return emb.cpu()

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted state to ``path`` (safetensors + JSON metadata; atomic; never pickled).

        The file holds the tensors (components, singular values, Fisher estimate, embedding of the
        fit data) and, as JSON, the format version, the package version, the settings, the
        likelihood's description, a fingerprint of θ (names and shapes), a digest of the weights
        and SHA-256 checksums of the tensors and of the metadata.
        """
        self._check_fitted()
        from . import __version__

        tensors = {
            "components": self.components_,
            "singular_values": self.singular_values_,
            "explained_variance_ratio": self.explained_variance_ratio_,
            "fisher_mean": self.fisher_.mean,
            "fisher_diag": self.fisher_.diag,
            "embedding": self.embedding_,
            **factor_tensors(self.fisher_.kron),
        }
        params = {k: _jsonable(v) for k, v in self.get_params().items() if k not in ("lik", "progress")}
        params["device"] = None if self.device is None else str(self.device)
        op = self._operator()
        meta = {
            "package_version": __version__,
            "params": params,
            "likelihood": self.lik.describe(),
            "fingerprint": op.space.fingerprint(),
            "weights": tensors_digest({**op.theta, **op.frozen}),
            "fisher": {"kind": self.fisher_.kind, "damping": self.fisher_.damping,
                       "n_reference": self.fisher_.n_reference,
                       "kfac_layers": factor_layout(self.fisher_.kron)},
            "fitted": {"n_samples_fit": self.n_samples_fit_, "n_params": self.n_params_,
                       "trace": self.trace_, "fit_time": self.fit_time_, "device": self.device_},
        }
        save_state(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, lik: Likelihood, device: Any = None) -> LowRankNFK:
        """Load a saved estimator for ``lik``; refuses files made for another model.

        Tensors load on the CPU and computations run on ``device`` (default: CUDA when present),
        so a fit saved on a GPU loads on a CPU-only machine. Nothing is unpickled.

        Raises
        ------
        NFKError
            The file is missing, truncated or altered (checksums), or was saved for a model whose
            parameter names or shapes differ, or for another likelihood (family, score, ...).

        Warns
        -----
        UserWarning
            The model has the saved parameter names and shapes but other weights (e.g. retrained).
        """
        tensors, meta = load_state(path)
        where = repr(str(path))
        try:
            est = cls._from_meta(lik, meta, device)
            op = est._operator()
            if meta["fingerprint"] != op.space.fingerprint():
                raise NFKError(
                    f"{where} was saved for a model with other parameters (names or shapes "
                    f"differ); load it with the model it was fitted on."
                )
            saved_lik = {k: v for k, v in meta["likelihood"].items() if k != "n_samples"}
            now_lik = {k: v for k, v in json.loads(json.dumps(lik.describe())).items() if k != "n_samples"}
            if saved_lik != now_lik:
                raise NFKError(
                    f"{where} was saved for another likelihood ({_lik_text(saved_lik)}), not "
                    f"{_lik_text(now_lik)}; build the likelihood it was fitted with."
                )
            if meta.get("weights") not in (None, tensors_digest({**op.theta, **op.frozen})):
                warnings.warn(
                    f"The model's weights differ from those {where} was fitted with (same names and "
                    f"shapes); its embeddings of new data will not match the saved fit.",
                    UserWarning,
                    stacklevel=2,
                )
            est._restore(tensors, meta, op.P)
        except NFKError:
            raise
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise NFKError(
                f"{where} lacks the fields of a saved LowRankNFK ({exc!r}): it was altered."
            ) from None
        return est

    @classmethod
    def _from_meta(cls, lik: Likelihood, meta: dict[str, Any], device: Any) -> LowRankNFK:
        """A new estimator with the saved settings (unknown or ill-typed settings are refused)."""
        known = set(cls._get_param_names()) - {"lik", "progress", "device"}
        params = {k: v for k, v in meta["params"].items() if k in known}
        dtype = params.get("dtype")
        if dtype is not None:
            params["dtype"] = getattr(torch, str(dtype), None)
            if not isinstance(params["dtype"], torch.dtype):
                raise NFKError(f"The saved dtype {dtype!r} is not a torch dtype: the file was altered.")
        est = cls(lik, device=device, progress=False, **params)
        est._check_params()
        return est

    def _restore(self, tensors: dict[str, Tensor], meta: dict[str, Any], P: int) -> None:
        """Set the fitted attributes from a loaded file, checking the tensor shapes."""
        fisher = meta["fisher"]
        k = tensors["singular_values"].shape[0]
        shapes = {"components": (k, P), "fisher_mean": (P,), "fisher_diag": (P,),
                  "explained_variance_ratio": (k,)}
        for name, shape in shapes.items():
            if tuple(tensors[name].shape) != shape:
                raise NFKError(f"The saved {name} has shape {tuple(tensors[name].shape)}, not {shape}.")
        self.fisher_ = FisherEstimate(tensors["fisher_mean"], tensors["fisher_diag"],
                                      int(fisher["n_reference"]), str(fisher["kind"]),
                                      float(fisher["damping"]),
                                      factors_from(tensors, fisher.get("kfac_layers"), fisher["damping"]))
        self.components_ = tensors["components"]
        self.singular_values_ = tensors["singular_values"]
        self.explained_variance_ratio_ = tensors["explained_variance_ratio"]
        self.embedding_ = tensors["embedding"]
        fitted = meta["fitted"]
        self.n_samples_fit_, self.n_params_ = int(fitted["n_samples_fit"]), int(fitted["n_params"])
        self.trace_, self.fit_time_ = float(fitted["trace"]), float(fitted["fit_time"])
        self.device_ = str(fitted["device"])  # where it was fitted (informational)

    def _more_tags(self) -> dict[str, Any]:
        return {"non_deterministic": False, "requires_y": False}
