"""EmbeddingExplorer, driven headless through its traits."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch
import traitlets

from nfk_nb.errors import NFKError
from nfk_nb.widgets import STATIC, EmbeddingExplorer, cosine_neighbours


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
    ex.index = 25  # third cluster
    assert all(20 <= j < 30 and j != 25 for j in ex.neighbours)
    assert len(ex.similarities) == 4 and min(ex.similarities) > 0.9
    assert ex.view.index == 25 and ex.view.neighbours == list(ex.neighbours)
    assert "point #25" in ex.info.value and "100% share its label" in ex.info.value
    # no images: the view lists the neighbours (index, label, cosine) after the selected point
    query, *rows = ex.view.items
    assert query["query"] and query["index"] == 25 and query["src"] == ""
    assert [r["index"] for r in rows] == list(ex.neighbours)
    assert [r["cosine"] for r in rows] == [f"{s:.2f}" for s in ex.similarities]
    assert all(r["label"] == "2" for r in rows)
    assert ex.slider.value == 25  # trait -> slider
    ex.slider.value = 12  # slider -> trait
    assert ex.index == 12 and all(10 <= j < 20 for j in ex.neighbours)
    assert "index=12" in repr(ex)


def test_a_click_in_the_view_selects_the_point():
    """The browser sets ``view.index`` on a click; Python answers with the neighbours."""
    E, y = clusters()
    ex = EmbeddingExplorer(E, y, n_neighbours=3)
    ex.view.index = 27  # what the JavaScript click handler does
    assert ex.index == 27 and ex.slider.value == 27
    assert all(20 <= j < 30 for j in ex.neighbours) and ex.view.items[0]["index"] == 27
    # hover shows index and label: the view holds one label and one colour per point, one
    # legend entry per class, and the 2-D points
    assert ex.view.labels == [str(int(v)) for v in y] and len(ex.view.colors) == len(E) == len(ex.view.points)
    assert [name for name, _ in ex.view.legend] == ["0", "1", "2"]
    assert len({ex.view.colors[0], ex.view.colors[10], ex.view.colors[20]}) == 3
    with pytest.raises(traitlets.TraitError):
        ex.view.index = len(E)


def test_images_and_random_point():
    E, y = clusters(n_per=6)
    images = torch.rand(18, 64)
    ex = EmbeddingExplorer(E, y, images, shape=(8, 8), n_neighbours=3, index=4)
    assert ex.index == 4 and len(ex.view.items) == 4
    for item in ex.view.items:
        png = base64.b64decode(item["src"].removeprefix("data:image/png;base64,"))
        assert png[:4] == b"\x89PNG" and int.from_bytes(png[16:20], "big") == 8  # native 8 px, scaled by CSS
    ex.random_button.click()
    assert 0 <= ex.index < 18 and ex.index not in ex.neighbours
    before = [item["src"] for item in ex.view.items]
    ex.index = (ex.index + 7) % 18
    assert [item["src"] for item in ex.view.items] != before


def test_display_carries_a_still_picture_at_twice_its_display_size():
    E, y = clusters(n_per=6)
    ex = EmbeddingExplorer(E, y, torch.rand(18, 64), shape=(8, 8), n_neighbours=4, index=3)
    data, meta = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data  # the live view stays first choice
    png = base64.b64decode(data["image/png"])
    w, h = (int.from_bytes(png[o:o + 4], "big") for o in (16, 20))
    size = meta["image/png"]
    assert (w, h) == (2 * size["width"], 2 * size["height"])
    assert size["width"] <= 760 and size["height"] <= 700


def test_the_live_view_fits_one_screen_and_its_text_is_legible():
    E, y = clusters(n_per=6)
    ex = EmbeddingExplorer(E, y, torch.rand(18, 64), shape=(8, 8))
    # controls (~36 px) + info line (~22 px) + scatter + thumbnail with two caption lines (~34 px)
    assert 36 + 22 + ex.view.height + ex.view.thumb + 34 <= 700
    styles = (STATIC / "explorer.css").read_text() + (STATIC / "explorer.js").read_text()
    sizes = [float(a or b) for a, b in
             re.findall(r"(\d+(?:\.\d+)?)px sans-serif|font-size:\s*(\d+(?:\.\d+)?)px", styles)]
    assert sizes and min(sizes) >= 11


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
