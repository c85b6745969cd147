"""Pixel segmentation on real EM at 1024², 2048² and 4096²: ours vs the ilastik recipe, time, peak memory, Dice.

Data: the real ssTEM sections (../shared/data/sstem_drosophila_vnc, 1024², full resolution, classes 0 other /
1 membrane / 2 mitochondria). Train on sections 00–07, test on 08–13:

* ``1024``: the sections as they are — fit on the 8 training sections, predict each of the 6 test sections;
* ``2048`` / ``4096``: one mosaic image of 2×2 / 4×4 sections — fit on the mosaic of training sections
  (00–07 in order, cycled: the 4096² mosaic holds each training section twice), predict the mosaic of test
  sections (08–13 cycled: 08–13, 08–13, 08–11 for 4096²). Sections abut at their edges, as tiles would.

Methods, each step (train, predict) in a fresh subprocess that reports its own peak resident memory (VmHWM,
which unlike ``ru_maxrss`` is not inherited across fork+exec) and wall time:

* ``ilastik`` — :class:`neuros.plugins.cv.classical.IlastikRecipe`: ``multiscale_basic_features`` σ 1–16 +
  100-tree random forest on 200 k pixels sampled uniformly from the labelled pixels (Sommer et al. 2011);
* ``ours`` — :data:`OURS_SPEC` (the real suite's ``PIXEL_BACKBONE``) through ``dense.TiledFeatures`` + the pixel head
  (``make_head("mlp", class_weight="balanced")``) with a per-class sampling budget.

Dice is membrane / mitochondria Dice pooled over the test pixels (``metrics.score_images``). Ratios (time,
memory, Dice) are against the ilastik recipe measured in the same run. Peak memory includes the Python
process, the libraries and the image arrays (``rss_base_mib`` is the peak before the method starts).

``--memory`` measures peak memory against image size instead: each method is trained once, small (sections
00–01; forest of 10 trees, MLP of 5 epochs: memory per tile does not depend on the model's size, time
does), then predicts one 1024² section and the 2048² and 4096² test mosaics, each in a fresh process. Peak
memory must stay flat beyond one tile (1024² plus halo).

    nice -n 10 .venv/bin/python benchmarks/bench_pixel.py --out results/bench_pixel [--quick | --memory]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from neuros.plugins.cv.experiments.pixel_suite import PIXEL_BACKBONE as OURS_SPEC

TRAIN, TEST = tuple(range(8)), tuple(range(8, 14))
CLASSES = ("other", "membrane", "mitochondria")
METHODS = ("ilastik", "ours")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads): robust to other jobs on the machine."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- data
def mosaic(arrays: list[np.ndarray], n: int) -> np.ndarray:
    """An n×n mosaic of the arrays, taken in order and cycled."""
    k = len(arrays)
    rows = [np.concatenate([arrays[(i * n + j) % k] for j in range(n)], axis=1) for i in range(n)]
    return np.concatenate(rows, axis=0)


def dataset(size: int, split: tuple[int, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images and masks of one split: the sections themselves at 1024, else one size² mosaic."""
    from neuros.plugins.cv.datasets.catalog import load_sstem

    ds = load_sstem(sections=split, downsample=1)
    if size == 1024:
        return list(ds.images), list(ds.masks)
    n = size // 1024
    return [mosaic(list(ds.images), n)], [mosaic(list(ds.masks), n)]


# --------------------------------------------------------------------------- methods
def make_method(method: str, mode: str) -> Any:
    small = mode != "full"
    if method == "ilastik":
        from neuros.plugins.cv.classical import IlastikRecipe

        trees = {"full": 100, "quick": 20, "memory": 10}[mode]
        return IlastikRecipe(n_estimators=trees, max_pixels=50_000 if small else 200_000, n_jobs=-1, seed=0)
    try:  # issue 12: lazily tiled pixel features and pixel heads
        from neuros.plugins.cv import dense  # noqa: F401
        from neuros.plugins.cv.backbones.spec import BackboneSpec
        from neuros.plugins.cv.heads import make_head
    except ImportError as err:
        raise NotImplementedError(f"ours needs issue 12's dense features and pixel heads ({err})") from err
    return {"backbone": BackboneSpec.parse(OURS_SPEC).build(),
            "head": make_head("mlp", seed=0, class_weight="balanced", epochs=5 if mode == "memory" else 30,
                              max_samples_per_class=20_000 if small else 70_000)}


