"""The pixel rows of the real suite (``neuros-cv bench --suite real``): pixel heads on stride-1 features, a patch
head beside them, and the ilastik recipe as a named baseline, at full resolution, with object metrics.

Rows, per dataset (EM: ssTEM sections 00–07 → 08–13 at full resolution, 1024², not downsampled; MRI: MNI152
axial slices at the template's 1 mm; nuclei: stardist's 512² image, top half → bottom half):

* ``ilastik recipe`` — :class:`~neuros.plugins.cv.classical.IlastikRecipe` (``multiscale_basic_features``
  σ 1–16 + a 100-tree random forest on ~200 k sampled pixels; Sommer et al. 2011), the baseline;
* ``<pixel backbone> + <head>`` — each pixel head on lazily tiled stride-1 features
  (:class:`~neuros.plugins.cv.dense.TiledFeatures`), trained on a per-class sample of labelled pixels;
* ``<patch backbone> + <head> (patch)`` — today's patch head (16-px cells, bilinear to pixels) on the same
  full-resolution images;
* ``<control backbone> + <pixel head> (control)`` — the DINOv3 pixel path as a control: ViT-S/16 with
  **random** weights (``vit-small@random[stride=4]``: its 16-px grid bilinearly upsampled to a 4-px grid, tiled
  like every pixel backbone) under the default pixel head. It shows what the DINOv3 path gives without learned
  weights; pretrained weights, where a user has them, go in the same place (``control_backbone``).

Each row: pixel Dice per class with a bootstrap CI over test images (``metrics.score_images``), train and
predict seconds, and for mitochondria (EM) and nuclei the object scores (``metrics.match_instances`` at IoU ≥
0.5) of the predicted class map split into objects (``instances.label_instances``) the way the true objects
are defined: true mitochondria are the connected components of the ssTEM mask (the dataset has no instance
ids), so predicted ones are connected components too; true nuclei are stardist's instance labels, and
predicted nuclei are split by a seeded watershed. Predicted objects smaller than the 5th percentile of the
training objects' areas are dropped (specks; the threshold comes from the training masks, never the test).

With ``sparse=True`` every row is also trained from simulated scribbles
(:func:`~neuros.plugins.cv.scribbles.simulate_scribbles`: two short strokes per object and per background
region, fixed by the seed, drawn ``scribble_width`` pixels wide — 3 by default, a narrow brush (napari's
labels brush is 10 px by default); ~4 % of the EM pixels, ~1 % at width 1) and reports its Dice as a fraction
of the same method's dense-trained Dice.

To fit the real suite's 10-minute budget the EM pixel rows train on 4 of the 8 training sections, evenly
spaced (``em_train_sections``), and score 512² centre crops of the test sections (``em_test_crop``); every
output says so in ``notes``. :meth:`PixelSuiteConfig.full` (``bench --suite real --full``) runs the whole
protocol — all training sections, whole test sections, and the conv decoder head as one more pixel row.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backbones.spec import BackboneSpec
from ..classical import IlastikRecipe
from ..datasets.catalog import load_mni152, load_sstem
from ..dense import TiledFeatures
from ..heads import DEFAULT_HEAD, DEFAULT_PIXEL_HEAD, list_heads, make_head
from ..instances import label_instances
from ..metrics import match_instances, score_images
from ..scribbles import labelled_fraction, simulate_scribbles
from .suite import reject_unknown_keys

__all__ = ["PIXEL_DATASETS", "PixelSuiteConfig", "load_pixel_data", "pixel_suite_steps", "run_pixel_suite"]

PIXEL_DATASETS = ("em", "mri", "nuclei")
BASELINE = "ilastik recipe"
#: Predicted objects smaller than this percentile of the training objects' areas are dropped (specks).
MIN_OBJECT_PERCENTILE = 5.0
#: The pixel rows' backbone: the per-pixel filter bank with two more scales than the patch default (σ 0.7 for
#: 2-px membranes, σ 16 for mitochondria context; 49 channels). Measured in this suite's EM rows (4 training
#: sections, 512² test crops): membrane 0.769 vs 0.759 and mitochondria 0.677 vs 0.640 against σ 1–8; MRI
#: 0.002–0.004 lower, nuclei level (docs/segmentation.md).
PIXEL_BACKBONE = "filterbank[stride=1,sigmas=[0.7,1,2,4,8,16]]"
#: The DINOv3 pixel path with random weights, a control row (never presented as pretrained: the row names it).
CONTROL_BACKBONE = "vit-small@random[stride=4]"


@dataclass(frozen=True)
class PixelSuiteConfig:
    """Everything that determines the pixel rows' numbers."""

    datasets: tuple[str, ...] = PIXEL_DATASETS
    pixel_backbone: str = PIXEL_BACKBONE
    pixel_heads: tuple[str, ...] = (DEFAULT_PIXEL_HEAD.kind,)
    patch_backbone: str = "filterbank"
    patch_head: str = DEFAULT_HEAD.kind
    control_backbone: str | None = CONTROL_BACKBONE
    baseline: bool = True
    baseline_trees: int = 100
    baseline_pixels: int = 200_000
    max_samples_per_class: int = 30_000
    em_train: tuple[int, ...] = tuple(range(0, 8))
    em_test: tuple[int, ...] = tuple(range(8, 14))
    em_test_crop: int | None = 512
    em_train_sections: int | None = 4
    mri_train: tuple[int, ...] = tuple(range(40, 88, 6))
    mri_test: tuple[int, ...] = tuple(range(100, 148, 6))
    sparse: bool = False
    scribble_width: int = 3
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for d in self.datasets:
            if d not in PIXEL_DATASETS:
                raise ValueError(f"pixel suite: unknown dataset {d!r}; choose from {', '.join(PIXEL_DATASETS)}")
        for h in (*self.pixel_heads, self.patch_head):
            if h not in list_heads():
                raise ValueError(f"pixel suite: unknown head {h!r}; choose from {', '.join(list_heads())}")
        if set(self.em_train) & set(self.em_test) or set(self.mri_train) & set(self.mri_test):
            raise ValueError("pixel suite: train and test sections/slices overlap")
        w = self.scribble_width
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"pixel suite: scribble_width must be a positive integer (pixels), got {w!r}")
        n = self.em_train_sections
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"pixel suite: em_train_sections must be a positive integer or None (all), got {n!r}")

    def full(self) -> PixelSuiteConfig:
        """The whole protocol, past the 10-minute budget: every EM training section, whole 1024² test sections,
        and the conv decoder head beside the pixel heads (``bench --suite real --full``)."""
        heads = self.pixel_heads if "conv" in self.pixel_heads else (*self.pixel_heads, "conv")
        return dataclasses.replace(self, em_train_sections=None, em_test_crop=None, pixel_heads=heads)

    def em_train_used(self) -> tuple[int, ...]:
        """The EM training sections the pixel rows use: ``em_train_sections`` of them, evenly spaced, or all."""
        n = self.em_train_sections
        if n is None or n >= len(self.em_train):
            return tuple(self.em_train)
        picks = np.unique(np.linspace(0, len(self.em_train) - 1, n).round().astype(int))
        return tuple(self.em_train[i] for i in picks)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PixelSuiteConfig:
        """Build from a mapping; unknown keys are rejected by name; lists become tuples."""
        reject_unknown_keys(cls, data, "pixel suite config")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- data
