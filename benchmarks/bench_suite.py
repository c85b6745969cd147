"""Time the default `neuros-cv bench` (the README's first command, minus set-up).

Runs the CLI as a user would (a fresh process each time) ``--repeats`` times, and in the same run the
baseline of a bare start-up (``neuros-cv --version``: interpreter + imports), so the share of start-up in the
total is a ratio measured here, not a constant. Prints a Markdown section for docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_suite.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

CLI = [sys.executable, "-m", "neuros.plugins.cv.cli"]


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*CLI, *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    try:
        bench, start, stages = [], [], []
        for i in range(args.repeats):  # interleaved, so load from other jobs hits both sides alike
            start.append(timed(["--version"]))
            out = tmp / f"run{i}"
            bench.append(timed(["bench", "--out", str(out)]))
            stages.append(json.loads((out / "results.json").read_text())["provenance"]["timings_s"])
        med_b, med_s = statistics.median(bench), statistics.median(start)
        weights = json.loads((tmp / "run0" / "results.json").read_text())["backbones"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Machine: {machine()}")
    print("Command: `neuros-cv bench --out DIR` (default suite: the report's three experiments, seed 0)")
    print("Weights: " + ", ".join(f"{w['name']} = {w['weights']}" for w in weights))
    print()
    print(f"| measure | median of {args.repeats} (s) | runs (s) |")
    print("|---|---:|---|")
    print(f"| `neuros-cv bench` wall | {med_b:.2f} | {', '.join(f'{t:.2f}' for t in bench)} |")
    print(f"| start-up baseline (`neuros-cv --version`) | {med_s:.2f} | {', '.join(f'{t:.2f}' for t in start)} |")
    for k in stages[0]:
        vals = [s[k] for s in stages]
        print(f"| stage `{k}` (in-process) | {statistics.median(vals):.2f} | {', '.join(f'{v:.2f}' for v in vals)} |")
    print()
    print(f"Start-up is {med_s / med_b:.0%} of the bench wall time; target < 60 s: "
          f"{'met' if med_b < 60 else 'NOT met'} ({med_b:.1f} s).")


if __name__ == "__main__":
    main()
