"""Transform-model registration against ANTs, elastix and SimpleITK on pairs with known truth (issue 13's goals).

Pairs (``datasets.pairs``): real images that ship with packages or sit in ../shared/data — ssTEM EM, MNI152 T1
(same contrast) and T1 vs a T2-like image from the tissue maps (cross contrast), stardist nuclei, IHC — each
with a random rigid / affine transform (rotation ±30°, scale 0.8–1.25, shear ≤ 0.1) or affine + a smooth warp
(peak 8 px); and a 3-D MNI152 T1 vs T2-like volume. Methods, in the same run on the same pairs:

- ``ours``: ``registration_models.register(fixed, moving, model=...)``;
- ``translation``: today's ``register_translation`` (the fixed image padded onto the moving image's canvas);
- ``ants``: antspyx ``ants.registration`` — ``Rigid`` / ``Affine`` / ``SyN`` (its defaults: Mattes MI for the
  linear stages, CC/MI for SyN as antspyx sets them);
- ``elastix``: itk-elastix with its default affine / B-spline parameter maps (AdvancedMattesMutualInformation);
- ``sitk``: SimpleITK's ``ImageRegistrationMethod`` with Mattes mutual information, a centred initialiser,
  regular-step gradient descent over a 3-level pyramid (linear models only).

Every estimate is read back as the map from fixed to moving points by resampling coordinate ramps through the
method's own resampler (so no file-convention guesswork), then scored: target registration error (TRE: mean
distance on a grid of fixed points, moving pixels), success (TRE < 1 px), Dice of the warped labels (mean over
foreground classes, where labels exist), folding fraction (Jacobian ≤ 0) and wall time. Also the calibration of
our ``score``: success rate per score bin, and whether ``reliable`` flags the failures. Rotations are drawn
in ±10° (where the peers, without a global search, are expected to succeed) and ±30°. Serial sections: ssTEM
stacks with a random rigid motion and elastic warp per section (``datasets.pairs.make_section_stack``),
aligned by today's translation ``align_stack``, ``align_stack_models`` rigid and elastic, and elastix
(each section to the previous aligned one, rigid + B-spline); the residual is the distance between where
the alignment and the truth put points of section 0's frame.

    .venv/bin/python benchmarks/bench_registration_models.py --quick     # a few minutes
    # the labelled calibration set only (defaults and a cut-down search; right and wrong answers):
    .venv/bin/python benchmarks/bench_registration_models.py --models --no-3d --stacks 0 --calibration 3
    .venv/bin/python benchmarks/bench_registration_models.py --out results/bench-registration
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
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
def _ours(pair: RegistrationPair, model: str, **kw: object) -> tuple[Transform, dict]:
    from neuros.plugins.cv.registration_models import register

    res = register(pair.fixed, pair.moving, model=model, **kw)
    extra = {k: getattr(res, k) for k in ("score", "similarity", "overlap", "reliable", "consistency")
             if hasattr(res, k)}
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


ELASTIX_MAPS = {"rigid": ["rigid"], "similarity": ["affine"], "affine": ["affine"],
                "deformable": ["affine", "bspline"], "elastic": ["rigid", "bspline"]}


def _elastix(pair: RegistrationPair, model: str) -> tuple[Transform, dict]:
    """elastix (itk-elastix) with its default parameter maps: AdvancedMattesMutualInformation, adaptive
    stochastic gradient descent, 4 resolutions; ``deformable`` = the affine map then the B-spline map (grid
    10 px, bending-energy penalty), plus a geometric-centre initialisation of the linear map. The answer is
    read back as transformix's deformation field."""
    import itk

    fixed = itk.image_from_array(np.ascontiguousarray(pair.fixed, dtype=np.float32))
    moving = itk.image_from_array(np.ascontiguousarray(pair.moving, dtype=np.float32))
    po = itk.ParameterObject.New()
    for name in ELASTIX_MAPS[model]:
        pm = po.GetDefaultParameterMap(name)
        if name != "bspline":  # start from the images' centres aligned, as ANTs and SimpleITK do
            pm["AutomaticTransformInitialization"] = ["true"]
            pm["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
        po.AddParameterMap(pm)
    _, tp = itk.elastix_registration_method(fixed, moving, parameter_object=po, log_to_console=False)
    with tempfile.TemporaryDirectory() as tmp:  # transformix writes deformationField.nii there
        field = itk.transformix_deformation_field(moving, tp, output_directory=tmp)
        disp = itk.array_from_image(field).copy()  # (*S, d), ITK (x, y, z) order
    return DisplacementField(np.moveaxis(disp[..., ::-1], -1, 0).astype(np.float32)), {}


def _warm_up(methods: list[str]) -> None:
    """Import the peers' libraries (itk loads its modules lazily: ~30 s on the first call) and run every method
    once on an untimed pair, so no method's first-call costs (imports, allocations, the first fork) land in
    the first timed row (ours took 2.1 s there instead of 0.28 s; session 12)."""
    if "ants" in methods:
        import ants  # noqa: F401
    if "elastix" in methods:
        import itk

        _ = itk.ParameterObject, itk.elastix_registration_method, itk.transformix_deformation_field
    try:
        pair = make_pair("mri", "affine", seed=99, rotation=10.0)
    except (ImportError, FileNotFoundError):
        return
    for name in methods:
        try:
            METHODS[name](pair, "affine")
        except Exception:  # a warm-up only: the timed runs report failures
            pass


METHODS: dict[str, Callable[[RegistrationPair, str], tuple[Transform, dict]]] = {
    "ours": _ours, "translation": _translation, "ants": _ants, "sitk": _sitk, "elastix": _elastix,
}


# ---------------------------------------------------------------------- a labelled set with real failures
#: Settings of ``register`` for the calibration set: the defaults, and a cut-down search (no rotations, no
#: scales) that fails on the larger transforms — wrong answers found the way a user's bad setting finds them.
CALIBRATION_SETTINGS = {"cal-default": {}, "cal-no-search": {"angle_range": 0.0, "scales": (1.0,)}}


def run_calibration(seeds: int, sources: list[str]) -> list[dict]:
    """Our rigid and affine answers on ``sources`` (rotation ±30°, ``seeds`` transforms each) and on full-size
    512² ssTEM pairs (``crop=1.0``: some zoom out so far that little of the fixed grid is covered), with the
    default settings and a cut-down search: each answer labelled right or wrong (TRE < 1 px) for the score's
    calibration."""
    rows = []
    for source, crop in [(s, 0.75) for s in sources] + [("sstem", 1.0)]:
        for model in ("rigid", "affine"):
            for seed in range(seeds):
                try:
                    pair = make_pair(source, model, seed=seed, rotation=30.0, crop=crop)
                except (ImportError, FileNotFoundError) as e:
                    print(f"skip {source}: {e}")
                    break
                pair.name += f"-c{crop:g}"
                for name, kw in CALIBRATION_SETTINGS.items():
                    row = {"pair": pair.name, "source": source, "model": model, "method": name,
                           "cross_contrast": pair.cross_contrast, "ndim": 2, "rotation": 30.0}
                    t0 = time.perf_counter()
                    try:
                        est, extra = _ours(pair, model, **kw)
                    except ValueError as e:  # "no transform keeps min_overlap": an honest refusal
                        row.update(error=str(e), seconds=time.perf_counter() - t0)
                        rows.append(row)
                        continue
                    row["seconds"] = time.perf_counter() - t0
                    row["tre"] = target_registration_error(est, pair.truth, pair.fixed.shape)
                    row["success"] = bool(row["tre"] < 1.0)
                    row.update(extra)
                    rows.append(row)
                    print(f"  {pair.name:24s} {name:15s} TRE {row['tre']:9.3f} px  score {row['score']:.3f}  "
                          f"consistency {row['consistency']:.3f}  reliable {row['reliable']}", flush=True)
    return rows


# ---------------------------------------------------------------------- serial sections
def _stack_translation(stack: np.ndarray) -> list[Transform]:
    from neuros.plugins.cv.registration import align_stack

    _, tr = align_stack(stack)  # section i ≈ section 0's frame rolled by shifts[i]
    return [LinearTransform.translation(s) for s in tr.shifts]


def _stack_ours(model: str) -> Callable[[np.ndarray], list[Transform]]:
    def run(stack: np.ndarray) -> list[Transform]:
        from neuros.plugins.cv.registration_models import align_stack_models

        return align_stack_models(stack, model)[1].transforms

    return run


def _stack_elastix(stack: np.ndarray) -> list[Transform]:
    """Each section to the previous *aligned* section (the classical sequential scheme), elastix's default
    rigid then B-spline maps: the answer maps section 0's frame to the section directly."""
    out: list[Transform] = [LinearTransform.identity(2)]
    previous = stack[0]
    for moving in stack[1:]:
        est, _ = _elastix(RegistrationPair("section", previous, moving, out[0]), "elastic")
        out.append(est)
        previous = est.apply(moving, stack.shape[1:])
    return out


STACK_METHODS: dict[str, Callable[[np.ndarray], list[Transform]]] = {
    "translation": _stack_translation, "ours-rigid": _stack_ours("rigid"),
    "ours-elastic": _stack_ours("deformable"), "elastix": _stack_elastix,
}


def run_stacks(seeds: int, n: int) -> list[dict]:
    """ssTEM stacks with random rigid + elastic distortions: residual error of each method's alignment."""
    from neuros.plugins.cv.datasets.pairs import make_section_stack

    rows = []
    for seed in range(seeds):
        try:
            st = make_section_stack(n, seed=seed)
        except FileNotFoundError as e:
            print(f"skip stacks: {e}")
            return rows
        rows.append({"stack": seed, "method": "none", "residual": float(np.mean(st.residual(
            [LinearTransform.identity(2)] * n)[1:])), "seconds": 0.0})
        for name, fn in STACK_METHODS.items():
            t0 = time.perf_counter()
            try:
                res = st.residual(fn(st.stack))
            except Exception as e:
                rows.append({"stack": seed, "method": name, "error": f"{type(e).__name__}: {e}"})
                continue
            rows.append({"stack": seed, "method": name, "residual": float(np.mean(res[1:])),
                         "max_residual": float(np.max(res[1:])), "seconds": time.perf_counter() - t0})
            print(f"  stack {seed} {name:13s} residual {rows[-1]['residual']:.3f} px (max "
                  f"{rows[-1]['max_residual']:.3f})  {rows[-1]['seconds']:.1f} s", flush=True)
    return rows


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
               "cross_contrast": pair.cross_contrast, "ndim": pair.fixed.ndim,
               "rotation": pair.meta.get("rotation")}
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


