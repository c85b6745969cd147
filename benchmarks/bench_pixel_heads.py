"""Pixel heads on the same stride-1 features: which head the pixel default should be (issue 12).

Train on ssTEM sections 00–07 (1024², full resolution) through ``dense.TiledFeatures`` on
``filterbank[stride=1]``, 30 k class-balanced positions per class, and predict test sections 08 and 11 with
``mlp``, ``hgb``, ``rf`` and ``logistic``: membrane / mitochondria Dice (``metrics.score_images``), fit and predict
wall time, in one run on one machine. The result chose ``heads.DEFAULT_PIXEL_HEAD``.

    .venv/bin/python benchmarks/bench_pixel_heads.py            # ~3 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import time

from neuros.plugins.cv.backbones import get_backbone
from neuros.plugins.cv.datasets.catalog import load_sstem
from neuros.plugins.cv.dense import TiledFeatures
from neuros.plugins.cv.heads import make_head
from neuros.plugins.cv.metrics import score_images

HEADS = {
    "mlp": {"hidden": 64, "epochs": 20, "batch_size": 4096, "lr": 3e-3},
    "hgb": {"max_iter": 100},
    "rf": {"n_estimators": 50, "n_jobs": 2},
    "logistic": {},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="filterbank[stride=1]")
    ap.add_argument("--per-class", type=int, default=30_000, help="training positions per class (default 30000)")
    ap.add_argument("--test", type=int, nargs="+", default=[8, 11], help="test sections (default 8 11)")
    args = ap.parse_args(argv)
    train, test = load_sstem(sections=range(8), downsample=1), load_sstem(sections=args.test, downsample=1)
    bb = get_backbone(args.backbone)
    sources = [TiledFeatures(bb, im) for im in train.images]
    print("| head | membrane Dice | mitochondria Dice | fit (s) | predict (s) |\n|---|---:|---:|---:|---:|")
    for kind, params in HEADS.items():
        head = make_head(kind, class_weight="balanced", max_samples_per_class=args.per_class, **params)
        t0 = time.perf_counter()
        head.fit(sources, train.masks)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        preds = [head.predict(TiledFeatures(bb, im)) for im in test.images]
        pred = time.perf_counter() - t0
        d = score_images(test.masks, preds, 3, ("other", "membrane", "mitochondria"), n_boot=10)["classes"]
        print(f"| {kind} | {d['membrane']['dice']:.3f} | {d['mitochondria']['dice']:.3f} | {fit:.1f} | {pred:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
