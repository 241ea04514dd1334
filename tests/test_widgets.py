"""EmbeddingExplorer, driven headless through its traits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import traitlets

from nfk_nb.errors import NFKError
from nfk_nb.widgets import EmbeddingExplorer, cosine_neighbours


def clusters(n_per=10, k=5, seed=0):
    """Three tight clusters along different directions: neighbours must stay in their cluster."""
    rng = np.random.default_rng(seed)
    centres = np.eye(k)[:3] * 10
    E = np.concatenate([c + rng.normal(0, 0.3, (n_per, k)) for c in centres])
    y = np.repeat(np.arange(3), n_per)
    return torch.tensor(E, dtype=torch.float32), torch.tensor(y)


def test_cosine_neighbours_match_brute_force():
    rng = np.random.default_rng(1)
    E = rng.normal(size=(40, 6))
    idx, sims = cosine_neighbours(E, 7, 5)
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    ref = En @ En[7]
    ref[7] = -np.inf
    np.testing.assert_array_equal(idx, np.argsort(-ref)[:5])
    np.testing.assert_allclose(sims, ref[idx])
    assert list(sims) == sorted(sims, reverse=True) and 7 not in idx


def test_index_drives_neighbours_and_views():
    E, y = clusters()
    ex = EmbeddingExplorer(E, y, n_neighbours=4)
    assert ex.index == 0 and len(ex.neighbours) == 4
    assert all(y[j] == y[0] for j in ex.neighbours) and ex.label_agreement == 1.0
    scatter0 = ex.scatter.value
    ex.index = 25  # third cluster
    assert all(20 <= j < 30 and j != 25 for j in ex.neighbours)
    assert len(ex.similarities) == 4 and min(ex.similarities) > 0.9
    assert ex.scatter.value != scatter0 and ex.scatter.value[:4] == b"\x89PNG"
    assert "point #25" in ex.info.value and "100% share its label" in ex.info.value
    # no images: neighbours as an HTML table with index, label and cosine
    for j in ex.neighbours:
        assert f"#{j}</td>" in ex.neighbour_view.value
    assert ex.slider.value == 25  # trait -> slider
    ex.slider.value = 12  # slider -> trait
    assert ex.index == 12 and all(10 <= j < 20 for j in ex.neighbours)
    assert "index=12" in repr(ex)


def test_images_and_random_point():
    E, y = clusters(n_per=6)
    images = torch.rand(18, 64)
    ex = EmbeddingExplorer(E, y, images, shape=(8, 8), n_neighbours=3, index=4)
    assert ex.index == 4 and ex.neighbour_view.value[:4] == b"\x89PNG"
    ex.random_button.click()
    assert 0 <= ex.index < 18 and ex.index not in ex.neighbours
    before = bytes(ex.neighbour_view.value)
    ex.index = (ex.index + 7) % 18
    assert bytes(ex.neighbour_view.value) != before


def test_n_neighbours_is_capped_and_invalid_input_is_refused():
    E, y = clusters(n_per=2)
    assert len(EmbeddingExplorer(E, n_neighbours=50).neighbours) == 5
    ex = EmbeddingExplorer(E)
    with pytest.raises(traitlets.TraitError, match="between 0 and 5"):
        ex.index = 6
    assert ex.label_agreement is None
    with pytest.raises(NFKError, match="labels"):
        EmbeddingExplorer(E, y[:3])
    with pytest.raises(NFKError, match="shape=\\(8, 8\\)"):
        EmbeddingExplorer(E, images=torch.rand(6, 64))
    with pytest.raises(NFKError, match="N >= 2"):
        EmbeddingExplorer(torch.rand(5))
    with pytest.raises(NFKError, match="index"):
        EmbeddingExplorer(E, index=10)