def _centre(a: np.ndarray, side: int | None) -> np.ndarray:
    if side is None or side >= min(a.shape[:2]):
        return a
    y0, x0 = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
    return a[y0:y0 + side, x0:x0 + side]


def _nuclei() -> dict[str, Any]:
    try:
        from stardist.data import test_image_nuclei_2d
    except ImportError as e:
        raise ImportError(f"the nuclei rows need stardist (pip install 'neuros-cv[data]'): {e}") from None
    img, inst = test_image_nuclei_2d(return_mask=True)
    img = np.asarray(img, dtype=np.float32)
    img = (img - img.min()) / max(float(np.ptp(img)), 1e-6)
    inst = np.asarray(inst)
    half = img.shape[0] // 2
    fg = (inst > 0).astype(np.uint8)
    return {"train": ([img[:half]], [fg[:half]]), "test": ([img[half:]], [fg[half:]]),
            "classes": ("background", "nucleus"), "objects": 1, "true_objects": [inst[half:]],
            "object_method": "watershed", "min_object": _min_object([inst[:half]]),
            "source": "stardist test_image_nuclei_2d (2018 Data Science Bowl, Caicedo et al. 2019)",
            "notes": ["one 512² image: top half trains, bottom half tests; true objects = stardist's instance ids"]}


