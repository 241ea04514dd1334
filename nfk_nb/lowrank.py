"""``LowRankNFK``: the scikit-learn estimator over the low-rank NFK fit (a thin shell).

The algorithm lives in free functions: :mod:`nfk_nb.fitting` (the passes of a fit),
:mod:`nfk_nb.sketch` (randomised SVD over any matrix products), :mod:`nfk_nb.checkpoint` (resuming)
and :mod:`nfk_nb.serialization` (the file format). The estimator checks its settings
(:mod:`nfk_nb.options`), keeps the fitted attributes and embeds new data::

    e(x) = W_kᵀ v(x)       (k JVPs; for the fit data this is E ≈ U_k S_k, E Eᵀ ≈ K)

``transform(X_fit)`` equals ``fit_transform(X_fit)``: both are the same JVP map.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import Tags, TransformerTags
from torch import Tensor

from ._modes import eval_mode
from ._progress import make_bar
from .checkpoint import tensors_digest
from .consistency import fit_with_precision_guard
from .datasource import DataSource, as_source
from .errors import NFKError, NFKTypeError
from .fisher import FisherEstimate
from .fitting import FitResult, fit_lowrank
from .functional import LogProbOperator, compute_dtype, default_device
from .kfac import factor_layout, factor_tensors, factors_from
from .layerwise import make_operator
from .likelihoods import Likelihood
from .meta_checks import check_fields, estimator_fields
from .options import DEFAULTS, check_params
from .products import FisherVectorProducts
from .serialization import jsonable, load_state, save_state
from .staleness import warn_if_changed, weights_digest
from .validation import check_finite_rows, check_inputs, check_labels

# the fitted tensors, as they are named in a state dict and in a saved file
_TENSORS = {"components": "components_", "singular_values": "singular_values_",
            "explained_variance_ratio": "explained_variance_ratio_", "embedding": "embedding_"}


def _lik_text(described: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in described.items())


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

    The fitted state travels as :meth:`state_dict` / :meth:`load_state_dict` (``save``/``load`` write
    it to a file); :attr:`operator` is the batched JVP/VJP operator of ``lik`` the fit runs on.
    """

    def __init__(
        self,
        lik: Likelihood,
        rank: int = DEFAULTS["rank"],
        fisher: str = DEFAULTS["fisher"],
        damping: float = DEFAULTS["damping"],
        power_iters: int = DEFAULTS["power_iters"],
        oversample: int = DEFAULTS["oversample"],
        batch_size: int = DEFAULTS["batch_size"],
        device: str | torch.device | None = DEFAULTS["device"],
        dtype: torch.dtype | None = DEFAULTS["dtype"],
        seed: int = DEFAULTS["seed"],
        whiten: bool = DEFAULTS["whiten"],
        progress: bool | Callable[..., Any] = DEFAULTS["progress"],
        chunk_size: int | None = DEFAULTS["chunk_size"],
        sketch: str = DEFAULTS["sketch"],
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


    # -- settings and the operator ------------------------------------------------------------
    def check_settings(self) -> None:
        """Check every setting without computing anything (``fit`` starts with this).

        Raises
        ------
        NFKTypeError, NFKError
            A setting has the wrong type, is out of range or is not one of its choices.
        """
        if not isinstance(self.lik, Likelihood):
            raise NFKTypeError(
                f"lik must be an nfk_nb likelihood (Classifier, EnergyModel, VAE, Regressor or "
                f"Likelihood), not {type(self.lik).__name__}."
            )
        check_params(self.get_params(deep=False))

    @property
    def operator(self) -> LogProbOperator:
        """The batched JVP/VJP operator of ``lik`` on this estimator's device and dtype (built once,
        rebuilt by each fit; its ``choices`` say which product strategies were kept)."""
        op = self.__dict__.get("_op")
        if op is None:
            dtype = self.__dict__.get("_dtype_override") or self.dtype or compute_dtype(self.lik.model)
            op = self._op = make_operator(self.lik, default_device(self.device), dtype, self.chunk_size)
        return op

    def __getstate__(self) -> dict[str, Any]:
        # the operator holds device state and closures: copies and pickles rebuild their own
        state = dict(super().__getstate__())  # object.__getstate__ returns __dict__ itself
        state.pop("_op", None)
        return state

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

    def fit_transform(self, X: Any, y: Any = None, checkpoint: str | os.PathLike | None = None) -> Tensor:
        """Fit and return the embedding of ``X``, shape (N, k), on the CPU.

        Parameters
        ----------
        X : Tensor, ndarray, (X, y) tuple, Dataset or DataLoader
            The data (a DataLoader must not shuffle).
        y : Tensor, optional
            Targets for a plain tensor ``X`` when the score needs labels.
        checkpoint : path-like, optional
            File where the fit's state is saved, atomically, after each pass over the data
            (safetensors + JSON, never pickle). Running the same call again after a crash, even
            SIGKILL, resumes after the last finished pass and gives the same embedding (bitwise on
            the CPU). A checkpoint made for another model, data size or setting is refused with a
            message that names the difference. The file is deleted when the fit succeeds.

        Warns
        -----
        PrecisionWarning
            The fit failed its numerical self-check (``nfk_nb.consistency``) and was recomputed in
            float64 (without checkpointing); an inconsistent fit is never returned.
        """
        self.check_settings()
        start = time.perf_counter()
        source = self._source(X, y)

        def attempt(dtype: torch.dtype | None) -> FitResult:  # dtype: None, or the refit's precision
            self._op, self._dtype_override = None, dtype  # a new fit sees the model's current weights
            if dtype is not None and checkpoint is not None:  # the saved passes are not reusable
                Path(checkpoint).unlink(missing_ok=True)
            ckpt = None if dtype is not None else checkpoint
            return fit_lowrank(self.lik, self.operator, source, self.get_params(deep=False), ckpt)

        self._op, self._dtype_override = None, None
        weights = weights_digest(self.lik.model)  # the weights this fit belongs to
        result = fit_with_precision_guard(attempt, self.operator.dtype)
        self._set_fitted(result, time.perf_counter() - start)
        self.weights_digest_ = self._op_weights = weights  # the fit's operator was built from them
        return self.embedding_

    def _set_fitted(self, r: FitResult, fit_time: float) -> None:
        S = r.singular_values
        self.fisher_, self.trace_ = r.fisher, r.trace
        self.components_, self.singular_values_ = r.components, S
        self.explained_variance_ratio_ = (S**2 / r.trace).cpu() if r.trace > 0 else torch.zeros_like(S)
        self.n_samples_fit_, self.n_params_, self.device_ = r.n_samples, r.n_params, r.device
        self.embedding_ = (r.embedding / S.to(r.embedding) if self.whiten else r.embedding).cpu()
        self.fit_time_ = fit_time

    # -- using a fit ----------------------------------------------------------------------------
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load` / :meth:`load_state_dict`) has run."""
        return hasattr(self, "components_")

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise NFKError("This LowRankNFK is not fitted yet: call fit(X) first.")

    def __sklearn_is_fitted__(self) -> bool:
        return self.is_fitted()

    def transform(self, X: Any, y: Any = None) -> Tensor:
        """Embed new data: ``e(x) = W_kᵀ v(x)`` (k JVPs per batch); returns (N, k) on the CPU."""
        self._check_fitted()
        source = self._source(X, y)
        with eval_mode(self.lik.model):  # the model's lock: no training step of another thread mid-way
            op = self._current_operator()
            check_inputs(op, source)
            bar = make_bar(source.n, "NFK transform", self.progress)
            try:
                products = FisherVectorProducts(op, lambda: iter(source), self.fisher_, None, bar.update)
                emb = products.matvec(self.components_)
                check_finite_rows(emb, "embedding")
            finally:
                bar.close()
                getattr(op, "clear_cache", lambda: None)()
        if self.whiten:
            emb = emb / self.singular_values_.to(emb)
        return emb.cpu()

    def _current_operator(self) -> LogProbOperator:
        """The operator over the model's parameters *now* (a replaced parameter object included),
        after warning when they differ from the fitted ones. Call it holding the model's lock
        (``eval_mode``): the cached operator is shared, and rebuilt whenever the weights changed."""
        now = weights_digest(self.lik.model)
        warn_if_changed(getattr(self, "weights_digest_", None), self.lik.model, stacklevel=4, now=now)
        op = self.__dict__.get("_op")
        if op is None or self.__dict__.get("_op_weights") != now:
            self._op = None
            op, self._op_weights = self.operator, now
        if op.P != self.components_.shape[1]:
            raise NFKError(f"The model has {op.P} parameters in θ but the fit has "
                           f"{self.components_.shape[1]}; transform with the model it was fitted on.")
        return op

    def set_params(self, **params: Any) -> LowRankNFK:
        """As scikit-learn's; also drops the cached operator (it belongs to the old settings)."""
        super().set_params(**params)
        self.__dict__.pop("_op", None)
        if "dtype" in params:  # the fit's float64 refit precision gives way to an explicit choice
            self.__dict__.pop("_dtype_override", None)
        return self

    # -- the fitted state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The fitted state: its tensors (on the CPU) by name and, under ``"fisher"`` and ``"fitted"``,
        its JSON-serialisable metadata. :meth:`load_state_dict` restores it."""
        self._check_fitted()
        f = self.fisher_
        state: dict[str, Any] = {name: getattr(self, attr).cpu() for name, attr in _TENSORS.items()}
        state.update(fisher_mean=f.mean.cpu(), fisher_diag=f.diag.cpu(), **factor_tensors(f.kron),
                     fisher={"kind": f.kind, "damping": f.damping, "n_reference": f.n_reference,
                             "kfac_layers": factor_layout(f.kron)},
                     fitted={"n_samples_fit": self.n_samples_fit_, "n_params": self.n_params_,
                             "trace": self.trace_, "fit_time": self.fit_time_, "device": self.device_,
                             "compute_dtype": str(self.operator.dtype).removeprefix("torch."),
                             "weights_digest": getattr(self, "weights_digest_", None)})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> LowRankNFK:
        """Set the fitted attributes from :meth:`state_dict`, checking the shapes against the model.

        Raises
        ------
        NFKError
            A tensor has the wrong shape for this model (another ``P``) or a field is missing.
        """
        self._op = None  # a new fitted state: the operator sees the model's current weights
        # a fit recomputed in float64 (consistency.py) embeds new data in float64 too
        saved = getattr(torch, str(state["fitted"].get("compute_dtype", "")), None)
        self._dtype_override = saved if isinstance(saved, torch.dtype) else None
        P, k = self.operator.P, state["singular_values"].shape[0]
        shapes = {"components": (k, P), "fisher_mean": (P,), "fisher_diag": (P,),
                  "explained_variance_ratio": (k,)}
        for name, shape in shapes.items():
            if tuple(state[name].shape) != shape:
                raise NFKError(f"The saved {name} has shape {tuple(state[name].shape)}, not {shape}.")
        fisher, fitted = state["fisher"], state["fitted"]
        self.fisher_ = FisherEstimate(state["fisher_mean"], state["fisher_diag"], int(fisher["n_reference"]),
                                      str(fisher["kind"]), float(fisher["damping"]),
                                      factors_from(state, fisher.get("kfac_layers"), fisher["damping"]))
        for name, attr in _TENSORS.items():
            setattr(self, attr, state[name])
        self.n_samples_fit_, self.n_params_ = int(fitted["n_samples_fit"]), int(fitted["n_params"])
        self.trace_, self.fit_time_ = float(fitted["trace"]), float(fitted["fit_time"])
        self.device_ = str(fitted["device"])  # where it was fitted (informational)
        self.weights_digest_ = fitted.get("weights_digest")  # None in files of older versions
        return self

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted state to ``path`` (safetensors + JSON metadata; atomic; never pickled).

        The file holds the tensors of :meth:`state_dict` and, as JSON, its metadata, the format
        version, the package version, the settings, the likelihood's description, a fingerprint of θ
        (names and shapes), a digest of the weights and SHA-256 checksums of the tensors and metadata.
        """
        from . import __version__

        state, op = self.state_dict(), self.operator
        tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
        params = {k: jsonable(v) for k, v in self.get_params(deep=False).items()
                  if k not in ("lik", "progress")}
        params["device"] = None if self.device is None else str(self.device)
        meta = {"package_version": __version__, "params": params, "likelihood": self.lik.describe(),
                "fingerprint": op.space.fingerprint(), "weights": tensors_digest({**op.theta, **op.frozen}),
                "fisher": state["fisher"], "fitted": state["fitted"]}
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
        check_fields(meta, estimator_fields(), where)  # types and ranges: a checksum is no signature
        try:
            est = cls._from_meta(lik, meta, device)
            op = est.operator
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
            fitted_weights = meta["fitted"].get("weights_digest")
            if fitted_weights is not None:  # recorded at fit time (files since this version)
                warn_if_changed(fitted_weights, lik.model, f"{where} was fitted with")
            elif meta.get("weights") not in (None, tensors_digest({**op.theta, **op.frozen})):
                warnings.warn(
                    f"The model's weights differ from those {where} was fitted with (same names and "
                    f"shapes); its embeddings of new data will not match the saved fit.",
                    UserWarning,
                    stacklevel=2,
                )
            est.load_state_dict({**tensors, "fisher": meta["fisher"], "fitted": meta["fitted"]})
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
        est.check_settings()
        return est

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.requires_fit = True
        tags.target_tags.required = False
        tags.transformer_tags = tags.transformer_tags or TransformerTags()
        return tags
