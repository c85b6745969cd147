"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Every function takes plain data — the ``results`` of :func:`run_suite` or the examples of
:func:`collect_examples` — and returns a :class:`matplotlib.figure.Figure`; :func:`figure_png` renders one
to PNG bytes, :func:`report_figures` draws them all and :func:`save_figures` writes them as PNG files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .tables import MODALITY_NAMES, display_name

__all__ = [
    "crossmodal_heatmaps",
    "figure_png",
    "overlay_figure",
    "pca_figure",
    "registration_errors",
    "report_figures",
    "save_figures",
]

DPI = 100
# Captions of the figures, keyed by the file stem; the HTML report shows them under each picture.
CAPTIONS = {
    "crossmodal": "Cross-modality segmentation: accuracy and F1 of a head trained on one modality (rows) and "
    "tested on each modality (columns), per backbone.",
    "registration": "Registration: absolute shift error (patches) per modality and backbone — bar = mean over "
    "the suite's shifts (its value printed above it; \"exact\" when every shift was recovered), whisker = "
    "standard deviation, dots = single shifts.",
    "overlays": "Example test image per modality. Ground truth: pixel mask (green) with the patch labels the "
    "tables score outlined (a patch is foreground when more than half its pixels are). Prediction: the head's "
    "patch predictions — the ones Table 1 scores — painted onto their pixels (yellow). Under each row: this "
    "image's patch F1 and the pixel Dice of the same predictions; small objects that no patch label covers "
    "lower the pixel Dice, not the patch F1. Head \"majority\": one class in training, background everywhere.",
    "pca": "What the features see: the first three principal components of each backbone's feature map on the "
    "same image, shown as RGB.",
}


def _mod(m: str) -> str:
    return MODALITY_NAMES.get(m, m)


