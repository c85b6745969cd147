"""Transform-model registration against ANTs and SimpleITK on pairs with known truth (issue 13's goals).

Pairs (``datasets.pairs``): real images that ship with packages or sit in ../shared/data — ssTEM EM, MNI152 T1
(same contrast) and T1 vs a T2-like image from the tissue maps (cross contrast), stardist nuclei, IHC — each
with a random rigid / affine transform (rotation ±30°, scale 0.8–1.25, shear ≤ 0.1) or affine + a smooth warp
(peak 8 px); and a 3-D MNI152 T1 vs T2-like volume. Methods, in the same run on the same pairs:

- ``ours``: ``registration_models.register(fixed, moving, model=...)``;
- ``translation``: today's ``register_translation`` (the fixed image padded onto the moving image's canvas);
- ``ants``: antspyx ``ants.registration`` — ``Rigid`` / ``Affine`` / ``SyN`` (its defaults: Mattes MI for the
  linear stages, CC/MI for SyN as antspyx sets them);
- ``sitk``: SimpleITK's ``ImageRegistrationMethod`` with Mattes mutual information, a centred initialiser,
  regular-step gradient descent over a 3-level pyramid (linear models only).

Every estimate is read back as the map from fixed to moving points by resampling coordinate ramps through the
method's own resampler (so no file-convention guesswork), then scored: target registration error (TRE: mean
distance on a grid of fixed points, moving pixels), success (TRE < 1 px), Dice of the warped labels (mean over
foreground classes, where labels exist), folding fraction (Jacobian ≤ 0) and wall time. Also the calibration of
our ``score``: success rate per score bin, and whether ``reliable`` flags the failures.

    .venv/bin/python benchmarks/bench_registration_models.py --quick     # ~2 min
    .venv/bin/python benchmarks/bench_registration_models.py --out results/bench-registration
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from neuros.plugins.cv.datasets.pairs import RegistrationPair, make_pair, make_pair_3d, target_registration_error
from neuros.plugins.cv.registration import register_translation
from neuros.plugins.cv.transforms import DisplacementField, LinearTransform, Transform

ANTS_TYPES = {"rigid": "Rigid", "similarity": "Similarity", "affine": "Affine", "deformable": "SyN"}
MARGIN = 64  # ramps extend this far beyond the moving image, so points that leave it still read a coordinate


# ---------------------------------------------------------------------- methods: each returns a Transform
def _ours(pair: RegistrationPair, model: str) -> tuple[Transform, dict]:
    from neuros.plugins.cv.registration_models import register

    res = register(pair.fixed, pair.moving, model=model)
    extra = {k: getattr(res, k) for k in ("score", "overlap", "reliable", "consistency") if hasattr(res, k)}
    return res.transform, {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in extra.items()}


def _translation(pair: RegistrationPair, model: str) -> tuple[Transform, dict]:
    canvas = np.zeros_like(pair.moving, dtype=np.float32)
    h, w = pair.fixed.shape
    canvas[:h, :w] = pair.fixed
    t = register_translation(pair.moving, canvas)
    # canvas ≈ roll(moving, (dy, dx)): fixed point x sits at x - (dy, dx) in the moving image
    return LinearTransform.translation((-t.dy, -t.dx)), {"score": float(t.score)}


def _ramps(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Coordinate images of the moving grid, extended by MARGIN on every side (index = value - MARGIN)."""
    big = tuple(n + 2 * MARGIN for n in shape)
    return [g.astype(np.float32) - MARGIN for g in np.indices(big)]


def _field_from(coords: list[np.ndarray]) -> DisplacementField:
    grid = np.indices(coords[0].shape, dtype=np.float32)
    return DisplacementField(np.stack(coords) - grid)


def _ants(pair: RegistrationPair, model: str) -> tuple[Transform, dict]:
    import ants

    nd = pair.fixed.ndim
    # antspyx's from_numpy puts physical x on NumPy axis 0; transposing keeps ITK's x on our last axis
    def img(a: np.ndarray, origin: float = 0.0):
        out = ants.from_numpy(np.ascontiguousarray(a.T.astype(np.float32)))
        out.set_origin([origin] * nd)
        return out

    fixed, moving = img(pair.fixed), img(pair.moving)
    reg = ants.registration(fixed=fixed, moving=moving, type_of_transform=ANTS_TYPES[model], random_seed=0)
    coords = [ants.apply_transforms(fixed=fixed, moving=img(r, -MARGIN), transformlist=reg["fwdtransforms"],
                                    interpolator="linear").numpy().T for r in _ramps(pair.moving.shape)]
    return _field_from(coords), {}


