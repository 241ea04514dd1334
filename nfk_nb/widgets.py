"""ipywidgets views: :class:`EmbeddingExplorer`, what the model thinks is similar.

The explorer is a slider, a "random point" button and one :class:`ExplorerView` (an anywidget
that draws the scatter in the browser at the screen's pixel density: crisp on 2x screens; hover a
point to see its index and label, click it to select it). Everything is driven by traits: setting
``explorer.index = 5``, moving the slider, or a click (which sets ``explorer.view.index``)
recomputes ``explorer.neighbours`` and the view's items, which is also how the tests drive it
headless. Displayed, the explorer also carries a still picture (``image/png``), so saved reports
and frontends without widgets show it too. Progress bars come from the core
(``nfk_nb._progress``: a tqdm widget inside a kernel, text elsewhere).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets as widgets
import numpy as np
import traitlets

from .errors import NFKError
from .evaluate import as_numpy
from .plots import example_image, plot_explorer, project_2d

STATIC = Path(__file__).parent / "static"
SNAPSHOT_DPI = 200  # the still picture is stored at 2x its display size (100 dpi)


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


def point_colours(labels: Any, n: int) -> tuple[list[str], list[list[str]]]:
    """Per-point colours and the legend ``[[class, colour], ...]``, as :func:`plot_embedding` draws them.

    Up to 20 classes get matplotlib's ten-colour cycle and a legend; more (or continuous values) a
    viridis scale and no legend.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if labels is None:
        return [to_hex("C0")] * n, []
    lab = as_numpy(labels)
    classes, codes = np.unique(lab, return_inverse=True)
    if len(classes) <= 20:
        palette = [to_hex(f"C{i % 10}") for i in range(len(classes))]
        return [palette[c] for c in codes], [[str(c), palette[i]] for i, c in enumerate(classes)]
    values = lab.astype(float) if lab.dtype.kind in "iufb" else codes.astype(float)
    span = float(np.ptp(values)) or 1.0
    cmap = colormaps["viridis"]
    return [to_hex(cmap((v - values.min()) / span)) for v in values], []