def fit(model: Any, method: str, images: list[np.ndarray], masks: list[np.ndarray]) -> Any:
    if method == "ilastik":
        return model.fit(images, masks)
    from neuros.plugins.cv.dense import TiledFeatures

    model["head"].fit([TiledFeatures(model["backbone"], im, tile=1024) for im in images], masks)
    return model


def predict(model: Any, method: str, image: np.ndarray) -> np.ndarray:
    if method == "ilastik":
        return model.predict(image)
    from neuros.plugins.cv.dense import TiledFeatures

    pred = model["head"].predict([TiledFeatures(model["backbone"], image, tile=1024)], level="pixel")
    return np.asarray(pred[0] if isinstance(pred, list) else pred)


# --------------------------------------------------------------------------- one step in this process
def worker(step: str, method: str, size: int, model_path: Path, mode: str) -> dict[str, Any]:
    train, test = {"full": (TRAIN, TEST), "quick": (TRAIN[:2], TEST[:1]), "memory": (TRAIN[:2], TEST)}[mode]
    if step == "train":
        images, masks = dataset(size, train)
        base = peak_rss_mib()
        model = make_method(method, mode)
        t0, c0 = time.perf_counter(), cpu_seconds()
        model = fit(model, method, images, masks)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        with open(model_path, "wb") as fh:
            pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return {"seconds": seconds, "cpu_seconds": cpu, "rss_peak_mib": peak_rss_mib(), "rss_base_mib": base,
                "train_pixels": int(sum(m.size for m in masks))}
    from neuros.plugins.cv.metrics import score_images

    images, masks = dataset(1024 if mode == "memory" else size, test)
    if mode == "memory":  # one image of each size: the 1024² one is section 08 alone
        images, masks = [mosaic(images, size // 1024)], [mosaic(masks, size // 1024)]
    with open(model_path, "rb") as fh:
        model = pickle.load(fh)
    base = peak_rss_mib()
    t0, c0 = time.perf_counter(), cpu_seconds()
    preds = [predict(model, method, im) for im in images]
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    peak = peak_rss_mib()
    s = score_images(masks, [p.astype(np.int64) for p in preds], 3, CLASSES, n_boot=200)
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_peak_mib": peak, "rss_base_mib": base,
            "test_pixels": int(sum(m.size for m in masks)),
            "dice": {c: s["classes"][c]["dice"] for c in CLASSES[1:]},
            "dice_ci": {c: s["classes"][c]["dice_ci"] for c in CLASSES[1:]}}


def run_step(step: str, method: str, size: int, model_path: Path, mode: str) -> dict[str, Any]:
    """Run one step in a fresh interpreter and return its JSON result (or the error it raised)."""
    cmd = [sys.executable, __file__, "--worker", step, "--method", method, "--size", str(size),
           "--model", str(model_path), "--mode", mode]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": last, "process_seconds": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = wall
    return out


# --------------------------------------------------------------------------- report
def table(results: dict[str, Any]) -> str:
    lines = ["| image | method | train (s) | predict (s) | total (s) | CPU train / predict (s) | "
             "peak RSS train / predict (MiB) | "
             "membrane Dice | mito Dice | time vs ilastik | Dice vs ilastik (mem / mito) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size, per in results["sizes"].items():
        ref = per.get("ilastik", {})
        for method, r in per.items():
            if "error" in r:
                lines.append(f"| {size}² | {method} | — | — | — | — | — | — | — | — | pending: {r['error']} |")
                continue
            total = r["train"]["seconds"] + r["predict"]["seconds"]
            d = r["predict"]["dice"]
            if "error" not in ref and method != "ilastik":
                rt = ref["train"]["seconds"] + ref["predict"]["seconds"]
                rd = ref["predict"]["dice"]
                ratio = f"×{rt / total:.2f} faster"
                dratio = f"{d['membrane'] / rd['membrane']:.2f} / {d['mitochondria'] / rd['mitochondria']:.2f}"
            else:
                ratio, dratio = "1 (reference)", "1 / 1"
            lines.append(
                f"| {size}² | {method} | {r['train']['seconds']:.1f} | {r['predict']['seconds']:.1f} | {total:.1f} | "
                f"{r['train']['cpu_seconds']:.0f} / {r['predict']['cpu_seconds']:.0f} | "
                f"{r['train']['rss_peak_mib']:.0f} / {r['predict']['rss_peak_mib']:.0f} | "
                f"{d['membrane']:.3f} | {d['mitochondria']:.3f} | {ratio} | {dratio} |")
    return "\n".join(lines)


def memory_table(results: dict[str, Any]) -> str:
    lines = ["| method | image | predict (s) | predict CPU (s) | peak RSS before / during predict (MiB) |",
             "|---|---|---:|---:|---:|"]
    for method, per in results["memory"].items():
        for size, r in per.items():
            if "error" in r:
                lines.append(f"| {method} | {size}² | — | — | pending: {r['error']} |")
            else:
                lines.append(f"| {method} | {size}² | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                             f"{r['rss_base_mib']:.0f} / {r['rss_peak_mib']:.0f} |")
    return "\n".join(lines)


def run_comparison(sizes: list[int], methods: list[str], mode: str, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sizes:
        per: dict[str, Any] = {}
        for method in methods:
            path = tmp / f"{method}-{size}.pkl"
            tr = run_step("train", method, size, path, mode)
            if "error" in tr:
                per[method] = {"error": tr["error"]}
            else:
                pr = run_step("predict", method, size, path, mode)
                per[method] = {"error": pr["error"]} if "error" in pr else {"train": tr, "predict": pr}
            print(f"{size}² {method}: {json.dumps(per[method])}", file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
        out[str(size)] = per
    return out


def run_memory(sizes: list[int], methods: list[str], tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in methods:
        path = tmp / f"{method}-memory.pkl"
        tr = run_step("train", method, 1024, path, "memory")
        out[method] = {str(s): ({"error": tr["error"]} if "error" in tr
                                else run_step("predict", method, s, path, "memory")) for s in sizes}
        print(f"memory {method}: {json.dumps(out[method])}", file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench_pixel"),
                    help="folder for results.json and results.md (default results/bench_pixel)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], choices=[1024, 2048, 4096],
                    help="image sides to run (default 1024 2048 4096)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--quick", action="store_true",
                     help="smoke run: 1024 only, train on sections 00–01, test on 08, smaller forest and budgets")
    how.add_argument("--memory", action="store_true",
                     help="peak memory against image size (small models trained once, predict at each size)")
    ap.add_argument("--worker", choices=("train", "predict"), help=argparse.SUPPRESS)
    ap.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("full", "quick", "memory"), default="full", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.method, args.size, args.model, args.mode)))
        return
    command = "nice -n 10 .venv/bin/python benchmarks/bench_pixel.py " + " ".join(sys.argv[1:])
    results: dict[str, Any] = {"machine": machine(), "command": command.strip(), "quick": args.quick,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory:
            results["memory"] = run_memory(args.sizes, args.methods, Path(tmp))
            body = memory_table(results)
        else:
            mode = "quick" if args.quick else "full"
            results["sizes"] = run_comparison([1024] if args.quick else args.sizes, args.methods, mode, Path(tmp))
            body = table(results)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = (f"Machine: {results['machine']}\n\nCommand: `{results['command']}` ({results['started']} → "
          f"{results['finished']})\n\n{body}\n")
    (args.out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