def _min_object(instances: Sequence[np.ndarray]) -> int:
    """Speck threshold: the :data:`MIN_OBJECT_PERCENTILE` of the training objects' areas (pixels)."""
    areas = np.concatenate([np.bincount(a.ravel())[1:] for a in instances])
    areas = areas[areas > 0]
    return int(np.percentile(areas, MIN_OBJECT_PERCENTILE)) if areas.size else 0


def load_pixel_data(config: PixelSuiteConfig) -> dict[str, dict[str, Any]]:
    """Per dataset: ``train``/``test`` (images, masks), ``classes``, ``objects`` (class index scored as objects
    or None), ``true_objects`` (instance labels of the test images or None), ``object_method`` and
    ``min_object`` (how predicted objects are made), ``source`` and ``notes``."""
    out: dict[str, dict[str, Any]] = {}
    if "em" in config.datasets:
        used = config.em_train_used()
        tr = load_sstem(sections=used, downsample=1)
        te = load_sstem(sections=config.em_test, downsample=1)
        imgs = [_centre(a, config.em_test_crop) for a in te.images]
        msks = [_centre(a, config.em_test_crop) for a in te.masks]
        thinned = (f" ({len(used)} of {list(config.em_train)}, evenly spaced: time budget; --full trains on all)"
                   if len(used) < len(config.em_train) else "")
        note = [f"full resolution; train sections {list(used)}{thinned} (1024²), test sections "
                f"{list(config.em_test)}" + (f" centre-cropped to {imgs[0].shape[0]}² (time budget)"
                                             if imgs[0].shape != te.images[0].shape else " (1024²)"),
                "true mitochondria = connected components of the mask (ssTEM has no instance ids)"]
        train_objects = [label_instances(m, cls=2, method="components") for m in tr.masks]
        out["em"] = {"train": (tr.images, tr.masks), "test": (imgs, msks), "classes": tr.class_names,
                     "objects": 2, "true_objects": [label_instances(m, cls=2, method="components") for m in msks],
                     "object_method": "components", "min_object": _min_object(train_objects),
                     "source": tr.source, "notes": note}
    if "mri" in config.datasets:
        tr, te = load_mni152(config.mri_train, scale=1), load_mni152(config.mri_test, scale=1)
        out["mri"] = {"train": (tr.images, tr.masks), "test": (te.images, te.masks), "classes": tr.class_names,
                      "objects": None, "true_objects": None, "source": tr.source,
                      "notes": [f"axial slices at 1 mm (not upsampled): train {list(config.mri_train)}, "
                                f"test {list(config.mri_test)}"]}
    if "nuclei" in config.datasets:
        out["nuclei"] = _nuclei()
    return out


