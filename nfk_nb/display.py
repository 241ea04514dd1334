"""Rich display of nfk_nb results: HTML for JupyterLab, one readable line of text for papermill reports.

``%load_ext nfk_nb`` registers :func:`fit_summary_html` / :func:`fit_summary_text` as the shell's
formatters for :class:`~nfk_nb.LowRankNFK` (registered printers win over scikit-learn's estimator
diagram), and a PNG formatter for matplotlib Figures so that figures returned by ``%nfk`` show up in
every frontend without ``%matplotlib inline``.
"""

from __future__ import annotations

import html
import io
from typing import Any

from .lowrank import LowRankNFK
from .records import format_seconds


def fit_facts(est: LowRankNFK) -> list[tuple[str, str]]:
    """(label, value) rows that summarise a fitted estimator."""
    ev = est.explained_variance_ratio_
    k = len(est.singular_values_)
    lik = est.lik
    model = f"{type(lik).__name__}({type(lik.model).__name__})"
    if hasattr(lik, "score"):
        model = f"{type(lik).__name__}({type(lik.model).__name__}, score={lik.score!r})"
    return [
        ("model", model),
        ("rank", str(k)),
        ("explained variance", f"{float(ev.sum()):.1%} of trace(K) in {k} components "
                               f"(first: {float(ev[0]):.1%})"),
        ("Fisher", f"{est.fisher}, damping {est.damping:g}"),
        ("data", f"N = {est.n_samples_fit_}, P = {est.n_params_} parameters"),
        ("fit time", format_seconds(est.fit_time_)),
        ("device", str(est.device_)),
        ("settings", f"power_iters={est.power_iters}, oversample={est.oversample}, seed={est.seed}"),
    ]


def fit_summary_text(est: LowRankNFK, *_: Any) -> str:
    """One line: rank, explained variance, time and device (``text/plain``)."""
    if not est.is_fitted():
        return f"LowRankNFK(rank={est.rank}, fisher={est.fisher!r}) (not fitted)"
    ev = float(est.explained_variance_ratio_.sum())
    return (
        f"LowRankNFK(rank={len(est.singular_values_)}, fisher={est.fisher!r}): N={est.n_samples_fit_}, "
        f"P={est.n_params_}, explained variance {ev:.1%}, fit {format_seconds(est.fit_time_)} "
        f"on {est.device_}"
    )


def html_table(title: str, rows: list[tuple[str, str]]) -> str:
    """A small two-column HTML table with a caption."""
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return (f"<table class='nfk-nb'><caption style='text-align:left'><b>{html.escape(title)}</b>"
            f"</caption>{body}</table>")


def _pretty_fit(est: LowRankNFK, p: Any, cycle: bool) -> None:
    """IPython pretty-printer hook (``text/plain``)."""
    p.text(fit_summary_text(est))


def fit_summary_html(est: LowRankNFK) -> str | None:
    """HTML summary of a fitted estimator; ``None`` (scikit-learn's own display) when unfitted."""
    if not est.is_fitted():
        return None
    return html_table("Low-rank Neural Fisher Kernel", fit_facts(est))


class ProbeResult(float):
    """A linear-probe accuracy: a ``float`` that also says how it was measured.

    Attributes
    ----------
    mode : str
        ``"test"`` (trained on one split, scored on another) or ``"cv"`` (cross-validated).
    n_train, n_test, dim, cv : int
    """

    mode: str
    n_train: int
    n_test: int
    dim: int
    cv: int

    def __new__(cls, value: float, mode: str, n_train: int, n_test: int, dim: int,
                cv: int) -> ProbeResult:
        self = super().__new__(cls, value)
        self.mode, self.n_train, self.n_test, self.dim, self.cv = mode, n_train, n_test, dim, cv
        return self

    def describe(self) -> str:
        if self.mode == "test":
            return f"trained on {self.n_train}, tested on {self.n_test} examples, {self.dim} features"
        return f"{self.cv}-fold cross-validation on {self.n_train} examples, {self.dim} features"

    def __repr__(self) -> str:
        return f"{float(self):.4f} (linear-probe accuracy, {self.describe()})"

    def _repr_html_(self) -> str:
        return html_table("Linear probe", [("accuracy", f"{float(self):.4f}"), ("how", self.describe())])


FIGURE_DPI = 90  # display size: a 9-inch figure is 810 px wide


def figure_png(fig: Any, dpi: int = FIGURE_DPI) -> bytes:
    """PNG bytes of a matplotlib Figure (works headless, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure_png_2x(fig: Any) -> tuple[bytes, dict[str, int]]:
    """A Figure as PNG at twice its display resolution, with the display ``width``/``height``.

    Frontends and HTML reports draw it at its display size, so it stays crisp on 2x screens.
    """
    png = figure_png(fig, dpi=2 * FIGURE_DPI)
    w, h = (int.from_bytes(png[o:o + 4], "big") for o in (16, 20))  # the PNG header's IHDR size
    return png, {"width": w // 2, "height": h // 2}


def _figure_png_printer(fig: Any) -> tuple[bytes, dict[str, int]]:
    return figure_png_2x(fig)


def show_figure(fig: Any, label: str = "figure") -> None:
    """Display a Figure as PNG (2x, drawn at display size) with a ``text/plain`` fallback."""
    from IPython.display import display

    png, size = figure_png_2x(fig)
    display({"image/png": png, "text/plain": f"<nfk_nb {label}>"}, metadata={"image/png": size}, raw=True)


def register_formatters(shell: Any) -> None:
    """Install the nfk_nb printers in ``shell``'s display formatter."""
    from matplotlib.figure import Figure

    formatters = shell.display_formatter.formatters
    formatters["text/html"].for_type(LowRankNFK, fit_summary_html)
    formatters["text/plain"].for_type(LowRankNFK, _pretty_fit)
    png = formatters["image/png"]
    try:
        png.lookup_by_type(Figure)  # %matplotlib inline already renders figures: keep its printer
    except KeyError:
        png.for_type(Figure, _figure_png_printer)


def unregister_formatters(shell: Any) -> None:
    """Remove what :func:`register_formatters` installed (and nothing else)."""
    from matplotlib.figure import Figure

    formatters = shell.display_formatter.formatters
    for mime, printer in (("text/html", fit_summary_html), ("text/plain", _pretty_fit)):
        if formatters[mime].type_printers.get(LowRankNFK) is printer:
            formatters[mime].pop(LowRankNFK)
    png = formatters["image/png"]
    if png.type_printers.get(Figure) is _figure_png_printer:
        png.pop(Figure)