def _sitk(pair: RegistrationPair, model: str) -> tuple[Transform, dict]:
    import SimpleITK as sitk

    nd = pair.fixed.ndim
    fixed = sitk.GetImageFromArray(pair.fixed.astype(np.float32))
    moving = sitk.GetImageFromArray(pair.moving.astype(np.float32))
    kinds = {"rigid": sitk.Euler2DTransform() if nd == 2 else sitk.Euler3DTransform(),
             "similarity": sitk.Similarity2DTransform() if nd == 2 else sitk.Similarity3DTransform(),
             "affine": sitk.AffineTransform(nd)}
    init = sitk.CenteredTransformInitializer(fixed, moving, kinds[model],
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(0.25, seed=0)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=300)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([4, 2, 1])
    r.SetSmoothingSigmasPerLevel([2, 1, 0])
    r.SetInitialTransform(init, inPlace=False)
    tx = r.Execute(fixed, moving)
    coords = []
    for ramp in _ramps(pair.moving.shape):
        m = sitk.GetImageFromArray(ramp)
        m.SetOrigin([-float(MARGIN)] * nd)
        coords.append(sitk.GetArrayFromImage(sitk.Resample(m, fixed, tx, sitk.sitkLinear, np.nan)))
    return _field_from(coords), {}


METHODS: dict[str, Callable[[RegistrationPair, str], tuple[Transform, dict]]] = {
    "ours": _ours, "translation": _translation, "ants": _ants, "sitk": _sitk,
}


# ---------------------------------------------------------------------- scoring
def _dice(pair: RegistrationPair, est: Transform) -> float | None:
    if pair.fixed_labels is None:
        return None
    warped = est.apply_labels(pair.moving_labels.astype(np.int32), pair.fixed.shape)
    truth = pair.fixed_labels
    classes = [c for c in np.unique(truth) if c != 0]
    if len(classes) > 20:  # instance labels (nuclei): foreground vs background
        warped, truth, classes = warped > 0, truth > 0, [True]
    scores = [2 * ((warped == c) & (truth == c)).sum() / max((warped == c).sum() + (truth == c).sum(), 1)
              for c in classes]
    return float(np.mean(scores))


def _folding(est: Transform) -> float:
    if isinstance(est, DisplacementField):
        return est.folding_fraction()
    parts = getattr(est, "transforms", [])
    return max((p.folding_fraction() for p in parts if isinstance(p, DisplacementField)), default=0.0)


def run_pair(pair: RegistrationPair, model: str, methods: list[str]) -> list[dict]:
    rows = []
    for name in methods:
        if name == "sitk" and model == "deformable":
            continue
        row = {"pair": pair.name, "source": pair.meta["source"], "model": model, "method": name,
               "cross_contrast": pair.cross_contrast, "ndim": pair.fixed.ndim}
        t0 = time.perf_counter()
        try:
            est, extra = METHODS[name](pair, model)
        except Exception as e:  # a peer that fails on a pair is a result, not a crash
            row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                       seconds=time.perf_counter() - t0)
            if name == "ours":
                traceback.print_exc(limit=3)
            rows.append(row)
            continue
        row["seconds"] = time.perf_counter() - t0
        row["tre"] = target_registration_error(est, pair.truth, pair.fixed.shape)
        row["success"] = bool(row["tre"] < 1.0)
        row["dice"] = _dice(pair, est)
        row["folding"] = _folding(est)
        row.update(extra)
        rows.append(row)
        print(f"  {pair.name:28s} {name:11s} TRE {row['tre']:8.3f} px  {row['seconds']:6.2f} s"
              + (f"  Dice {row['dice']:.3f}" if row["dice"] is not None else ""), flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["model"], r["cross_contrast"], r["ndim"], r["method"]) for r in rows})
    for model, cross, nd, method in keys:
        sel = [r for r in rows if (r["model"], r["cross_contrast"], r["ndim"], r["method"]) == (model, cross, nd,
                                                                                              method)]
        ok = [r for r in sel if "tre" in r]
        dice = [r["dice"] for r in ok if r["dice"] is not None]
        out.append({
            "model": model, "contrast": "cross" if cross else "same", "ndim": nd, "method": method, "n": len(sel),
            "failed_to_run": len(sel) - len(ok),
            "median_tre": float(np.median([r["tre"] for r in ok])) if ok else None,
            "success": float(np.mean([r["success"] for r in ok])) if ok else None,
            "dice": float(np.mean(dice)) if dice else None,
            "folding": float(max(r["folding"] for r in ok)) if ok else None,
            "median_seconds": float(np.median([r["seconds"] for r in sel])),
        })
    return out


