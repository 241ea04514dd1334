"""IPython extension: the nfk line and cell magics (a package: one module per subcommand).

``%nfk`` is the line magic, ``%%nfk`` the cell magic. (``nfk-nb --help`` shows the first line
above through argparse, so it must not contain a percent sign.)

Load it in a session with ``%load_ext nfk_nb`` (``%unload_ext nfk_nb`` removes it). To load it in
every IPython session and Jupyter kernel, either run ``nfk-nb enable-extension`` (see
``nfk_nb.enable_extension``), or add the standard IPython setting to ``ipython_config.py`` yourself::

    c.InteractiveShellApp.extensions.append("nfk_nb")

Defaults come from traitlets config, e.g. ``%config NFKMagics.rank = 32`` in a notebook or
``c.NFKMagics.rank = 32`` in ``ipython_config.py``; ``%config NFKMagics`` lists them.

A session::

    In [1]: %load_ext nfk_nb
    In [2]: %nfk fit net (X_train, y_train) --rank 32 -o est      # fitted LowRankNFK, summary shown
    In [3]: %nfk embed est X_test -o E_test                         # (597, 32) tensor
    In [4]: %nfk probe est y_train --test E_test y_test             # linear-probe accuracy
    In [5]: %nfk spectrum est                                       # singular values, explained variance
    In [6]: %nfk explore est X_test --labels y_test --images 8,8    # neighbours in NFK space
    In [7]: %nfk help fit                                           # every option of a subcommand

MODEL, DATA, EST, EMB and LABELS are names or Python expressions in the notebook's namespace
(``X[:100]``, ``(X, y)``); brackets keep spaces together. As in every IPython magic, ``$name`` and
``{expr}`` are replaced by their values first, so notebook parameters work: ``--rank $rank``.
Every bad input raises ``UsageError`` with one sentence, which also makes papermill stop on a
failing ``%nfk`` cell.

Layout: ``parser`` (the shared parser, option types and groups), ``core`` (``NFKMagics``: dispatch,
traits, helpers), one module per subcommand (``fit``, ``embed``, ``kernel``, ``spectrum``, ``probe``,
``explore``, ``save``, ``load``, ``help``) and ``commands`` (their registry and the help text).
"""

from __future__ import annotations

from typing import Any

from ..display import register_formatters, unregister_formatters
from .commands import OVERVIEW, PARSERS, SUBCOMMAND_NAMES
from .core import NFKMagics, core_errors
from .parser import split_args

__all__ = ["NFKMagics", "OVERVIEW", "PARSERS", "SUBCOMMAND_NAMES", "core_errors", "load_ipython_extension",
           "split_args", "unload_ipython_extension"]

NFKMagics.nfk.__doc__ = OVERVIEW  # what %nfk? shows: the overview, which points to %nfk help SUB


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nfk_nb``: register ``%nfk`` / ``%%nfk`` and the rich displays."""
    unload_ipython_extension(ipython)  # loading twice must not register two configurables
    ipython.register_magics(NFKMagics(shell=ipython))
    register_formatters(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nfk_nb``: remove the magics, their configurable and the displays."""
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        fn = manager.magics[kind].get("nfk")
        if fn is not None and isinstance(getattr(fn, "__self__", None), NFKMagics):
            manager.magics[kind].pop("nfk")
    manager.registry.pop("NFKMagics", None)
    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, NFKMagics)]
    unregister_formatters(ipython)
