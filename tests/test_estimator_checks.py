"""``LowRankNFK`` as a scikit-learn estimator: the applicable subset of ``sklearn.utils.estimator_checks``.

Not applicable as they stand: the checks that build an estimator without arguments (``lik`` is
required); ``check_fit_idempotent`` (it compares outputs with NumPy, and ``transform`` returns torch
tensors) and ``check_estimators_overwrite_params`` (a deep copy of a torch module never hashes like the
original, fit or not): both are restated below for tensors and modules.
"""

from __future__ import annotations

import joblib
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks as checks
from torch import nn

import nfk_nb as nfk


class AnyWidth(nn.Module):
    """A classifier of inputs of any width (the checks use 2 to 5 features): reads their mean and spread."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), -1)
        return self.net(torch.stack([x.mean(1), x.std(1)], 1) / 10)


def estimator(**kw) -> nfk.LowRankNFK:
    torch.manual_seed(0)
    net = AnyWidth().double()
    return nfk.LowRankNFK(nfk.Classifier(net), rank=3, oversample=2, power_iters=1, progress=False, **kw)


@pytest.mark.parametrize("check", [
    checks.check_no_attributes_set_in_init,
    checks.check_get_params_invariance,
    checks.check_set_params,
    checks.check_dont_overwrite_parameters,
    checks.check_estimator_repr,
    checks.check_estimator_tags_renamed,
], ids=lambda c: c.__name__)
def test_sklearn_check(check):
    check("LowRankNFK", estimator())


def data(n: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_fit_is_idempotent():
    X, X_test = data(), data(10, seed=3)
    est = estimator().fit(X)
    first = est.transform(X_test)
    torch.testing.assert_close(est.fit(X).transform(X_test), first, rtol=1e-12, atol=1e-12)


def test_fit_changes_no_parameter_nor_the_model():
    est = estimator()
    before = {k: joblib.hash(v) for k, v in est.get_params(deep=False).items() if k != "lik"}
    weights = {k: v.clone() for k, v in est.lik.model.state_dict().items()}
    described, training = est.lik.describe(), est.lik.model.training
    est.fit(data())
    assert before == {k: joblib.hash(v) for k, v in est.get_params(deep=False).items() if k != "lik"}
    after = est.lik.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    assert est.lik.describe() == described and est.lik.model.training == training


def test_tags():
    tags = estimator().__sklearn_tags__()
    assert tags.transformer_tags is not None and tags.requires_fit and not tags.non_deterministic
    assert not tags.target_tags.required
    checks.check_valid_tag_types("LowRankNFK", estimator())


def test_clone_is_unfitted_with_the_same_settings_and_fits_the_same():
    X = data()
    est = estimator(seed=5)
    E = est.fit_transform(X)
    twin = clone(est)
    assert not twin.is_fitted() and twin.get_params()["seed"] == 5 and twin.lik is not est.lik
    torch.testing.assert_close(twin.fit_transform(X), E, rtol=1e-10, atol=1e-12)
    assert "_op" not in vars(twin.__class__(**twin.get_params()))  # nothing built in __init__


def test_in_a_pipeline():
    X = data(seed=2)
    pipe = Pipeline([("nfk", estimator()), ("scale", StandardScaler())])
    Z = pipe.fit_transform(X)
    assert Z.shape == (40, 3)