def _new(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas (no timestamp in the metadata)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def crossmodal_heatmaps(results: Mapping[str, Any]) -> Figure:
    """Heat maps of the cross-modality grid: one row per backbone, columns accuracy and F1, cells annotated."""
    grid = results["crossmodal"]
    if not grid:
        raise ValueError("results have no cross-modality records to draw")
    bbs = list(dict.fromkeys(r["backbone"] for r in grid))
    trains = list(dict.fromkeys(r["train"] for r in grid))
    tests = list(dict.fromkeys(r["test"] for r in grid))
    weights = {r["backbone"]: r["weights"] for r in grid}
    cell = max(len(tests), 2) * 1.05
    fig = _new(2 * cell + 1.6, len(bbs) * (0.5 * len(trains) + 1.3) + 0.3)
    axes = fig.subplots(len(bbs), 2, squeeze=False)
    ti, tj = {t: i for i, t in enumerate(trains)}, {t: j for j, t in enumerate(tests)}
    image = None
    for row, bb in zip(axes, bbs, strict=True):
        recs = [r for r in grid if r["backbone"] == bb]
        for ax, metric in zip(row, ("accuracy", "f1"), strict=True):
            values = np.full((len(trains), len(tests)), np.nan)
            idx = np.array([(ti[r["train"]], tj[r["test"]]) for r in recs])
            values[idx[:, 0], idx[:, 1]] = [r[metric] for r in recs]
            image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            # A handful of annotated cells, not pixels: a loop is the clear way to place text.
            for r in recs:
                i, j = ti[r["train"]], tj[r["test"]]
                v = r[metric]
                ax.text(j, i, f"{v:.2f}" + ("*" if r.get("note") else ""), ha="center", va="center",
                        color="black" if v > 0.6 else "white", fontsize=9)
            ax.set_xticks(range(len(tests)), [_mod(t) for t in tests])
            ax.set_yticks(range(len(trains)), [_mod(t) for t in trains])
            ax.set_xlabel("test")
            ax.set_ylabel("train")
            ax.set_title(f"{display_name(bb)} [{weights[bb]}] — {'F1' if metric == 'f1' else 'accuracy'}",
                         fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="score")
    return fig


def registration_errors(results: Mapping[str, Any]) -> Figure:
    """Grouped bars of the registration error per modality and backbone, with error bars and single shifts.

    The mean of every bar is printed above it ("0.00 exact" when every shift was recovered) and every single
    shift is a dot in the backbone's colour drawn over the axis, so errors of 0 are as visible as large ones;
    the axis always spans at least one patch.
    """
    reg = results["registration"]
    if not reg:
        raise ValueError("results have no registration records to draw")
    bbs = list(dict.fromkeys(r["backbone"] for r in reg))
    mods = list(dict.fromkeys(r["modality"] for r in reg))
    fig = _new(max(4.5, 1.2 + 1.3 * len(mods) * max(1, len(bbs)) / 2 + 2.0), 3.4 + 0.25 * -(-len(bbs) // 3))
    ax = fig.subplots()
    width = 0.8 / len(bbs)
    x = np.arange(len(mods), dtype=float)
    top = max([1.0, *(float(s["error"]) for r in reg for s in r["shifts"])])
    for k, bb in enumerate(bbs):
        by = {r["modality"]: r for r in reg if r["backbone"] == bb}
        errs = [np.array([s["error"] for s in by[m]["shifts"]], dtype=float) for m in mods]
        xs = x - 0.4 + width * (k + 0.5)
        means = [by[m]["mean_error"] for m in mods]
        bars = ax.bar(xs, means, width * 0.9, yerr=[e.std() for e in errs], capsize=4,
                      label=f"{display_name(bb)} [{by[mods[0]]['weights']}]")
        colour = bars.patches[0].get_facecolor()
        px = np.concatenate([np.full(e.size, xx) for e, xx in zip(errs, xs, strict=True)])
        ax.plot(px, np.concatenate(errs), "o", markerfacecolor=colour, markeredgecolor="black", markersize=6,
                linestyle="none", clip_on=False, zorder=5)
        for xx, mean, e in zip(xs, means, errs, strict=True):  # the value, so that a zero error reads "0.00"
            label = f"{mean:.2f}" + ("\nexact" if not e.any() else "")
            above = max(mean + float(e.std()), float(e.max()))  # over the whisker and the dots
            ax.annotate(label, (xx, above), textcoords="offset points", xytext=(0, 6), ha="center", va="bottom",
                        fontsize=8, color="black")
    if all(s["error"] == 0 for r in reg for s in r["shifts"]):
        n = sum(len(r["shifts"]) for r in reg)
        what = "the one shift" if n == 1 else f"all {n} shifts"
        ax.text(0.5, 0.62, f"{what} recovered exactly\n(error 0.00 patches)", transform=ax.transAxes,
                ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "facecolor": "#e8f5e9", "edgecolor": "#2e7d32"})
    ax.set_xticks(x, [_mod(m) for m in mods])
    ax.set_ylabel("|Δdy| + |Δdx| (patches)")
    ax.set_ylim(0, top * 1.3)
    ax.set_title("Registration error (lower is better)", fontsize=10)
    fig.legend(fontsize=8, loc="outside lower center", ncols=min(len(bbs), 3))  # long names never squeeze the axes
    return fig


def _show(ax: Any, image: np.ndarray) -> None:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        ax.imshow(np.clip(img, 0.0, 1.0) if img.dtype.kind == "f" else img)
    else:
        ax.imshow(img, cmap="gray", vmin=float(img.min()), vmax=float(img.max()))
    ax.set_xticks([])
    ax.set_yticks([])


def _tint(ax: Any, mask: np.ndarray, colour: tuple[float, float, float]) -> None:
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    rgba[mask] = (*colour, 0.55)
    ax.imshow(rgba)


def _outline_patches(ax: Any, grid: np.ndarray, stride: float, colour: str) -> None:
    """Outline every True cell of a patch grid (the labels or predictions the tables score)."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    cells = np.argwhere(np.asarray(grid, bool))
    boxes = [Rectangle((j * stride - 0.5, i * stride - 0.5), stride, stride) for i, j in cells]
    if boxes:
        ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=colour, linewidth=1.2))


def overlay_figure(overlays: Sequence[Mapping[str, Any]]) -> Figure:
    """One row per (backbone, modality): image, ground truth, and the head's patch predictions.

    The ground truth shows the pixel mask and outlines the patch labels the tables score; the prediction is
    the patch predictions painted onto their pixels (exactly what Table 1 scores), with this image's patch F1
    and pixel Dice under it. Overlays without patch grids (older callers) show the masks only.
    """
    if not overlays:
        raise ValueError("no examples to draw")
    fig = _new(7.0, 2.6 * len(overlays) + 0.2)
    axes = fig.subplots(len(overlays), 3, squeeze=False)
    for row, ex in zip(axes, overlays, strict=True):
        for ax in row:
            _show(ax, ex["image"])
        _tint(row[1], np.asarray(ex["mask"], bool), (0.1, 0.9, 0.2))
        _tint(row[2], np.asarray(ex["prediction"], bool), (1.0, 0.85, 0.0))
        if ex.get("patch_labels") is not None:
            _outline_patches(row[1], ex["patch_labels"], ex["stride"], "white")
            _outline_patches(row[2], ex["patch_prediction"], ex["stride"], "black")
        row[0].set_ylabel(f"{_mod(ex['modality'])}\n{display_name(ex['backbone'])}\n[{ex['weights']}]", fontsize=8)
        row[0].set_title("image", fontsize=9)
        n_lab = int(np.sum(ex["patch_labels"])) if ex.get("patch_labels") is not None else None
        row[1].set_title("ground truth" + (f" ({n_lab} fg patches)" if n_lab is not None else ""), fontsize=9)
        head = ex["head"]
        row[2].set_title("prediction: majority class†" if head == "majority" else f"patch prediction ({head})",
                         fontsize=9)
        if ex.get("patch_f1") is not None:
            f1 = f"{ex['patch_f1']:.2f}" if n_lab else "n/a (no fg patch)"
            row[2].set_xlabel(f"patch F1 {f1}\npixel Dice {ex['pixel_dice']:.2f}", fontsize=8)
    return fig


def pca_figure(pcas: Sequence[Mapping[str, Any]]) -> Figure:
    """The shared image, then each backbone's feature map as PCA-to-RGB (patch grid, nearest-neighbour)."""
    if not pcas:
        raise ValueError("no feature maps to draw")
    fig = _new(2.4 * (len(pcas) + 1), 2.8)
    axes = fig.subplots(1, len(pcas) + 1, squeeze=False)[0]
    _show(axes[0], pcas[0]["image"])
    axes[0].set_title(f"{_mod(pcas[0]['modality'])} image", fontsize=9)
    h, w = np.asarray(pcas[0]["image"]).shape[:2]
    for ax, p in zip(axes[1:], pcas, strict=True):
        ax.imshow(p["rgb"], interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{display_name(p['backbone'])}\n[{p['weights']}]", fontsize=9)
    return fig


def report_figures(
    results: Mapping[str, Any], examples: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
) -> dict[str, bytes]:
    """All figures of a suite's results (and examples, when given) as PNG bytes keyed by file stem.

    Figures whose data are absent from ``results`` (e.g. a suite with other experiments) are left out.
    """
    draw: list[tuple[str, Any, Any]] = [
        ("crossmodal", crossmodal_heatmaps, results),
        ("registration", registration_errors, results),
    ]
    if examples:
        draw += [("overlays", overlay_figure, examples.get("overlays")), ("pca", pca_figure, examples.get("pca"))]
    out = {}
    for name, fn, arg in draw:
        if name in ("crossmodal", "registration") and not (isinstance(arg, Mapping) and arg.get(name)):
            continue
        if name in ("overlays", "pca") and not arg:
            continue
        out[name] = figure_png(fn(arg))
    return out


def save_figures(figures: Mapping[str, bytes], folder: str | os.PathLike[str]) -> list[Path]:
    """Write each figure as ``folder/<name>.png``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in figures.items():
        path = folder / f"{name}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths
