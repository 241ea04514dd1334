"""Enable the nfk_nb IPython extension in every session: ``nfk-nb enable-extension``.

Appends a marked block to ``<ipython-dir>/profile_<NAME>/ipython_config.py`` (idempotent; ``--disable``
removes it), the same as adding ``c.InteractiveShellApp.extensions.append("nfk_nb")`` by hand. IPython
is imported only to find the default IPython directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

BEGIN = "# >>> nfk_nb: load %nfk in every IPython session and Jupyter kernel (nfk-nb enable-extension) >>>"
END = "# <<< nfk_nb <<<"
BLOCK = f"""{BEGIN}
c = get_config()  # noqa: F821 - provided by IPython's config loader
c.InteractiveShellApp.extensions.append("nfk_nb")
{END}
"""


def add_enable_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nfk-nb enable-extension``."""
    parser.description = ("Load the %nfk magics in every IPython session and Jupyter kernel by adding "
                          "nfk_nb to c.InteractiveShellApp.extensions in the profile's ipython_config.py.")
    parser.add_argument("--profile", default="default", help="IPython profile name (default: default)")
    parser.add_argument("--ipython-dir", default=None,
                        help="IPython directory (default: $IPYTHONDIR or ~/.ipython)")
    parser.add_argument("--disable", action="store_true", help="remove the block instead of adding it")


def config_path(profile: str = "default", ipython_dir: str | None = None) -> Path:
    """``<ipython_dir>/profile_<profile>/ipython_config.py``."""
    if ipython_dir is None:
        from IPython.paths import get_ipython_dir

        ipython_dir = get_ipython_dir()
    return Path(ipython_dir).expanduser() / f"profile_{profile}" / "ipython_config.py"


def enable_command(args: argparse.Namespace) -> int:
    """Add (or with ``--disable`` remove) the nfk_nb block of the profile's config; idempotent."""
    path = config_path(args.profile, args.ipython_dir)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    present = BEGIN in text
    if args.disable:
        if present:
            head, _, tail = text.partition(BEGIN)
            _, _, tail = tail.partition(END)
            path.write_text(head.rstrip("\n") + ("\n" if head.strip() else "") + tail.lstrip("\n"),
                            encoding="utf-8")
            print(f"Removed nfk_nb from {path}")
        else:
            print(f"nfk_nb was not enabled in {path}; nothing to do")
        return 0
    if present:
        print(f"nfk_nb is already enabled in {path}")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    path.write_text(text + sep + BLOCK, encoding="utf-8")
    print(f"Enabled nfk_nb in {path}: %nfk is available in new IPython sessions and kernels")
    return 0

