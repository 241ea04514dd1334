"""HTML reports that read complete offline: math rendered at export, no script from a network.

nbconvert's ``lab`` template loads MathJax, require.js, mermaid and the widget manager from CDNs, so
a report opened without a network shows raw ``$$…$$`` and blank widgets. Here the math of markdown
cells becomes MathML at export (browsers render it natively, no script at all), the template's
CDN scripts are left out, and widget outputs fall back to the static picture each nfk_nb widget
saves beside its view (``image/png``; nbconvert drops a widget view whose state was not saved).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .records import MIME

# The lab template minus every block that loads a script from a CDN.
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
math[display="block"] { margin: 0.6em 0; }
.jp-RenderedHTMLCommon math { font-size: 1.05em; }
</style>
{%- endblock extra_css -%}
"""

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# fenced code blocks and inline code spans keep their dollars
_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.S)
# $$display$$ first, then $inline$ (not $ followed by a space or a digit run like "$5 and $6")
_MATH = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<![\\$])\$(?![\s$])([^$\n]+?)(?<![\s\\])\$(?!\d)", re.S)
# characters markdown would read as syntax inside the MathML's text
_MARKDOWN_SPECIAL = {"|": "&#124;", "*": "&#42;", "_": "&#95;", "\\": "&#92;", "`": "&#96;"}


def latex_to_mathml(tex: str, display: bool = False) -> str:
    """MathML for a LaTeX formula, on one line and safe to embed in markdown (tables included)."""
    from latex2mathml.converter import convert

    out = convert(" ".join(tex.split()), display="block" if display else "inline")
    # escape markdown's syntax characters in text nodes only (tags and attributes stay as they are)
    return re.sub(r">([^<]+)<", lambda m: ">" + "".join(_MARKDOWN_SPECIAL.get(c, c) for c in m.group(1))
                  + "<", out)


def markdown_math_to_mathml(source: str) -> str:
    """Replace ``$…$`` and ``$$…$$`` in markdown by MathML, leaving code untouched.

    A formula the converter cannot read is left as it was (the reader sees the LaTeX source).
    """

    def convert(match: re.Match[str]) -> str:
        display = match.group(1) is not None
        tex = match.group(1) if display else match.group(2)
        try:
            return latex_to_mathml(tex, display=display)
        except Exception:  # noqa: BLE001 - any parse failure: keep the source text
            return match.group(0)

    parts = _CODE.split(source)
    return "".join(p if i % 2 else _MATH.sub(convert, p) for i, p in enumerate(parts))


def offline_notebook(nb: Any) -> Any:
    """A copy of ``nb`` for reading offline.

    Markdown math becomes MathML; the invisible ``nfk.record`` outputs go; widget views go too
    (with the widget state nbclient saves), since their JavaScript manager would come from a CDN:
    each widget output shows its fallback instead, the picture nfk_nb's widgets save beside it.
    """
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = markdown_math_to_mathml(cell.source)
        elif cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if set(o.get("data", {})) != {MIME}]
            for out in cell.outputs:
                out.get("data", {}).pop(WIDGET_VIEW, None)
    return nb


def offline_html(nb: Any) -> str:
    """A standalone HTML page of ``nb`` that needs no network: CSS inline, math as MathML, no CDN."""
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"nfk_offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="nfk_offline.html.j2",
    )
    body, _ = exporter.from_notebook_node(offline_notebook(nb))
    return body


def external_scripts(page: str) -> list[str]:
    """The ``src`` of every ``<script>`` (and every ES-module ``import``) that points off the page."""
    srcs = re.findall(r"<script\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)", page, re.I)
    imports = re.findall(r"\bimport\s*(?:[^'\";]*?from\s*)?[\"'](https?://[^\"']+)", page)
    return [s for s in srcs + imports if re.match(r"(https?:)?//", s)]
