"""Registration: the FFT fast path against the report's N×N method, and accuracy on real-image pairs.

Part 1 (speed, memory): the report's ``estimate_translation(patch_correlation(a, b), grid)`` and the fast
``estimate_translation_from_features(a, b)`` on the same random (g, g, C) feature maps, both in this run, at
patch grids g² = 8², 32², 64², 128² (C = 384): wall time (best of ``--repeats``) and peak traced memory
(tracemalloc, a separate call), and whether the two answers agree.

Part 2 (accuracy): real images shifted by known random sub-pixel amounts with noise, blur and contrast
changes — ssTEM sections (../shared/data), MNI152 T1 slices (nilearn), IHC (scikit-image) and fluorescent
nuclei (stardist) — and cross-contrast pairs (MNI T1 against a T2-like image built from the real tissue
maps, and against tissue-inverted T1 with the background kept dark; nuclei with inverted interiors). Median
and 95th-percentile error in pixels and success rate (error < 1 px) for ``register_translation`` per coarse
backbone and for ``skimage.registration.phase_cross_correlation`` on the same pairs. Prints Markdown.

    .venv/bin/python benchmarks/bench_registration.py            # default: a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_registration.py --quick    # smaller grids and fewer pairs
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from neuros.plugins.cv.backbones.base import get_backbone, list_backbones
from neuros.plugins.cv.feature_matching import (
    estimate_translation,
    estimate_translation_from_features,
    patch_correlation,
)
from neuros.plugins.cv.registration import register_translation, shift_image

SSTEM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sstem_drosophila_vnc" / "raw"


# --- part 1: speed and memory -----------------------------------------------------------------------------------
def _feature_pair(g: int, c: int, shift: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    big = rng.standard_normal((g + 2 * abs(shift[0]), g + 2 * abs(shift[1]), c)).astype(np.float32)
    y0, x0 = abs(shift[0]), abs(shift[1])
    a = big[y0 : y0 + g, x0 : x0 + g]
    b = big[y0 - shift[0] : y0 - shift[0] + g, x0 - shift[1] : x0 - shift[1] + g]
    return np.ascontiguousarray(a), np.ascontiguousarray(b + 0.5 * rng.standard_normal(b.shape).astype(np.float32))


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def speed(grids: list[int], c: int, repeats: int) -> list[dict]:
    rows = []
    for g in grids:
        shift = (max(1, g // 5), -max(1, g // 7))
        a, b = _feature_pair(g, c, shift)

        def nxn(a=a, b=b, g=g):
            return estimate_translation(patch_correlation(a.reshape(-1, c), b.reshape(-1, c)), g)

        def fast(a=a, b=b):
            return estimate_translation_from_features(a, b)

        bound = max(1, g // 4)  # a typical registration bound: |shift| <= a quarter of the grid

        def fast_bounded(a=a, b=b, bound=bound):
            return estimate_translation_from_features(a, b, max_shift=bound)

        reps = repeats if g <= 64 else 1
        t_nxn, r_nxn = _time(nxn, reps)
        t_fast, r_fast = _time(fast, repeats)
        t_fb, r_fb = _time(fast_bounded, repeats)
        # The N×N answer with the same bound (same matrix; only the arg-max is restricted).
        r_nxn_b = estimate_translation(patch_correlation(a.reshape(-1, c), b.reshape(-1, c)), g, max_shift=bound)
        m_nxn, m_fast = _peak_mib(nxn), _peak_mib(fast)
        rows.append(
            {
                "grid": g, "N": g * g, "t_nxn": t_nxn, "t_fast": t_fast, "m_nxn": m_nxn, "m_fast": m_fast,
                "same": r_nxn == r_fast and r_nxn_b == r_fb, "correct": r_fast == shift,
                "input_mib": 2 * a.nbytes / 2**20, "t_fast_bounded": t_fb, "bound": bound,
            }
        )
        print(f"  grid {g}²: N×N {t_nxn:.3f}s {m_nxn:.0f} MiB | fast {t_fast:.3f}s {m_fast:.0f} MiB", file=sys.stderr)
    return rows


# --- part 2: accuracy on real images -------------------------------------------------------------------------------
def _window(image: np.ndarray, shift, size: int) -> np.ndarray:
    moved = shift_image(image, shift, order=3)
    h, w = image.shape[:2]
    y0, x0 = (h - size) // 2, (w - size) // 2
    return moved[y0 : y0 + size, x0 : x0 + size].astype(np.float64)


def _degrade(
    img: np.ndarray, rng: np.random.Generator, noise: float, blur: float, gamma: float, bias: float = 0.0
) -> np.ndarray:
    """Blur, gamma, a smooth multiplicative bias field of amplitude exp(±bias) (MRI-like inhomogeneity),
    then additive Gaussian noise."""
    out = ndi.gaussian_filter(img, blur) if blur else img
    lo, hi = out.min(), out.max()
    out = ((out - lo) / max(hi - lo, 1e-12)) ** gamma
    if bias:
        field = ndi.gaussian_filter(rng.standard_normal(out.shape), 40)
        out = out * np.exp(bias * field / np.abs(field).max())
    return out + noise * rng.standard_normal(out.shape)


# Cross-contrast difficulty ladder: (label, noise σ, bias amplitude).
CROSS_LEVELS = (("cross, σ=0.03", 0.03, 0.0), ("cross, σ=0.1 + bias", 0.1, 0.4), ("cross, σ=0.2 + bias", 0.2, 0.4))


def _mni_slices():
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1).get_fdata()
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0
    for z in (60, 75, 90, 105, 120):
        csf = np.clip(brain[:, :, z] - gm[:, :, z] - wm[:, :, z], 0, 1)
        t2 = (0.95 * csf + 0.55 * gm[:, :, z] + 0.25 * wm[:, :, z]) * brain[:, :, z]
        inv = brain[:, :, z] * (1.0 - t1[:, :, z])
        yield t1[:, :, z], t2, inv


def make_pairs(n_per_source: int, seed: int = 0) -> dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]:
    """``{"same": [...], "cross, …": [...]}`` of (source, a, b, true shift) with b ≈ roll(a, shift)."""
    rng = np.random.default_rng(seed)
    same: list = []
    cross: dict[str, list] = {label: [] for label, _, _ in CROSS_LEVELS}

    def jitter(limit):
        return rng.uniform(-limit, limit, 2)

    if SSTEM.is_dir():
        import tifffile

        files = sorted(SSTEM.glob("*.tif"))
        for i in range(n_per_source):
            em = tifffile.imread(files[i % len(files)]).astype(np.float64) / 255
            d = jitter(20)
            a = _degrade(_window(em, (0, 0), 256), rng, 0.03, 0, 1.0)
            b = _degrade(_window(em, d, 256), rng, 0.03, 0.8, rng.uniform(0.7, 1.4))
            same.append(("ssTEM", a, b, d))
    else:
        print(f"  (no ssTEM data at {SSTEM}: EM pairs skipped)", file=sys.stderr)
    slices = list(_mni_slices())
    for i in range(n_per_source):
        t1, t2, inv = slices[i % len(slices)]
        d = jitter(15)
        same.append(("MNI T1", _degrade(t1, rng, 0.02, 0, 1.0), _degrade(shift_image(t1, d, 3), rng, 0.02, 0.6,
                                                                          rng.uniform(0.7, 1.4)), d))
        for label, noise, bias in CROSS_LEVELS:
            for name, other in (("MNI T1↔T2-like", t2), ("MNI T1↔inverted", inv)):
                d = jitter(15)
                a = _degrade(t1, rng, noise, 0, 1.0, bias)
                cross[label].append((name, a, _degrade(shift_image(other, d, 3), rng, noise, 0.6, 1.0, bias), d))
    from skimage.data import immunohistochemistry

    ihc = immunohistochemistry().mean(axis=2)
    try:
        from stardist.data import test_image_nuclei_2d

        nuc = test_image_nuclei_2d().astype(np.float64)
        nuc = (nuc - nuc.min()) / (nuc.max() - nuc.min())
    except ImportError:
        nuc = None
    for _ in range(n_per_source):
        d = jitter(20)
        same.append(("IHC", _degrade(_window(ihc, (0, 0), 256), rng, 0.02, 0, 1.0),
                     _degrade(_window(ihc, d, 256), rng, 0.02, 0.6, rng.uniform(0.7, 1.4)), d))
        if nuc is None:
            continue
        d = jitter(20)
        same.append(("nuclei", _degrade(_window(nuc, (0, 0), 256), rng, 0.02, 0, 1.0),
                     _degrade(_window(nuc, d, 256), rng, 0.02, 0.6, rng.uniform(0.7, 1.4)), d))
        # Cross-contrast: nuclei interiors inverted, background kept dark.
        for label, noise, bias in CROSS_LEVELS:
            d = jitter(20)
            a = _window(nuc, (0, 0), 256)
            b = _window(nuc, d, 256)
            cross[label].append(("nuclei↔inverted", _degrade(a, rng, noise, 0, 1.0, bias),
                                 _degrade((b > 0.15) * (1.15 - b), rng, noise, 0.6, 1.0, bias), d))
    return {"same": same, **cross}


def _phase_corr(a, b):
    from skimage.registration import phase_cross_correlation

    shift = phase_cross_correlation(a, b, upsample_factor=20)[0]
    return -shift[0], -shift[1]  # skimage returns the shift that moves b onto a: the opposite sign


def methods(skip_slow: bool) -> tuple[list[tuple[str, Callable]], list[str]]:
    """(label, fn(a, b) -> (dy, dx)) for every method available here, and notes on those that are not."""
    out: list[tuple[str, Callable]] = [("skimage phase_cross_correlation", _phase_corr)]
    notes = []
    out.append(("ours, backbone=None (structure channels)", lambda a, b: register_translation(a, b).shift))
    ph = get_backbone("vit-small", weights="placeholder")
    out.append(("ours, vit-small placeholder coarse", lambda a, b: register_translation(a, b, ph).shift))
    if "filterbank" in list_backbones():
        fb = get_backbone("filterbank")
        out.append((f"ours, filterbank coarse ({fb.weights})", lambda a, b: register_translation(a, b, fb).shift))
    else:
        notes.append("filterbank: not registered in this checkout when measured")
    if skip_slow:
        notes.append("random-init DINOv3 ViT-S: skipped (--quick)")
    else:
        try:
            vit = get_backbone("vit-small", weights="random")
            out.append((f"ours, vit-small {vit.weights} coarse", lambda a, b: register_translation(a, b, vit).shift))
        except (NotImplementedError, ImportError, OSError, ValueError) as e:
            notes.append(f"random-init DINOv3 ViT-S: not available when measured ({e})")
    return out, notes


def accuracy(pairs, meths) -> list[dict]:
    rows = []
    for kind, items in pairs.items():
        for label, fn in meths:
            errs, t0 = [], time.perf_counter()
            for _, a, b, d in items:
                dy, dx = fn(a, b)
                errs.append(float(np.hypot(dy - d[0], dx - d[1])))
            e = np.array(errs)
            rows.append({
                "kind": kind, "method": label, "n": len(e), "median": float(np.median(e)),
                "p95": float(np.percentile(e, 95)), "success": float((e < 1).mean()),
                "s_per_pair": (time.perf_counter() - t0) / max(len(e), 1),
            })
            print(f"  {kind} | {label}: median {rows[-1]['median']:.3f}", file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="grids 8², 32², 64² and 2 pairs per source")
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=None, help="pairs per image source (default 4; quick 2)")
    ap.add_argument("--only", choices=("speed", "accuracy"), default=None, help="run one part only")
    args = ap.parse_args()
    grids = [8, 32, 64] if args.quick else [8, 32, 64, 128]
    n = args.pairs or (2 if args.quick else 4)

    t_start = time.perf_counter()
    sp, acc, pairs, notes = [], [], {}, []
    if args.only != "accuracy":
        print("part 1: speed and memory", file=sys.stderr)
        sp = speed(grids, args.channels, args.repeats)
    if args.only != "speed":
        print("part 2: accuracy", file=sys.stderr)
        pairs = make_pairs(n)
        meths, notes = methods(args.quick)
        acc = accuracy(pairs, meths)
    total = time.perf_counter() - t_start

    print(f"Machine: {machine()}")
    command = " ".join([".venv/bin/python", "benchmarks/bench_registration.py", *sys.argv[1:]])
    print(f"Command: `{command}` (total {total:.0f} s)")
    print()
    if sp:
        _print_speed(sp, args.channels, args.repeats)
    if acc:
        _print_accuracy(pairs, acc, notes)


def _print_speed(sp: list[dict], channels: int, repeats: int) -> None:
    print(f"**Fast path vs the report's N×N method** (C = {channels}, random features with a known shift; "
          f"time = best of {repeats} (1 for N×N above 64²), memory = tracemalloc peak):")
    print()
    print("| grid | N | N×N time (s) | fast time (s) | speed-up | fast, \\|shift\\| ≤ grid/4 (s) | speed-up | "
          "N×N peak (MiB) | fast peak (MiB) | fast peak / inputs | same answer | true shift |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in sp:
        print(f"| {r['grid']}² | {r['N']} | {r['t_nxn']:.4f} | {r['t_fast']:.4f} | {r['t_nxn'] / r['t_fast']:.1f}× | "
              f"{r['t_fast_bounded']:.4f} | {r['t_nxn'] / r['t_fast_bounded']:.1f}× | "
              f"{r['m_nxn']:.1f} | {r['m_fast']:.1f} | {r['m_fast'] / r['input_mib']:.1f} | "
              f"{'yes' if r['same'] else 'NO'} | {'yes' if r['correct'] else 'no'} |")
    print()


def _print_accuracy(pairs: dict, acc: list[dict], notes: list[str]) -> None:
    sources = sorted({s for v in pairs.values() for s, *_ in v})
    sizes = ", ".join(f"{len(v)} {k}" for k, v in pairs.items())
    print(f"**Accuracy on real-image pairs** ({sizes}; sources: {', '.join(sources)}; error = Euclidean "
          "distance to the true shift):")
    print()
    print("| pairs | method | n | median error (px) | p95 error (px) | success (< 1 px) | s / pair |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in acc:
        print(f"| {r['kind']} | {r['method']} | {r['n']} | {r['median']:.3f} | {r['p95']:.3f} | "
              f"{100 * r['success']:.0f} % | {r['s_per_pair']:.3f} |")
    for note in notes:
        print(f"\nNote: {note}.")


if __name__ == "__main__":
    main()
