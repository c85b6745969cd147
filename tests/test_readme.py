"""The README's Python example runs as printed (a new user's first contact with the API)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README shows a Python example"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert (lines[0].startswith("(16, 16, ") and lines[0].endswith("placeholder")) or "pretrained" in lines[0]
    dy, dx, score = (float(v) for v in lines[-1].split())
    assert abs(dy - 7) < 0.5 and abs(dx + 4) < 0.5 and 0 < score <= 1
