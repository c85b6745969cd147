"""The real-data suite (``neuros-cv bench --suite real``): pixel Dice per class per backbone on real EM, MRI
and nuclei images, with bootstrap confidence intervals, cross-modality transfer, and the report-vs-better
protocol comparison on the synthetic data.

Datasets (``datasets.catalog``): EM — the ssTEM sections (membranes, mitochondria; train on some sections,
test on others, downsampled ×2 by default to fit the time budget); MRI — axial slices of nilearn's MNI152
template (grey / white matter; train and test slabs separated by a gap); nuclei — stardist's labelled image
cut into tiles (train on the top half, test on the bottom half).

Pixel rows (``pixel``, a :class:`~.pixel_suite.PixelSuiteConfig`; ``pixel = false`` in the TOML turns them
off): the same datasets at full resolution, pixel heads beside a patch head and the ilastik recipe as a named
baseline, with object metrics, and with ``sparse`` a variant trained from simulated scribbles
(:mod:`.pixel_suite`). They share the suite's splits, seed and bootstrap replicates.

Backbones are named in the config by their spec string (``BackboneSpec``): ``"name"``, ``"name@weights"`` or
with options that change the features (``vit-small@placeholder``, ``vit-small@random(seed=3)[scale=2]``,
``filterbank``); a backbone that cannot be built here (e.g. weights not available) is
listed under ``skipped`` with the reason instead of failing the suite.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backbones.base import Backbone, lookup
from ..backbones.spec import BackboneSpec
from ..datasets.catalog import LabelledSet, load_mni152, load_nuclei, load_sstem
from ..heads import DEFAULT_HEAD, list_heads
from .pipeline import FeatureStore
from .pixel_suite import PixelSuiteConfig, pixel_suite_steps, run_pixel_suite
from .protocols import fit_and_score, fit_on, run_protocol_comparison, score_on
from .suite import reject_unknown_keys

__all__ = [
    "REAL_DATASETS",
    "RealSuiteConfig",
    "build_backbone",
    "load_real_data",
    "real_suite_steps",
    "run_real_suite",
]

REAL_DATASETS = ("em", "mri", "nuclei")


@dataclass(frozen=True)
class RealSuiteConfig:
    """Everything that determines the real suite's numbers."""

    name: str = "real"
    backbones: tuple[str, ...] = ("vit-small@placeholder", "vit-small@random", "filterbank")
    datasets: tuple[str, ...] = REAL_DATASETS
    head: str = DEFAULT_HEAD.kind  # the documented head, shared with `segment train`'s defaults
    class_weight: str | None = DEFAULT_HEAD.class_weight
    label_rule: str = DEFAULT_HEAD.label_rule
    em_train: tuple[int, ...] = tuple(range(0, 8))
    em_test: tuple[int, ...] = tuple(range(8, 14))
    em_downsample: int = 2
    mri_train: tuple[int, ...] = tuple(range(40, 88, 6))
    mri_test: tuple[int, ...] = tuple(range(100, 148, 6))
    mri_scale: int = 2
    nuclei_tile: int = 128
    crossmodal: bool = True
    protocols: bool = True
    synthetic_n_train: int = 10
    synthetic_n_test: int = 5
    synthetic_size: int = 128
    n_boot: int = 1000
    seed: int = 0
    pixel: PixelSuiteConfig | None = field(default_factory=PixelSuiteConfig)

    def __post_init__(self) -> None:
        if not self.backbones:
            raise ValueError("real suite: name at least one backbone")
        for spec in self.backbones:
            lookup(BackboneSpec.parse(spec).name)
        for d in self.datasets:
            if d not in REAL_DATASETS:
                raise ValueError(f"real suite: unknown dataset {d!r}; choose from {', '.join(REAL_DATASETS)}")
        if self.head not in list_heads():
            raise ValueError(f"real suite: unknown head {self.head!r}; choose from {', '.join(list_heads())}")
        if set(self.em_train) & set(self.em_test) or set(self.mri_train) & set(self.mri_test):
            raise ValueError("real suite: train and test sections/slices overlap")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RealSuiteConfig:
        """Build from a mapping; unknown keys are rejected by name; lists become tuples."""
        reject_unknown_keys(cls, data, "real suite config")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if "pixel" in kw:  # a [pixel] table of PixelSuiteConfig keys, or false to leave the pixel rows out
            p = kw["pixel"]
            kw["pixel"] = (None if p is False or p is None else p if isinstance(p, PixelSuiteConfig)
                           else PixelSuiteConfig.from_dict({} if p is True else p))
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
               if k != "pixel"}
        out["pixel"] = self.pixel.to_dict() if self.pixel is not None else False
        return out

    def pixel_config(self) -> PixelSuiteConfig | None:
        """The pixel rows' config with this suite's datasets, splits, seed and bootstrap replicates."""
        if self.pixel is None:
            return None
        datasets = tuple(d for d in self.pixel.datasets if d in self.datasets)
        if not datasets:
            return None
        return dataclasses.replace(self.pixel, datasets=datasets, em_train=self.em_train, em_test=self.em_test,
                                   mri_train=self.mri_train, mri_test=self.mri_test, seed=self.seed,
                                   n_boot=self.n_boot)


