"""No file of the project carries unresolved merge-conflict markers (one reached docs/ once)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(<{7}|>{7})( |$)|^={7}$", re.MULTILINE)


def test_no_conflict_markers_in_tracked_text():
    files = [p for d in ("src", "tests", "docs", "benchmarks") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".md", ".toml", ".txt", ".csv") and p.is_file()]
    files += [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    bad = [f"{p.relative_to(ROOT)}:{p.read_text(encoding='utf-8').count(chr(10), 0, m.start()) + 1}"
           for p in files if p.exists() for m in [MARKER.search(p.read_text(encoding="utf-8"))] if m]
    assert bad == [], f"merge-conflict markers in {bad}"
