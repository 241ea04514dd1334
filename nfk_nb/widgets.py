"""ipywidgets views: :class:`EmbeddingExplorer`, what the model thinks is similar.

The explorer is plain ipywidgets plus PNG images drawn with matplotlib (no ipympl needed), so it
renders in JupyterLab, VS Code and Binder alike, and it is fully driven by traits: setting
``explorer.index = 5`` (or moving the slider) recomputes ``explorer.neighbours`` and redraws both
views, which is also how the tests drive it headless. Progress bars come from the core
(``nfk_nb._progress``: a tqdm widget inside a kernel, text elsewhere).
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import numpy as np
import traitlets

from .display import figure_png
from .errors import NFKError
from .evaluate import as_numpy
from .plots import plot_embedding, plot_neighbours


def cosine_neighbours(E: np.ndarray, index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``E`` most cosine-similar to row ``index`` (itself excluded), best first.

    Returns
    -------
    indices : (k,) int array
    similarities : (k,) float array
    """
    norms = np.linalg.norm(E, axis=1)
    En = E / np.where(norms > 0, norms, 1.0)[:, None]
    sims = En @ En[index]
    order = np.argsort(-sims, kind="stable")
    top = order[order != index][:k]
    return top, sims[top]


class EmbeddingExplorer(widgets.VBox):
    """Interactive view of an NFK embedding: a 2-D scatter coloured by label and, for a chosen
    point, its nearest neighbours in NFK space (cosine similarity), as images when possible.

    Parameters
    ----------
    embedding : (N, k) tensor or array
        The NFK embedding (``%nfk embed`` / ``est.transform(X)``).
    labels : (N,) array-like, optional
        Colours the scatter and annotates neighbours.
    images : (N, ...) tensor or array, optional
        The inputs, shown as images for the query and its neighbours.
    shape : (H, W), optional
        Image shape when ``images`` holds flat rows (e.g. ``(8, 8)`` for digits).
    n_neighbours : int
        How many neighbours to show.
    index : int
        The initially selected point.

    Attributes
    ----------
    index : Int trait
        The selected point; set it (or move the slider) to explore.
    neighbours : Tuple trait
        Indices of the selected point's nearest neighbours, best first.
    similarities : Tuple trait
        Their cosine similarities to the selected point.
    """

    index = traitlets.Int(0)
    neighbours = traitlets.Tuple()
    similarities = traitlets.Tuple()

    def __init__(self, embedding: Any, labels: Any = None, images: Any = None,
                 shape: tuple[int, int] | None = None, n_neighbours: int = 8, index: int = 0) -> None:
        E = as_numpy(embedding).astype(np.float64)
        if E.ndim != 2 or len(E) < 2:
            raise NFKError(f"The explorer needs an (N, k) embedding with N >= 2, got shape {E.shape}.")
        n = len(E)
        self.embedding = E
        self.labels = None if labels is None else as_numpy(labels)
        if self.labels is not None and len(self.labels) != n:
            raise NFKError(f"The embedding has {n} rows but there are {len(self.labels)} labels.")
        self.images = None if images is None else as_numpy(images)
        if self.images is not None and len(self.images) != n:
            raise NFKError(f"The embedding has {n} rows but there are {len(self.images)} images.")
        if self.images is not None and shape is None and self.images.ndim == 2:
            raise NFKError("The images are flat rows: give their shape, e.g. shape=(8, 8).")
        self.shape = shape
        if int(n_neighbours) < 1:
            raise NFKError(f"n_neighbours must be at least 1, got {n_neighbours}.")
        self.n_neighbours = min(int(n_neighbours), n - 1)

        self.slider = widgets.IntSlider(value=0, min=0, max=n - 1, description="point",
                                        continuous_update=False)
        self.random_button = widgets.Button(description="random point", icon="random")
        self.random_button.on_click(self._random)
        self._rng = np.random.default_rng(0)
        self.info = widgets.HTML()
        self.scatter = widgets.Image(format="png")
        self.neighbour_view = widgets.Image(format="png") if self.images is not None else widgets.HTML()
        # a neighbour table fits beside the scatter; a row of images goes below it
        box = widgets.VBox if self.images is not None else widgets.HBox
        views = box([self.scatter, self.neighbour_view])
        super().__init__(children=[widgets.HBox([self.slider, self.random_button]), self.info, views])
        traitlets.link((self.slider, "value"), (self, "index"))
        self.observe(self._update, names="index")
        if not 0 <= int(index) < n:
            raise NFKError(f"index must be between 0 and {n - 1}, got {index}.")
        if int(index) == self.index:
            self._update()
        self.index = int(index)

    @traitlets.validate("index")
    def _valid_index(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        n = len(self.embedding)
        if not 0 <= value < n:
            raise traitlets.TraitError(f"index must be between 0 and {n - 1}, got {value}.")
        return value

    def _random(self, _: Any = None) -> None:
        self.index = int(self._rng.integers(len(self.embedding)))

    @property
    def label_agreement(self) -> float | None:
        """Fraction of the neighbours that share the selected point's label (None without labels)."""
        if self.labels is None or not self.neighbours:
            return None
        nb = np.asarray(self.neighbours)
        return float((self.labels[nb] == self.labels[self.index]).mean())

    def _update(self, _: Any = None) -> None:
        i = self.index
        nb, sims = cosine_neighbours(self.embedding, i, self.n_neighbours)
        self.similarities = tuple(float(s) for s in sims)
        self.neighbours = tuple(int(j) for j in nb)
        lab = "" if self.labels is None else f" (label {html.escape(str(self.labels[i]))})"
        agree = self.label_agreement
        agree_txt = "" if agree is None else f"; {agree:.0%} share its label"
        self.info.value = (f"<b>point #{i}</b>{lab}: {len(nb)} nearest neighbours in NFK space "
                           f"(cosine){agree_txt}")
        self.scatter.value = figure_png(plot_embedding(self.embedding, self.labels, highlight=i,
                                                       neighbours=nb))
        if self.images is not None:
            fig = plot_neighbours(self.images, i, nb, self.shape, self.labels, sims)
            self.neighbour_view.value = figure_png(fig)
        else:
            rows = "".join(
                f"<tr><td>#{j}</td><td>{'' if self.labels is None else html.escape(str(self.labels[j]))}"
                f"</td><td>{s:.3f}</td></tr>"
                for j, s in zip(nb, sims)
            )
            self.neighbour_view.value = (
                "<table><tr><th>neighbour</th><th>label</th><th>cosine</th></tr>" + rows + "</table>"
            )

    def __repr__(self) -> str:
        n, k = self.embedding.shape
        return (f"EmbeddingExplorer({n} points, k={k}, index={self.index}, "
                f"neighbours={list(self.neighbours)})")