def build_backbone(spec: str) -> Backbone:
    """A backbone from its spec string: ``"name"``, ``"name@weights"`` or with options, e.g.
    ``"vit-small@random(seed=3)[scale=2]"`` (weights only for the DINOv3 family; see ``BackboneSpec``)."""
    return BackboneSpec.parse(spec).build()


def load_real_data(config: RealSuiteConfig) -> dict[str, dict[str, LabelledSet]]:
    """``{dataset: {"train": LabelledSet, "test": LabelledSet}}`` for the configured datasets."""
    out: dict[str, dict[str, LabelledSet]] = {}
    if "em" in config.datasets:
        out["em"] = {"train": load_sstem(sections=config.em_train, downsample=config.em_downsample),
                     "test": load_sstem(sections=config.em_test, downsample=config.em_downsample)}
    if "mri" in config.datasets:
        out["mri"] = {"train": load_mni152(config.mri_train, scale=config.mri_scale),
                      "test": load_mni152(config.mri_test, scale=config.mri_scale)}
    if "nuclei" in config.datasets:
        tiles = load_nuclei(config.nuclei_tile)
        half = len(tiles.images) // 2
        out["nuclei"] = {"train": tiles.subset(range(half)), "test": tiles.subset(range(half, len(tiles.images)))}
    return out


def real_suite_steps(config: RealSuiteConfig) -> int:
    """Progress steps reported by :func:`run_real_suite`."""
    per = 1 + len(config.datasets) + (len(config.datasets) if config.crossmodal else 0) + int(config.protocols)
    pixel = config.pixel_config()
    return 1 + len(config.backbones) * per + (pixel_suite_steps(pixel) if pixel is not None else 0)


def run_real_suite(
    config: RealSuiteConfig, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the real suite. Returns ``(results, timings)``; results are deterministic for a config."""
    tick = progress or (lambda _m: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_real_data(config)
    timings["data"] = time.perf_counter() - t0
    tick("loaded real data")
    store = FeatureStore()
    res: dict[str, Any] = {"backbones": [], "skipped": [], "segmentation": [], "crossmodal": [], "protocols": [],
                           "datasets": {}, "notes": []}
    for d, split in data.items():
        res["datasets"][d] = {"classes": list(split["train"].class_names), "source": split["train"].source,
                              "n_train": len(split["train"].images), "n_test": len(split["test"].images),
                              "image_shape": list(split["train"].images[0].shape[:2]),
                              "train": split["train"].notes, "test": split["test"].notes}
    kw = {"head": config.head, "class_weight": config.class_weight, "label_rule": config.label_rule,
          "n_boot": config.n_boot, "seed": config.seed}
    for spec in config.backbones:
        t0 = time.perf_counter()
        try:
            bb = build_backbone(spec)
        except (NotImplementedError, ImportError, OSError, RuntimeError) as e:
            res["skipped"].append({"backbone": spec, "reason": str(e).splitlines()[0] if str(e) else type(e).__name__})
            per = len(config.datasets) * (2 if config.crossmodal else 1) + int(config.protocols)
            for _ in range(1 + per):
                tick(f"skipped {spec}")
            continue
        res["backbones"].append({**bb.describe(), "spec": spec})
        tick(f"loaded {spec} ({bb.weights})")
        for d, split in data.items():
            tr, te = split["train"], split["test"]
            rec = fit_and_score(bb, store, f"real/{d}/train", (tr.images, tr.masks), f"real/{d}/test",
                                (te.images, te.masks), tr.class_names, **kw)
            res["segmentation"].append({"dataset": d, "spec": spec, **rec})
            tick(f"{spec} · {d}")
        if config.crossmodal:
            for src in data:
                # Binary foreground relabelling of the same images: features come from the cache.
                hkw = {k: kw[k] for k in ("head", "class_weight", "label_rule", "seed")}
                a = data[src]["train"].binary()
                model = fit_on(bb, store, f"real/{src}/train", (a.images, a.masks), **hkw)
                for dst in data:
                    b = data[dst]["test"].binary()
                    rec = score_on(model, bb, store, f"real/{dst}/test", (b.images, b.masks), a.class_names,
                                   n_boot=config.n_boot, seed=config.seed)
                    res["crossmodal"].append({"train": src, "test": dst, "spec": spec, "backbone": bb.name,
                                              "weights": bb.weights, "dice": rec["classes"]["foreground"]["dice"],
                                              "dice_ci": rec["classes"]["foreground"]["dice_ci"],
                                              "accuracy": rec["accuracy"]})
                tick(f"{spec} · transfer from {src}")
        if config.protocols:
            for r in run_protocol_comparison(bb, store, n_train=config.synthetic_n_train,
                                             n_test=config.synthetic_n_test, size=config.synthetic_size,
                                             seed=config.seed, n_boot=config.n_boot):
                res["protocols"].append({**r, "spec": spec})
            tick(f"{spec} · protocols")
        timings[f"backbone:{spec}"] = time.perf_counter() - t0
    notes = {r["report"]["note"] for r in res["protocols"] if r["report"].get("note")}
    res["notes"] = sorted(notes)
    pixel = config.pixel_config()
    if pixel is not None:
        t0 = time.perf_counter()
        pix, pix_timings = run_pixel_suite(pixel, progress=tick)
        res.update(pix)
        timings.update(pix_timings)
        timings["pixel"] = time.perf_counter() - t0
    return res, timings