def _key(r: dict) -> tuple:
    return r["model"], r["cross_contrast"], r["ndim"], r.get("rotation") or 0, r["method"]


def summarise(rows: list[dict]) -> list[dict]:
    rows = [r for r in rows if not r["method"].startswith("cal-")]  # the calibration set has its own table
    out = []
    for model, cross, nd, rot, method in sorted({_key(r) for r in rows}):
        sel = [r for r in rows if _key(r) == (model, cross, nd, rot, method)]
        ok = [r for r in sel if "tre" in r]
        dice = [r["dice"] for r in ok if r["dice"] is not None]
        out.append({
            "model": model, "contrast": "cross" if cross else "same", "ndim": nd, "rotation": rot,
            "method": method, "n": len(sel),
            "failed_to_run": len(sel) - len(ok),
            "median_tre": float(np.median([r["tre"] for r in ok])) if ok else None,
            "success": float(np.mean([r["success"] for r in ok])) if ok else None,
            "dice": float(np.mean(dice)) if dice else None,
            "folding": float(max(r["folding"] for r in ok)) if ok else None,
            "median_seconds": float(np.median([r["seconds"] for r in sel])),
        })
    return out


def versus(rows: list[dict], peer: str = "ants") -> list[dict]:
    """Per model and contrast, pair by pair against ``peer``: our success where the peer succeeds, the pairs
    where only one of the two succeeds, and the TRE ratio (ours / peer) on pairs both solve."""
    ours = {(r["pair"], r["model"]): r for r in rows if r["method"] == "ours" and "tre" in r}
    them = {(r["pair"], r["model"]): r for r in rows if r["method"] == peer and "tre" in r}
    out = []
    groups = sorted({(r["model"], r["cross_contrast"], r["ndim"]) for r in ours.values()})
    for model, cross, nd in groups:
        keys = [k for k, r in ours.items() if (r["model"], r["cross_contrast"], r["ndim"]) == (model, cross, nd)
                and k in them]
        if not keys:
            continue
        peer_ok = [k for k in keys if them[k]["success"]]
        both = [k for k in peer_ok if ours[k]["success"]]
        out.append({
            "model": model, "contrast": "cross" if cross else "same", "ndim": nd, "peer": peer, "pairs": len(keys),
            "peer_succeeds": len(peer_ok),
            "ours_succeeds_where_peer_does": len(both) / len(peer_ok) if peer_ok else None,
            "only_ours": sorted(k[0] for k in keys if ours[k]["success"] and not them[k]["success"]),
            "only_peer": sorted(k[0] for k in keys if them[k]["success"] and not ours[k]["success"]),
            "median_tre_ours_both": float(np.median([ours[k]["tre"] for k in both])) if both else None,
            "median_tre_peer_both": float(np.median([them[k]["tre"] for k in both])) if both else None,
            "ours_tre_le_peer": sum(ours[k]["tre"] <= them[k]["tre"] for k in both),
        })
    return out


