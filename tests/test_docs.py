"""README and docs stand on their own: every link resolves inside the repository, no placeholder."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(path):
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        assert (path.parent / target.split("#")[0]).resolve().is_relative_to(ROOT), target
        assert (path.parent / target.split("#")[0]).exists(), f"{path.name} links to missing {target}"
    assert "OWNER" not in text and "../shared" not in text


def test_no_file_in_the_repository_points_outside_it():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    pattern = re.compile(r"\.\./shared|\bDESIGN(\.md| §)")
    offenders = [
        name for name in files.stdout.split()
        if name != "tests/test_docs.py"
        and (Path(name).suffix in {".py", ".md", ".ipynb", ".toml", ".txt"} or Path(name).name == "Makefile")
        and pattern.search((ROOT / name).read_text(encoding="utf-8", errors="replace"))
    ]
    assert not offenders, f"these refer to files users do not have: {offenders}"