# --------------------------------------------------------------------------- methods
def _methods(config: PixelSuiteConfig) -> list[tuple[str, str]]:
    """(label, kind) of every row: kind is "baseline", "pixel:<head>", "patch" or "control"."""
    rows = [(BASELINE, "baseline")] if config.baseline else []
    rows += [(f"{config.pixel_backbone} + {h}", f"pixel:{h}") for h in config.pixel_heads]
    rows.append((f"{config.patch_backbone} + {config.patch_head} (patch)", "patch"))
    if config.control_backbone:
        rows.append((f"{config.control_backbone} + {DEFAULT_PIXEL_HEAD.kind} (control)", "control"))
    return rows


def _fit_predict(kind: str, config: PixelSuiteConfig, train: tuple[Sequence[np.ndarray], Sequence[np.ndarray]],
                 test_images: Sequence[np.ndarray], unlabelled: int | None,
                 backbones: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray, float, float]:
    """Fit one method, predict the test images. Returns (probabilities per image, classes_, fit s, predict s)."""
    images, masks = train
    t0 = time.perf_counter()
    if kind == "baseline":
        model = IlastikRecipe(n_estimators=config.baseline_trees, max_pixels=config.baseline_pixels,
                              unlabelled=unlabelled, seed=config.seed).fit(list(images), list(masks))
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        proba = [model.predict_proba(im) for im in test_images]
        return proba, model.classes_, t_fit, time.perf_counter() - t0
    if kind == "patch":
        bb = backbones[config.patch_backbone]
        head = make_head(config.patch_head, class_weight=DEFAULT_HEAD.class_weight,
                         label_rule=DEFAULT_HEAD.label_rule, unlabelled=unlabelled, seed=config.seed)
    else:
        bb = backbones[config.control_backbone if kind == "control" else config.pixel_backbone]
        head_kind = DEFAULT_PIXEL_HEAD.kind if kind == "control" else kind.split(":", 1)[1]
        head = make_head(head_kind, unlabelled=unlabelled, class_weight=DEFAULT_PIXEL_HEAD.class_weight,
                         max_samples_per_class=config.max_samples_per_class, seed=config.seed)
    head.fit([TiledFeatures(bb, im) for im in images], list(masks))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    proba = head.predict_proba([TiledFeatures(bb, im) for im in test_images], level="pixel")
    return list(proba), np.asarray(head.classes_), t_fit, time.perf_counter() - t0


def _class_maps(proba: list[np.ndarray], classes: np.ndarray, offset: int, k: int) -> list[np.ndarray]:
    """Dense class maps 0..K-1 from probabilities (``offset`` = 1 when trained on scribble values class + 1)."""
    out = []
    for p in proba:
        full = np.zeros((*p.shape[:2], k), np.float32)  # a class absent from training never wins
        full[..., classes.astype(np.int64) - offset] = p
        out.append(full.argmax(axis=-1).astype(np.int64))
    return out


def _objects(pred: list[np.ndarray], split: Mapping[str, Any]) -> dict[str, Any]:
    """Object scores pooled over the test images (counts summed, IoU averaged over matched pairs)."""
    scores = [match_instances(t, label_instances(p, cls=split["objects"], method=split["object_method"],
                                                 min_size=split["min_object"]))
              for p, t in zip(pred, split["true_objects"], strict=True)]
    tp, fp, fn = (sum(s[k] for s in scores) for k in ("tp", "fp", "fn"))
    n_true, n_pred = tp + fn, tp + fp
    iou = sum(s["mean_matched_iou"] * s["tp"] for s in scores)
    return {"precision": tp / n_pred if n_pred else 0.0, "recall": tp / n_true if n_true else 0.0,
            "f1": 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0,
            "mean_matched_iou": iou / tp if tp else 0.0, "tp": int(tp), "fp": int(fp), "fn": int(fn),
            "iou_threshold": 0.5, "method": split["object_method"], "min_size": split["min_object"]}