#: Score bins of the calibration table.
SCORE_BINS = (0.0, 0.05, 0.2, 0.5, 0.8, 0.9, 1.0)


def calibration(rows: list[dict]) -> list[dict]:
    """Success rate per score bin: on the labelled calibration set (``cal-*`` rows) when it ran, else on our
    benchmark answers."""
    ours = [r for r in rows if r["method"].startswith("cal-") and "score" in r]
    ours = ours or [r for r in rows if r["method"] == "ours" and "score" in r]
    if not ours:
        return []
    out = []
    for lo, hi in itertools.pairwise(SCORE_BINS):
        b = [r for r in ours if lo <= r["score"] < hi or (hi == SCORE_BINS[-1] and r["score"] == hi)]
        out.append({"score_from": float(lo), "score_to": float(hi), "n": len(b),
                    "success_rate": float(np.mean([r["success"] for r in b])) if b else None})
    good = [r["score"] for r in ours if r["success"]]
    bad = [r["score"] for r in ours if not r["success"]]
    out.append({"lowest_success_score": min(good) if good else None,
                "highest_failure_score": max(bad) if bad else None,
                "separated": bool(good and bad and min(good) > max(bad)), "failures": len(bad)})
    flagged = [r for r in ours if "reliable" in r]
    if flagged:
        out.append({"reliable_and_failed": sum(r["reliable"] and not r["success"] for r in flagged),
                    "unreliable_and_succeeded": sum((not r["reliable"]) and r["success"] for r in flagged),
                    "n": len(flagged)})
    return out


