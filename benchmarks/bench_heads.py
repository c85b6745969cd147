"""Time every segmentation head on 10⁶ patches × 384 features, and pixel upsampling against a pixel loop.

Heads are timed through the public API (``fit(feature_maps, masks)`` then ``predict(maps, level="patch")``)
on synthetic feature maps of 32×32 patches (512² images) whose masks depend on the features, so every head
has something to learn. Heads that cannot handle ``--n`` patches in reasonable time here (kNN prediction is
O(n_train · n_query), the forest and the MLP are slow to train on 2 cores) are measured at ``--n-small`` and
extrapolated linearly to ``--n`` — those rows are labelled "extrapolated".

Upsampling: the vectorised bilinear path (``features.upsample_to_pixels``) against the report-era approach of
a Python loop over output pixels, both measured in this run (the loop on a small image), as pixels per second.

    .venv/bin/python benchmarks/bench_heads.py [--n 1000000] [--n-small 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from neuros.plugins.cv.features import FeatureMap, upsample_to_pixels
from neuros.plugins.cv.heads import make_head

GRID, STRIDE, DIM = 32, 16, 384
FULL = ("logistic", "sgd")  # run at --n
SMALL = ("knn", "rf", "mlp")  # run at --n-small, extrapolated


def synthetic(n_patches: int, seed: int = 0) -> tuple[list[FeatureMap], list[np.ndarray]]:
    """Feature maps with n_patches patches in total and masks whose patch labels follow the features."""
    rng = np.random.default_rng(seed)
    n_maps = max(1, -(-n_patches // (GRID * GRID)))  # ceil: at least n_patches
    feats = rng.standard_normal((n_maps, GRID, GRID, DIM), dtype=np.float32)
    w = rng.standard_normal(DIM).astype(np.float32)
    fg = (feats @ w) > 0.5 * np.sqrt(DIM)  # ~31 % foreground patches
    maps = [FeatureMap(feats[i], float(STRIDE), (GRID * STRIDE, GRID * STRIDE), "bench", "synthetic")
            for i in range(n_maps)]
    masks = [np.kron(fg[i], np.ones((STRIDE, STRIDE), np.uint8)).astype(np.uint8) for i in range(n_maps)]
    return maps, masks


def time_head(kind: str, maps, masks, **params) -> tuple[float, float, float]:
    head = make_head(kind, **params)
    t0 = time.perf_counter()
    head.fit(maps, masks)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = head.predict(maps, level="patch")
    t_pred = time.perf_counter() - t0
    truth = np.concatenate([m[::STRIDE, ::STRIDE].ravel() for m in masks])
    acc = float((np.concatenate([p.ravel() for p in pred]) == truth).mean())
    return t_fit, t_pred, acc


def loop_upsample(values: np.ndarray, stride: float, shape: tuple[int, int]) -> np.ndarray:
    """The report-era way: bilinear interpolation pixel by pixel in Python (the baseline; do not use)."""
    h, w, k = values.shape
    out = np.zeros((shape[0], shape[1], k), np.float32)
    for y in range(shape[0]):
        for x in range(shape[1]):
            gy = min(max((y + 0.5) / stride - 0.5, 0), h - 1)
            gx = min(max((x + 0.5) / stride - 0.5, 0), w - 1)
            y0, x0 = int(gy), int(gx)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = gy - y0, gx - x0
            out[y, x] = ((1 - fy) * (1 - fx) * values[y0, x0] + (1 - fy) * fx * values[y0, x1]
                         + fy * (1 - fx) * values[y1, x0] + fy * fx * values[y1, x1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="patches for logistic and sgd (default 10⁶)")
    ap.add_argument("--n-small", type=int, default=20_000, help="patches for knn, rf, mlp (extrapolated)")
    ap.add_argument("--heads", nargs="+", default=[*FULL, *SMALL])
    args = ap.parse_args()
    print(f"Machine: {machine()}")
    print(f"Command: .venv/bin/python benchmarks/bench_heads.py --n {args.n} --n-small {args.n_small}\n")
    params = {"mlp": {"epochs": 5}, "rf": {"n_estimators": 50, "n_jobs": 2}}
    rows = []
    for group, n in ((FULL, args.n), (SMALL, args.n_small)):
        kinds = [k for k in group if k in args.heads]
        if not kinds:
            continue
        maps, masks = synthetic(n)
        real_n = len(maps) * GRID * GRID
        for kind in kinds:
            t_fit, t_pred, acc = time_head(kind, maps, masks, **params.get(kind, {}))
            scale = 1.0 if real_n >= args.n else args.n / real_n
            # kNN prediction grows with n_train · n_query, i.e. quadratically in n when both grow.
            pred_scale = scale**2 if kind == "knn" else scale
            label = f"measured on {real_n:,}" if scale == 1.0 else f"extrapolated from {real_n:,} (×{scale:.0f}" + (
                ", predict ×n²)" if kind == "knn" else ")")
            rows.append((kind, t_fit * scale, t_pred * pred_scale, acc, label))
            print(f"  {kind}: fit {t_fit:.2f} s, predict {t_pred:.2f} s on {real_n:,} patches, acc {acc:.3f}",
                  file=sys.stderr)
        del maps, masks
    print(f"| head | fit, {args.n:,} patches (s) | predict, {args.n:,} patches (s) | patch accuracy | how |")
    print("|---|---:|---:|---:|---|")
    for kind, f, p, acc, label in rows:
        print(f"| {kind} | {f:.1f} | {p:.1f} | {acc:.3f} | {label} |")

    rng = np.random.default_rng(1)
    small = rng.random((8, 8, 2)).astype(np.float32)  # 128² output for the loop
    t0 = time.perf_counter()
    ref = loop_upsample(small, STRIDE, (128, 128))
    t_loop = time.perf_counter() - t0
    np.testing.assert_allclose(upsample_to_pixels(small, STRIDE, (128, 128)), ref, atol=1e-5)
    big = rng.random((128, 128, 2)).astype(np.float32)  # 2048² output
    upsample_to_pixels(big, STRIDE, (2048, 2048))
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        upsample_to_pixels(big, STRIDE, (2048, 2048))
    t_vec = (time.perf_counter() - t0) / reps
    loop_rate, vec_rate = 128 * 128 / t_loop, 2048 * 2048 / t_vec
    print("\n| upsampling (K = 2 classes) | image | pixels / s |")
    print("|---|---|---:|")
    print(f"| Python loop over pixels (report-era) | 128² | {loop_rate:,.0f} |")
    print(f"| vectorised bilinear (`upsample_to_pixels`) | 2048² | {vec_rate:,.0f} |")
    print(f"\nSpeed-up of the vectorised path: ×{vec_rate / loop_rate:,.0f} (same run; outputs agree to 1e-5).")


if __name__ == "__main__":
    main()
