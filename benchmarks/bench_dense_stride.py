"""DINOv3 features denser than the patch: time, peak memory and fidelity of each way to a stride-4 grid.

On one real ssTEM section (a centre crop, ``--side`` pixels), a random-init ViT-S/16 (seeded; the architecture,
not the weights, sets time and memory) extracts features with each method of docs/backbones.md, each in its own
process so that its peak RSS is its own:

- ``native``   — the model's 16-px grid (the reference for cost);
- ``bilinear`` — ``[stride=4]``: the 16-px grid upsampled bilinearly;
- ``guided``   — ``[stride=4,upsample=guided]``: bilinear, then He et al.'s guided filter by the image;
- ``shift2``   — ``[shifts=2,stride=4]``: 2×2 shift-and-stitch (8-px grid), then bilinear;
- ``shift4``   — ``[shifts=4]``: 4×4 shift-and-stitch, every 4-px cell its own centred patch (16 passes);
- ``scale2``   — ``[scale=2,stride=4]``: input upscaled ×2 (8-px grid, 4× the tokens), then bilinear.

Fidelity: each stride-4 map against ``shift4`` (the model's actual feature of the patch centred on every
cell): mean cosine similarity per cell and relative L2 error. Prints a Markdown table.

    nice .venv/bin/python benchmarks/bench_dense_stride.py [--side 512] [--section 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

METHODS = {
    "native": "vit-small@random(seed=0)",
    "bilinear": "vit-small@random(seed=0)[stride=4]",
    "guided": "vit-small@random(seed=0)[stride=4,upsample=guided]",
    "shift2": "vit-small@random(seed=0)[shifts=2,stride=4]",
    "shift4": "vit-small@random(seed=0)[shifts=4]",
    "scale2": "vit-small@random(seed=0)[scale=2,stride=4]",
}


def _section(index: int, side: int) -> np.ndarray:
    from neuros.plugins.cv.datasets.catalog import load_sstem

    img = np.asarray(load_sstem(sections=[index], downsample=1).images[0], dtype=np.float32)
    y0, x0 = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    return np.ascontiguousarray(img[y0 : y0 + side, x0 : x0 + side])


def _one(method: str, section: int, side: int, out: Path) -> dict:
    """Runs in a child process: build, extract once to warm up, extract again timed; save the features."""
    from neuros.plugins.cv.backbones import BackboneSpec

    img = _section(section, side)
    bb = BackboneSpec.parse(METHODS[method]).build(device="cpu")
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    fm = bb.extract(img)
    seconds = time.perf_counter() - t0
    np.save(out, fm.features)
    return {"method": method, "spec": str(bb.spec), "stride": fm.stride, "grid": list(fm.grid_shape),
            "seconds": seconds, "map_mb": fm.features.nbytes / 2**20, "rss_built_mb": rss_built,
            "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _fidelity(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    a2, r2 = a.reshape(-1, a.shape[-1]).astype(np.float64), ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    cos = (a2 * r2).sum(1) / (np.linalg.norm(a2, axis=1) * np.linalg.norm(r2, axis=1) + 1e-12)
    return float(cos.mean()), float(np.linalg.norm(a2 - r2) / np.linalg.norm(r2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--section", type=int, default=8)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(_one(a.one, a.section, a.side, Path(a.out))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.methods.split(","):
            out = Path(tmp) / f"{m}.npy"
            cmd = [sys.executable, __file__, "--one", m, "--out", str(out), "--side", str(a.side),
                   "--section", str(a.section)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(f"{m} failed:\n{res.stderr[-2000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        ref = np.load(Path(tmp) / "shift4.npy") if (Path(tmp) / "shift4.npy").exists() else None
        for r in rows:
            f = np.load(Path(tmp) / f"{r['method']}.npy")
            r["fidelity"] = _fidelity(f, ref) if ref is not None and f.shape == ref.shape else None
    print(f"ssTEM section {a.section:02d}, {a.side}² centre crop, ViT-S/16 random(seed=0), CPU. {machine()}\n")
    print("| method | spec | stride | grid | time (s) | map (MB) | peak RSS (MB) | RSS after build (MB) | "
          "cosine to shift4 | rel. error to shift4 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fid = r["fidelity"]
        cos, err = (f"{fid[0]:.3f}", f"{fid[1]:.3f}") if fid else ("–", "–")
        print(f"| {r['method']} | `{r['spec']}` | {r['stride']:g} | {r['grid'][0]}×{r['grid'][1]} | "
              f"{r['seconds']:.2f} | {r['map_mb']:.1f} | {r['rss_peak_mb']:.0f} | {r['rss_built_mb']:.0f} | "
              f"{cos} | {err} |")


if __name__ == "__main__":
    main()
