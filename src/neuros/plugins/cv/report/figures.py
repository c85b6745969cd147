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
    "the suite's shifts, whisker = standard deviation, dots = single shifts.",
    "overlays": "Example test image per modality with its ground truth and the head's prediction (patch "
    "predictions upsampled to pixels).",
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
    """Grouped bars of the registration error per modality and backbone, with error bars and single shifts."""
    reg = results["registration"]
    if not reg:
        raise ValueError("results have no registration records to draw")
    bbs = list(dict.fromkeys(r["backbone"] for r in reg))
    mods = list(dict.fromkeys(r["modality"] for r in reg))
    fig = _new(1.2 + 1.3 * len(mods) * max(1, len(bbs)) / 2 + 2.0, 3.2)
    ax = fig.subplots()
    width = 0.8 / len(bbs)
    x = np.arange(len(mods), dtype=float)
    for k, bb in enumerate(bbs):
        by = {r["modality"]: r for r in reg if r["backbone"] == bb}
        errs = [np.array([s["error"] for s in by[m]["shifts"]], dtype=float) for m in mods]
        xs = x - 0.4 + width * (k + 0.5)
        means = [by[m]["mean_error"] for m in mods]
        ax.bar(xs, means, width * 0.9, yerr=[e.std() for e in errs], capsize=4,
               label=f"{display_name(bb)} [{by[mods[0]]['weights']}]")
        px = np.concatenate([np.full(e.size, xx) for e, xx in zip(errs, xs, strict=True)])
        ax.plot(px, np.concatenate(errs), "o", color="black", markersize=3, alpha=0.6)
        for xx, mean in zip(xs, means, strict=True):  # values, so that a zero error is visible as "0.00"
            ax.annotate(f"{mean:.2f}", (xx, mean), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=8)
    ax.set_xticks(x, [_mod(m) for m in mods])
    ax.set_ylabel("|Δdy| + |Δdx| (patches)")
    ax.set_ylim(bottom=0)
    ax.set_title("Registration error (lower is better)", fontsize=10)
    ax.legend(fontsize=8)
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


def overlay_figure(overlays: Sequence[Mapping[str, Any]]) -> Figure:
    """One row per (backbone, modality): image, ground truth over the image, prediction over the image."""
    if not overlays:
        raise ValueError("no examples to draw")
    fig = _new(7.0, 2.2 * len(overlays) + 0.2)
    axes = fig.subplots(len(overlays), 3, squeeze=False)
    for row, ex in zip(axes, overlays, strict=True):
        for ax in row:
            _show(ax, ex["image"])
        _tint(row[1], np.asarray(ex["mask"], bool), (0.1, 0.9, 0.2))
        _tint(row[2], np.asarray(ex["prediction"], bool), (1.0, 0.85, 0.0))
        row[0].set_ylabel(f"{_mod(ex['modality'])}\n{display_name(ex['backbone'])}\n[{ex['weights']}]", fontsize=8)
        row[0].set_title("image", fontsize=9)
        row[1].set_title("ground truth", fontsize=9)
        row[2].set_title(f"prediction ({ex['head']})", fontsize=9)
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