def _row(d: str, label: str, kind: str, split: dict[str, Any], config: PixelSuiteConfig,
         backbones: dict[str, Any], sparse: bool) -> dict[str, Any]:
    images, masks = split["train"]
    test_images, test_masks = split["test"]
    k = len(split["classes"])
    rec: dict[str, Any] = {"dataset": d, "method": label, "kind": kind, "labels": "scribbles" if sparse else "dense"}
    if sparse:
        scribbles = [simulate_scribbles(m, seed=config.seed + i, width=config.scribble_width)
                     for i, m in enumerate(masks)]
        rec["scribble_width"] = config.scribble_width
        rec["labelled_fraction"] = float(np.mean([labelled_fraction(s) for s in scribbles]))
        masks = scribbles
    proba, classes, t_fit, t_pred = _fit_predict(kind, config, (images, masks), test_images,
                                                 0 if sparse else None, backbones)
    pred = _class_maps(proba, classes, 1 if sparse else 0, k)
    s = score_images(test_masks, pred, k, split["classes"], n_boot=config.n_boot, seed=config.seed)
    rec.update(classes={c: {"dice": v["dice"], "dice_ci": v["dice_ci"]} for c, v in s["classes"].items()},
               fit_seconds=t_fit, predict_seconds=t_pred)
    if split["objects"] is not None:
        rec["objects"] = {split["classes"][split["objects"]]: _objects(pred, split)}
    return rec


def pixel_suite_steps(config: PixelSuiteConfig) -> int:
    """Progress steps reported by :func:`run_pixel_suite`."""
    return 1 + len(config.datasets) * len(_methods(config)) * (2 if config.sparse else 1)


def run_pixel_suite(
    config: PixelSuiteConfig, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the pixel rows. Returns ``({"pixel": rows, "pixel_datasets": ..., "pixel_notes": ...}, timings)``.

    A backbone that cannot be built here skips its rows (listed in ``pixel_skipped`` with the reason).
    """
    tick = progress or (lambda _m: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_pixel_data(config)
    timings["pixel:data"] = time.perf_counter() - t0
    tick("loaded pixel data")
    res: dict[str, Any] = {"pixel": [], "pixel_skipped": [], "pixel_config": config.to_dict(),
                           "pixel_datasets": {d: {"classes": list(s["classes"]), "source": s["source"],
                                                  "notes": s["notes"]} for d, s in data.items()}}
    backbones: dict[str, Any] = {}
    for spec in dict.fromkeys(b for b in (config.pixel_backbone, config.patch_backbone, config.control_backbone)
                              if b):
        try:
            backbones[spec] = BackboneSpec.parse(spec).build()
        except (ValueError, NotImplementedError, ImportError, OSError, RuntimeError) as e:
            res["pixel_skipped"].append({"backbone": spec, "reason": str(e).splitlines()[0]})
    for d, split in data.items():
        for label, kind in _methods(config):
            needs = {"baseline": None, "patch": config.patch_backbone,
                     "control": config.control_backbone}.get(kind, config.pixel_backbone)
            for sparse in (False, True) if config.sparse else (False,):
                if needs is not None and needs not in backbones:
                    tick(f"skipped {label} · {d}")
                    continue
                t0 = time.perf_counter()
                res["pixel"].append(_row(d, label, kind, split, config, backbones, sparse))
                timings[f"pixel:{d}:{label}:{'sparse' if sparse else 'dense'}"] = time.perf_counter() - t0
                tick(f"{label} · {d}{' · scribbles' if sparse else ''}")
    if config.sparse:
        _relative_to_dense(res["pixel"])
    return res, timings


def _relative_to_dense(rows: list[dict[str, Any]]) -> None:
    """Add ``dice_vs_dense`` (scribble Dice / dense Dice of the same method and dataset) to scribble rows."""
    dense = {(r["dataset"], r["method"]): r for r in rows if r["labels"] == "dense"}
    for r in rows:
        ref = dense.get((r["dataset"], r["method"]))
        if r["labels"] == "scribbles" and ref is not None:
            r["dice_vs_dense"] = {c: (v["dice"] / ref["classes"][c]["dice"] if ref["classes"][c]["dice"] else None)
                                  for c, v in r["classes"].items()}