def calibration(rows: list[dict]) -> list[dict]:
    ours = [r for r in rows if r["method"] == "ours" and "score" in r]
    if not ours:
        return []
    edges = np.quantile([r["score"] for r in ours], np.linspace(0, 1, 5))
    out = []
    for lo, hi in itertools.pairwise(edges):
        b = [r for r in ours if lo <= r["score"] <= hi]
        out.append({"score_from": float(lo), "score_to": float(hi), "n": len(b),
                    "success_rate": float(np.mean([r["success"] for r in b])) if b else None})
    flagged = [r for r in ours if "reliable" in r]
    if flagged:
        out.append({"reliable_and_failed": sum(r["reliable"] and not r["success"] for r in flagged),
                    "unreliable_and_succeeded": sum((not r["reliable"]) and r["success"] for r in flagged),
                    "n": len(flagged)})
    return out


def _fmt(v: object, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def markdown(summary: list[dict], calib: list[dict], info: dict) -> str:
    lines = [f"Machine: {info}", "", "| model | contrast | D | method | pairs | median TRE (px) | success (< 1 px) "
             "| label Dice | max folding | median time (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        failed = f" ({s['failed_to_run']} failed)" if s["failed_to_run"] else ""
        lines.append(f"| {s['model']} | {s['contrast']} | {s['ndim']} | {s['method']} | {s['n']}{failed} | "
                     f"{_fmt(s['median_tre'])} | {_fmt(s['success'], '.0%')} | {_fmt(s['dice'])} | "
                     f"{_fmt(s['folding'], '.4f')} | {_fmt(s['median_seconds'], '.2f')} |")
    if calib:
        lines += ["", "Calibration of our score (quartile bins):", "", "| score | pairs | success rate |",
                  "|---|---|---|"]
        for c in calib:
            if "score_from" in c:
                rate = _fmt(c["success_rate"], ".0%")
                lines.append(f"| {c['score_from']:.3f}–{c['score_to']:.3f} | {c['n']} | {rate} |")
            else:
                lines.append(f"\n`reliable` flagged: {c['reliable_and_failed']} reliable-but-failed, "
                             f"{c['unreliable_and_succeeded']} unreliable-but-succeeded, of {c['n']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed per source, fewer sources, no 3-D")
    ap.add_argument("--seeds", type=int, default=3, help="random transforms per source and model (default 3)")
    ap.add_argument("--sources", nargs="+", default=["sstem", "mri", "mri-t2", "nuclei", "ihc"])
    ap.add_argument("--models", nargs="+", default=["rigid", "affine", "deformable"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--no-3d", action="store_true", help="skip the 3-D MNI152 pair")
    ap.add_argument("--out", type=Path, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    sources = ["sstem", "mri-t2", "nuclei"] if args.quick else args.sources
    rows: list[dict] = []
    for model in args.models:
        for source in sources:
            for seed in range(seeds):
                try:
                    pair = make_pair(source, model, seed=seed)
                except (ImportError, FileNotFoundError) as e:
                    print(f"skip {source}: {e}")
                    break
                rows += run_pair(pair, model, args.methods)
        if not (args.quick or args.no_3d):
            rows += run_pair(make_pair_3d(model, seed=0), model, args.methods)
    summary, calib, info = summarise(rows), calibration(rows), machine()
    text = markdown(summary, calib, info)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"machine": info, "rows": rows, "summary": summary,
                                                           "calibration": calib}, indent=1, default=str))
        (args.out / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
