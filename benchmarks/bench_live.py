"""Live-mode latency of the napari plugin: retrain + predict one 1024² EM slice after a new stroke, features cached.

What is timed (each a median over ``--repeats`` strokes, after one warm-up that fills the feature cache):

- **ours (Live default)**: ``napari_plugin.session.Session`` exactly as the widget's Live mode calls it —
  ``train`` (logistic head, balanced, at most 5 000 positions per class, on cached ``filterbank[stride=1]``
  features) + ``predict_slice`` of the whole slice (the visible area when the slice fills the screen);
- **other heads** on the same cached features (``rf`` 100 trees, a small ``rf``, ``hgb``), to show why Live uses
  logistic regression;
- **peer, classical loop**: napari-convpaint cannot run here (its feature extractors import ``timm``, which needs
  ``torchvision``, which does not install beside the pinned torch 2.13.0+cpu), so the peer is the classical
  loop it and scikit-image's "trainable segmentation" use: ``skimage.feature.multiscale_basic_features``
  (intensity, edges, texture at σ 1…16) + ``RandomForestClassifier(n_estimators=50, max_depth=10,
  max_samples=0.05)`` through ``skimage.future.fit_segmenter`` / ``predict_segmenter`` — timed with its
  features cached (the same loop as ours) and with features recomputed per stroke (what a plugin without a
  cache does);
- optionally (``--viewer``) **end to end in napari**: a stroke painted into the scribble layer of a real viewer
  (headless, Xvfb) until the prediction layer is updated, minus the widget's 150 ms debounce.

Scribbles are :func:`~neuros.plugins.cv.scribbles.simulate_scribbles` of the synthetic EM mask (a new seed per
stroke adds strokes); Dice of the object class against the full mask is reported for every method.

Usage::

    python benchmarks/bench_live.py --size 1024 --repeats 5 --out results/bench_live.json [--viewer]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from neuros.plugins.cv.datasets.synthetic import make_image
from neuros.plugins.cv.heads import make_head
from neuros.plugins.cv.napari_plugin.session import LIVE_HEAD, Session
from neuros.plugins.cv.scribbles import simulate_scribbles


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1))


def _strokes(mask: np.ndarray, n: int) -> list[np.ndarray]:
    """Scribble masks of growing size: seed 0's strokes, then each stroke set adds another seed's."""
    out, acc = [], np.zeros(mask.shape, np.uint8)
    for seed in range(n):
        s = simulate_scribbles(mask, seed=seed, per_object=1, per_background=1).astype(np.uint8)
        acc = np.where(acc == 0, s, acc)
        out.append(acc.copy())
    return out


def _timed(fn, *args: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    res = fn(*args)
    return time.perf_counter() - t, res


def _row(name: str, times: list[float], dice: float, note: str = "") -> dict[str, Any]:
    return {"method": name, "median_s": float(np.median(times)), "max_s": float(np.max(times)),
            "times_s": [round(t, 4) for t in times], "dice": round(dice, 4), "note": note}


def bench_ours(image: np.ndarray, mask: np.ndarray, strokes: list[np.ndarray],
               other_heads: bool = True) -> tuple[list[dict], float]:
    s = Session("filterbank[stride=1]")
    t_feat, _ = _timed(s.features, "em", 0, image)
    rows = []
    times, dice = [], 0.0
    for sc in strokes:
        t, _ = _timed(s.train, "em", image, sc)
        t2, (labels, _, _) = _timed(s.predict_slice, "em", 0, image)
        times.append(t + t2)
        dice = _dice(labels == 2, mask)
    rows.append(_row(f"ours Live default ({LIVE_HEAD.kind}, ≤{LIVE_HEAD.max_samples_per_class}/class)", times, dice,
                     "Session.train + predict_slice, cached filterbank[stride=1] (33 channels)"))
    fm = s.features("em", 0, image)
    for name, kind, kw in [] if not other_heads else [("rf 100 trees (depth 16)", "rf", {}),
                           ("rf 20 trees, depth 10", "rf", {"n_estimators": 20, "max_depth": 10}),
                           ("hgb (200 iterations)", "hgb", {})]:
        times = []
        for sc in strokes[:2]:
            head = make_head(kind, class_weight="balanced", unlabelled=0,
                             max_samples_per_class=LIVE_HEAD.max_samples_per_class, **kw)
            t, _ = _timed(head.fit, fm, sc)
            t2, labels = _timed(head.predict, fm)
            times.append(t + t2)
        rows.append(_row(f"ours, {name}", times, _dice(labels == 2, mask), "same cached features, 2 strokes"))
    return rows, t_feat


def bench_peer(image: np.ndarray, mask: np.ndarray, strokes: list[np.ndarray]) -> tuple[list[dict], float]:
    from functools import partial

    from skimage import feature, future
    from sklearn.ensemble import RandomForestClassifier

    features_fn = partial(feature.multiscale_basic_features, intensity=True, edges=True, texture=True,
                          sigma_min=1, sigma_max=16, channel_axis=None)
    t_feat, feats = _timed(features_fn, image)
    rows = []
    for cached in (True, False):
        times, dice = [], 0.0
        for sc in strokes if cached else strokes[:2]:
            clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10, max_samples=0.05, random_state=0)
            t0 = time.perf_counter()
            f = feats if cached else features_fn(image)
            clf = future.fit_segmenter(sc, f, clf)
            labels = future.predict_segmenter(f, clf)
            times.append(time.perf_counter() - t0)
            dice = _dice(labels == 2, mask)
        rows.append(_row("peer: skimage multiscale_basic_features + RF(50, depth 10)"
                         + (", features cached" if cached else ", features per stroke"), times, dice,
                         f"{feats.shape[-1]} channels"))
    return rows, t_feat


def _viewer_with_widget(image: np.ndarray, dock_name: str | None = None):
    """A headless napari viewer with the image, an empty scribble layer and the segmentation widget docked.

    Returns ``(viewer, labels, widget, wait)``; ``wait(n)`` processes Qt events until the widget has finished
    ``n`` runs.
    """
    from neuros.plugins.cv.napari_plugin.headless import ensure_headless

    ensure_headless()
    import napari
    from qtpy.QtWidgets import QApplication

    from neuros.plugins.cv.napari_plugin.widget import SegmentWidget

    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="em")
    labels = viewer.add_labels(np.zeros(image.shape, np.uint8), name="scribbles")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, **({} if dock_name is None else {"name": dock_name}))
    w.image_combo.setCurrentText("em")
    w.labels_combo.setCurrentText("scribbles")
    app = QApplication.instance()

    def wait(runs: int) -> None:
        while w.n_runs < runs or w.busy:
            app.processEvents()
            time.sleep(0.002)

    return viewer, labels, w, wait


def bench_viewer(image: np.ndarray, mask: np.ndarray, strokes: list[np.ndarray]) -> dict[str, Any]:
    """Stroke → prediction layer updated, through the real widget in a headless viewer."""
    from neuros.plugins.cv.napari_plugin.widget import LIVE_DELAY_MS

    viewer, labels, w, wait = _viewer_with_widget(image)
    labels.data_setitem(np.nonzero(strokes[0]), 1)  # warm-up: features cached by a first Train
    labels.data_setitem(np.nonzero(strokes[0] == 2), 2)
    w.train_button.click()
    wait(1)
    viewer.reset_view()
    w.live_check.setChecked(True)
    times, worker = [], []
    for prev, sc in pairwise(strokes):
        new = (sc > 0) & (prev == 0)
        runs = w.n_runs
        t = time.perf_counter()
        for v in (1, 2):
            if (new & (sc == v)).any():
                labels.data_setitem(np.nonzero(new & (sc == v)), v)
        wait(runs + 1)
        times.append(time.perf_counter() - t - LIVE_DELAY_MS / 1000)
        worker.append(w.last_seconds)
    pred = np.asarray(viewer.layers["em prediction"].data)
    viewer.close()
    return _row("ours end to end in napari (stroke → layer, minus 150 ms debounce)", times, _dice(pred == 2, mask),
                f"widget Live mode, headless viewer; worker (train + predict) median {np.median(worker):.3f} s")


def screenshot(path: Path, size: int = 512) -> None:
    """The docs' picture: synthetic EM, thick scribbles, the Live prediction, the widget docked (window PNG)."""
    import imageio.v3 as iio

    image, mask = make_image("em", size, seed=1)
    first = simulate_scribbles(mask, seed=0, per_object=1, per_background=2, width=5).astype(np.uint8)
    more = simulate_scribbles(mask, seed=5, per_object=1, per_background=1, width=5).astype(np.uint8)
    viewer, labels, w, wait = _viewer_with_widget(image, dock_name="neurOS cv")
    viewer.window.resize(1100, 640)
    from qtpy.QtWidgets import QApplication  # after the helper has chosen the Qt platform
    for v in (1, 2):
        labels.data_setitem(np.nonzero(first == v), v)
    w.train_button.click()
    wait(1)
    viewer.reset_view()
    w.live_check.setChecked(True)
    new = (more > 0) & (first == 0)
    for v in (1, 2):
        labels.data_setitem(np.nonzero(new & (more == v)), v)
    wait(2)
    pred = viewer.layers["em prediction"]
    pred.opacity = 0.35
    viewer.layers.move(viewer.layers.index(labels), len(viewer.layers))  # strokes on top of the prediction
    viewer.layers.selection.active = labels
    for _ in range(20):
        QApplication.instance().processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    iio.imwrite(path, shot[..., :3])
    viewer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5, help="strokes timed (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-other-heads", action="store_true", help="skip the rf/hgb comparison rows (slow)")
    p.add_argument("--viewer", action="store_true", help="also time the widget end to end in a headless viewer")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--screenshot", type=Path, default=None,
                   help="only save the docs' screenshot (PNG) of the widget in Live mode and exit")
    args = p.parse_args(argv)
    if args.screenshot is not None:
        screenshot(args.screenshot)
        return 0
    image, mask = make_image("em", args.size, seed=args.seed)
    mask = mask.astype(bool)
    strokes = _strokes(mask, args.repeats)
    load_before = os.getloadavg()
    ours, t_ours = bench_ours(image, mask, strokes, other_heads=not args.no_other_heads)
    peer, t_peer = bench_peer(image, mask, strokes)
    rows = ours + peer
    if args.viewer:
        rows.append(bench_viewer(image, mask, strokes))
    result = {"size": args.size, "repeats": args.repeats, "labelled_pixels": [int((s > 0).sum()) for s in strokes],
              "feature_seconds": {"ours filterbank[stride=1]": round(t_ours, 3),
                                  "peer multiscale_basic_features": round(t_peer, 3)},
              "rows": rows, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                        "load_before": load_before, "load_after": os.getloadavg()}}
    print(f"{args.size}² synthetic EM, {args.repeats} strokes; labelled pixels {result['labelled_pixels']}")
    print(f"features once: ours {t_ours:.2f} s, peer {t_peer:.2f} s")
    for r in rows:
        print(f"{r['method']:<95} median {r['median_s']:.3f} s  max {r['max_s']:.3f} s  Dice {r['dice']:.3f}")
    print(f"load average before {load_before[0]:.2f}, after {result['machine']['load_after'][0]:.2f} "
          f"({os.cpu_count()} CPUs)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
