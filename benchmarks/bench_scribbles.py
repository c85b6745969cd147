"""How close training from scribbles gets to training on full masks: ssTEM, the pixel default head (issue 14).

The goal (issue 14): from simulated scribbles (a few strokes per class, fixed seed), mitochondria Dice within
0.05 of training on the full masks. Scribbles are drawn by :func:`neuros.plugins.cv.scribbles.simulate_scribbles`
(two short strokes along the centre line of every object and background region, one more per 400 skeleton
pixels of a large one) at stroke widths ``--widths`` (1 = the skeleton itself; 3 = a narrow brush; napari's
labels brush is 10 px by default) and for several scribble seeds (``--seeds``: where the strokes fall), with
the head's own seed fixed, so the spread says how much the result depends on where a person happens to paint.

Two protocols, both from :class:`neuros.plugins.cv.experiments.pixel_suite.PixelSuiteConfig`:

* ``suite``: the real suite's EM pixel rows as ``bench --suite real`` runs them (4 of the 8 training sections,
  512² centre crops of test sections 08–13);
* ``full``: every training section 00–07, whole 1024² test sections 08–13 (``bench --suite real --full``).

Every row uses the pixel default (``filterbank[stride=1]`` + class-balanced MLP, 30 k positions per class);
Dice is pooled over the test pixels. Output: a Markdown table and ``--json``.

    nice -n 10 .venv/bin/python benchmarks/bench_scribbles.py --protocols suite full --json results/scribbles.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from neuros.plugins.cv.backbones.spec import BackboneSpec
from neuros.plugins.cv.dense import TiledFeatures
from neuros.plugins.cv.experiments.pixel_suite import PixelSuiteConfig, load_pixel_data
from neuros.plugins.cv.heads import DEFAULT_PIXEL_HEAD, make_head
from neuros.plugins.cv.metrics import score_images
from neuros.plugins.cv.scribbles import dense_classes, labelled_fraction, simulate_scribbles

CLASSES = ("other", "membrane", "mitochondria")


def config(protocol: str) -> PixelSuiteConfig:
    base = PixelSuiteConfig(datasets=("em",))
    return base if protocol == "suite" else PixelSuiteConfig(datasets=("em",), em_train_sections=None,
                                                             em_test_crop=None)


def fit_score(cfg: PixelSuiteConfig, bb, train, masks, test, test_masks, unlabelled: int | None) -> dict:
    """Fit the pixel default on (train, masks), score the test images: Dice per class and the fit time."""
    head = make_head(DEFAULT_PIXEL_HEAD.kind, class_weight=DEFAULT_PIXEL_HEAD.class_weight, unlabelled=unlabelled,
                     max_samples_per_class=cfg.max_samples_per_class, seed=cfg.seed)
    t0 = time.perf_counter()
    head.fit(train, masks)
    fit_s = time.perf_counter() - t0
    pred = head.predict(test)
    if unlabelled is not None:  # trained on scribble values (class + 1)
        pred = [dense_classes(p) for p in pred]
    s = score_images(test_masks, pred, len(CLASSES), CLASSES, n_boot=200, seed=0)["classes"]
    return {"membrane": s["membrane"]["dice"], "mitochondria": s["mitochondria"]["dice"],
            "mitochondria_ci": s["mitochondria"]["dice_ci"], "fit_s": fit_s}


def run(protocol: str, widths: list[int], seeds: list[int]) -> list[dict]:
    cfg = config(protocol)
    data = load_pixel_data(cfg)["em"]
    bb = BackboneSpec.parse(cfg.pixel_backbone).build()
    images, masks = data["train"]
    test_images, test_masks = data["test"]
    train = [TiledFeatures(bb, im) for im in images]
    test = [TiledFeatures(bb, im) for im in test_images]
    rows = [{"protocol": protocol, "labels": "dense", "width": None, "seed": None, "labelled_fraction": 1.0,
             **fit_score(cfg, bb, train, masks, test, test_masks, None)}]
    print(f"{protocol} dense: {rows[-1]['membrane']:.3f} / {rows[-1]['mitochondria']:.3f}", flush=True)
    for w in widths:
        for s in seeds:  # image i of scribble seed s gets seed 100·s + i (s = 0: the suite's own scribbles)
            scr = [simulate_scribbles(m, seed=100 * s + i, width=w) for i, m in enumerate(masks)]
            row = {"protocol": protocol, "labels": "scribbles", "width": w, "seed": s,
                   "labelled_fraction": float(np.mean([labelled_fraction(x) for x in scr])),
                   **fit_score(cfg, bb, train, scr, test, test_masks, 0)}
            row["mito_lost"] = rows[0]["mitochondria"] - row["mitochondria"]
            rows.append(row)
            print(f"{protocol} width {w} seed {s}: {row['membrane']:.3f} / {row['mitochondria']:.3f} "
                  f"(mito lost {row['mito_lost']:+.3f}, {100 * row['labelled_fraction']:.2f} % labelled)", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| protocol | labels | stroke width (px) | scribble seed | labelled | membrane Dice | mito Dice | "
           "mito lost vs dense |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lost = "" if r["labels"] == "dense" else f"{r['mito_lost']:+.3f}"
        seed = "" if r["seed"] is None else r["seed"]
        out.append(f"| {r['protocol']} | {r['labels']} | {r['width'] or ''} | {seed} | "
                   f"{100 * r['labelled_fraction']:.2f} % | {r['membrane']:.3f} | {r['mitochondria']:.3f} | {lost} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocols", nargs="+", default=["suite", "full"], choices=["suite", "full"])
    p.add_argument("--widths", nargs="+", type=int, default=[1, 3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    t0 = time.time()
    rows = [r for proto in args.protocols for r in run(proto, args.widths, args.seeds)]
    out = {"machine": machine(), "wall_s": time.time() - t0, "rows": rows}
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