def _png_data_url(image: np.ndarray) -> str:
    """A ``data:`` URL of one example as a PNG at its own resolution (the browser scales it up)."""
    from matplotlib.image import imsave

    buf = io.BytesIO()
    if image.ndim == 2:
        imsave(buf, image, cmap="gray_r", format="png")
    else:
        imsave(buf, np.clip(image, 0.0, 1.0), format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ExplorerView(anywidget.AnyWidget):
    """The browser side of the explorer: scatter (hover, click), neighbour thumbnails or table.

    Python sets everything but ``index``, which a click in the scatter (or on a neighbour) sets.
    Sizes are CSS pixels; the canvas is drawn at the screen's pixel density.
    """

    _esm = STATIC / "explorer.js"
    _css = STATIC / "explorer.css"

    points = traitlets.List().tag(sync=True)  # [[x, y], ...] in data coordinates
    colors = traitlets.List().tag(sync=True)  # one CSS colour per point
    labels = traitlets.List().tag(sync=True)  # one label per point (shown on hover), or empty
    legend = traitlets.List().tag(sync=True)  # [[class, colour], ...]
    title = traitlets.Unicode("").tag(sync=True)
    xlabel = traitlets.Unicode("PC 1").tag(sync=True)
    ylabel = traitlets.Unicode("PC 2").tag(sync=True)
    width = traitlets.Int(620).tag(sync=True)
    height = traitlets.Int(380).tag(sync=True)
    thumb = traitlets.Int(64).tag(sync=True)  # thumbnail width in px
    index = traitlets.Int(0).tag(sync=True)
    neighbours = traitlets.List().tag(sync=True)
    # the selected point then its neighbours: {index, label, cosine, src (data URL or ""), query}
    items = traitlets.List().tag(sync=True)


class EmbeddingExplorer(widgets.VBox):
    """Interactive view of an NFK embedding: a 2-D scatter coloured by label and, for a chosen
    point, its nearest neighbours in NFK space (cosine similarity), as images when possible.

    Select a point with the slider (arrow keys once it has focus), the "random point" button, a
    click on it in the scatter or on a neighbour; hovering a point shows its index and label.
    The whole explorer is about 560 px tall with images (about 440 px without).

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
        The selected point; set it (or move the slider, or click) to explore.
    neighbours : Tuple trait
        Indices of the selected point's nearest neighbours, best first.
    similarities : Tuple trait
        Their cosine similarities to the selected point.
    view : ExplorerView
        The browser view; ``view.index`` is what a click sets.
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
        if not 0 <= int(index) < n:
            raise NFKError(f"index must be between 0 and {n - 1}, got {index}.")
        if self.images is not None:
            example_image(self.images, 0, shape)  # an unshowable shape fails here, not on display

        self.slider = widgets.IntSlider(value=0, min=0, max=n - 1, description="point",
                                        continuous_update=False)
        self.random_button = widgets.Button(description="random point", icon="random")
        self.random_button.on_click(self._random)
        self._rng = np.random.default_rng(0)
        self.info = widgets.HTML()
        self.view = self._make_view()
        super().__init__(children=[widgets.HBox([self.slider, self.random_button]), self.info, self.view])
        traitlets.link((self.slider, "value"), (self, "index"))
        traitlets.link((self.view, "index"), (self, "index"))
        self.observe(self._update, names="index")
        if int(index) == self.index:
            self._update()
        self.index = int(index)

    def _make_view(self) -> ExplorerView:
        xy = project_2d(self.embedding)
        colors, legend = point_colours(self.labels, len(xy))
        k = self.embedding.shape[1]
        thumb = 64
        if self.images is not None:
            w = example_image(self.images, 0, self.shape).shape[1]
            thumb = int(min(max(64, w), 96))
        return ExplorerView(
            points=np.round(xy, 5).tolist(), colors=colors, legend=legend,
            labels=[] if self.labels is None else [str(v) for v in self.labels.tolist()],
            title=f"NFK embedding ({len(xy)} points, k={k})",
            xlabel="component 1" if k <= 2 else "PC 1", ylabel="component 2" if k <= 2 else "PC 2",
            width=620 if self.images is not None else 480, height=380, thumb=thumb,
        )

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

    def _item(self, j: int, cosine: float | None) -> dict[str, Any]:
        src = "" if self.images is None else _png_data_url(example_image(self.images, j, self.shape))
        return {"index": j, "label": None if self.labels is None else str(self.labels[j]),
                "cosine": None if cosine is None else f"{cosine:.2f}", "src": src, "query": cosine is None}

    def _update(self, _: Any = None) -> None:
        i = self.index
        nb, sims = cosine_neighbours(self.embedding, i, self.n_neighbours)
        self.similarities = tuple(float(s) for s in sims)
        self.neighbours = tuple(int(j) for j in nb)
        lab = "" if self.labels is None else f" (label {html.escape(str(self.labels[i]))})"
        agree = self.label_agreement
        agree_txt = "" if agree is None else f"; {agree:.0%} share its label"
        self.info.value = (f"<b>point #{i}</b>{lab}: {len(nb)} nearest neighbours in NFK space "
                           f"(cosine){agree_txt} <span style='color:#777'>· hover a point to see it, "
                           f"click to select it</span>")
        with self.view.hold_sync():
            self.view.index = i
            self.view.neighbours = list(self.neighbours)
            self.view.items = [self._item(i, None)] + [self._item(int(j), float(s)) for j, s in zip(nb, sims)]

    def snapshot(self) -> tuple[bytes, dict[str, int]]:
        """The still picture of the current state: PNG bytes at 2x and its display ``width``/``height``."""
        fig = plot_explorer(self.embedding, self.labels, self.index, self.neighbours, self.images,
                            self.shape, self.similarities)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=SNAPSHOT_DPI)
        png = buf.getvalue()
        w, h = (int.from_bytes(png[o:o + 4], "big") for o in (16, 20))  # the PNG header's IHDR size
        scale = SNAPSHOT_DPI // 100
        return png, {"width": w // scale, "height": h // scale}

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The widget view plus the still picture (``image/png``) that reports fall back to."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        png, size = self.snapshot()
        data = {**data, "image/png": base64.b64encode(png).decode("ascii")}
        return data, {**meta, "image/png": size}

    def __repr__(self) -> str:
        n, k = self.embedding.shape
        return (f"EmbeddingExplorer({n} points, k={k}, index={self.index}, "
                f"neighbours={list(self.neighbours)})")