def _fmt(v: object, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def _names(names: list[str], most: int = 4) -> str:
    """A count, and the names when there are few."""
    if not names:
        return "0"
    return f"{len(names)}" + (f" ({', '.join(names)})" if len(names) <= most else "")


def len_both(v: dict) -> int:
    """Pairs both methods solve (the peer's successes that are ours too)."""
    rate = v["ours_succeeds_where_peer_does"]
    return round(rate * v["peer_succeeds"]) if rate is not None else 0


def markdown(summary: list[dict], calib: list[dict], vs: list[dict], stacks: list[dict], info: dict) -> str:
    lines = [f"Machine: {info}", "", "| model | contrast | D | rotation | method | pairs | median TRE (px) | "
             "success (< 1 px) | label Dice | max folding | median time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        failed = f" ({s['failed_to_run']} failed)" if s["failed_to_run"] else ""
        lines.append(f"| {s['model']} | {s['contrast']} | {s['ndim']} | ±{s['rotation']:g}° | {s['method']} | "
                     f"{s['n']}{failed} | {_fmt(s['median_tre'])} | {_fmt(s['success'], '.0%')} | "
                     f"{_fmt(s['dice'])} | {_fmt(s['folding'], '.4f')} | {_fmt(s['median_seconds'], '.2f')} |")
    if vs:
        lines += ["", "Pair by pair against the peer (both rotation ranges):", "",
                  "| model | contrast | D | peer | pairs | peer succeeds | ours succeeds there | "
                  "median TRE ours / peer (both succeed) | ours ≤ peer | only ours succeeds | only peer succeeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for v in vs:
            lines.append(f"| {v['model']} | {v['contrast']} | {v['ndim']} | {v['peer']} | {v['pairs']} | "
                         f"{v['peer_succeeds']} | {_fmt(v['ours_succeeds_where_peer_does'], '.0%')} | "
                         f"{_fmt(v['median_tre_ours_both'])} / {_fmt(v['median_tre_peer_both'])} | "
                         f"{v['ours_tre_le_peer']} / {len_both(v)} | {_names(v['only_ours'])} | "
                         f"{_names(v['only_peer'])} |")
    if calib:
        lines += ["", "Calibration of our score:", "", "| score | pairs | success rate |",
                  "|---|---|---|"]
        for c in calib:
            if "score_from" in c:
                rate = _fmt(c["success_rate"], ".0%")
                lines.append(f"| {c['score_from']:.3f}–{c['score_to']:.3f} | {c['n']} | {rate} |")
            elif "separated" in c:
                lines.append(f"\nLowest score of a success {_fmt(c['lowest_success_score'])}, highest score of a "
                             f"failure {_fmt(c['highest_failure_score'])} ({c['failures']} failures): every "
                             f"success scored above every failure: {c['separated'] if c['failures'] else 'n/a'}.")
            else:
                lines.append(f"\n`reliable` flagged: {c['reliable_and_failed']} reliable-but-failed, "
                             f"{c['unreliable_and_succeeded']} unreliable-but-succeeded, of {c['n']}.")
    if stacks:
        lines += ["", "Serial sections (ssTEM, random rigid + elastic distortion per section): mean residual "
                  "(undistorted px) over sections 1…n−1:", "", "| method | stacks | mean residual (px) | "
                  "worst section (px) | median time (s) |", "|---|---|---|---|---|"]
        for m in dict.fromkeys(r["method"] for r in stacks):
            sel = [r for r in stacks if r["method"] == m and "residual" in r]
            if sel:
                worst = max(r.get("max_residual", r["residual"]) for r in sel)
                lines.append(f"| {m} | {len(sel)} | {np.mean([r['residual'] for r in sel]):.3f} | {worst:.3f} | "
                             f"{np.median([r['seconds'] for r in sel]):.1f} |")
    return "\n".join(lines) + "\n"


def _save_partial(out: Path | None, rows: list[dict]) -> None:
    """The rows so far (a long run that is stopped still leaves its pairs)."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.partial.json").write_text(json.dumps(rows, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed per source, fewer sources, no 3-D, no stacks")
    ap.add_argument("--seeds", type=int, default=3, help="random transforms per source, model and rotation range")
    ap.add_argument("--rotations", type=float, nargs="+", default=[10.0, 30.0],
                    help="rotation ranges (± degrees) of the random transforms (default 10 and 30)")
    ap.add_argument("--sources", nargs="+", default=["sstem", "mri", "mri-t2", "nuclei", "ihc"])
    ap.add_argument("--models", nargs="*", default=["rigid", "affine", "deformable"],
                    help="models of the goal run (none: only the calibration set and the stacks)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--no-3d", action="store_true", help="skip the 3-D MNI152 pair")
    ap.add_argument("--stacks", type=int, default=2, help="ssTEM serial-section stacks (0: none)")
    ap.add_argument("--stack-sections", type=int, default=6, help="sections per stack (default 6)")
    ap.add_argument("--calibration", type=int, default=0, metavar="SEEDS",
                    help="also run the labelled calibration set (default and cut-down settings) with SEEDS "
                         "transforms per source and model (0: none)")
    ap.add_argument("--out", type=Path, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    sources = ["sstem", "mri-t2", "nuclei"] if args.quick else args.sources
    rows: list[dict] = []
    _warm_up(args.methods)
    for model in args.models:
        for rot in args.rotations:
            for source in sources:
                for seed in range(seeds):
                    try:
                        pair = make_pair(source, model, seed=seed, rotation=rot)
                    except (ImportError, FileNotFoundError) as e:
                        print(f"skip {source}: {e}")
                        break
                    pair.name += f"-r{rot:g}"
                    rows += run_pair(pair, model, args.methods)
                    _save_partial(args.out, rows)
        if not (args.quick or args.no_3d):
            rows += run_pair(make_pair_3d(model, seed=0), model, args.methods)
            _save_partial(args.out, rows)
    if args.calibration:
        rows += run_calibration(args.calibration, sources)
        _save_partial(args.out, rows)
    stacks = [] if args.quick else run_stacks(args.stacks, args.stack_sections)
    summary, calib, info = summarise(rows), calibration(rows), machine()
    vs = [v for peer in ("ants", "elastix") if peer in args.methods for v in versus(rows, peer)]
    text = markdown(summary, calib, vs, stacks, info)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"machine": info, "rows": rows, "summary": summary,
                                                           "calibration": calib, "versus": vs, "stacks": stacks},
                                                          indent=1, default=str))
        (args.out / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
