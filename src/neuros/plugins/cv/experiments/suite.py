"""The report's benchmark suite: one config, three experiments, one JSON-serialisable result.

``run_suite(SuiteConfig())`` reproduces the report's Tables 1–3 on the report's backbones (CNX-Tiny and
ViT-Large). The config is a plain dataclass built from keyword arguments or a mapping (unknown keys are
rejected by name), and it is stored resolved in ``results.json``. The built-in suites are TOML files in
``neuros/plugins/cv/suites/`` (``report.toml`` is the default of ``neuros-cv bench``); :func:`load_suite` reads
a built-in suite by name or any TOML file by path.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import numpy as np

from ..backbones.base import Backbone, UnknownBackboneError, lookup
from ..backbones.dinov3 import parse_weights
from ..backbones.spec import BackboneSpec, split_options, takes_weights
from ..datasets.synthetic import MODALITIES, PROTOCOLS, make_dataset, make_image
from .pipeline import FeatureStore
from .registration import MIN_OVERLAP, min_overlap_patches, run_registration, shift_overlap
from .segmentation import run_crossmodal, same_modality

__all__ = [
    "SuiteConfig",
    "backbone_spec",
    "build_backbone",
    "builtin_suites",
    "load_suite",
    "run_suite",
    "suite_datasets",
    "suite_steps",
]

REPORT_SHIFTS = ((1, 1), (0, 2), (-2, -1))


def reject_unknown_keys(cls: type, data: Mapping[str, Any], label: str) -> None:
    """Raise a one-line ``ValueError`` naming every key of ``data`` that is not a field of dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{label}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


@dataclass(frozen=True)
class SuiteConfig:
    """Everything that determines a suite's numbers."""

    name: str = "report"
    backbones: tuple[str, ...] = ("cnx-tiny", "vit-large")
    weights: str = "auto"
    modalities: tuple[str, ...] = MODALITIES
    protocol: str = "report"
    n_train: int = 10
    n_test: int = 5
    size: int = 128
    seed: int = 0
    head: str = "logistic"
    label_rule: str = "majority"
    shifts: tuple[tuple[int, int], ...] = REPORT_SHIFTS
    min_overlap: float = MIN_OVERLAP
    backbone_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ValueError:
            return ValueError(f"suite config: {key}: {msg}")

        for key in ("n_train", "n_test", "size", "seed"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise bad(key, f"must be an integer, got {v!r}")
            minimum = {"n_train": 1, "n_test": 1, "size": 16, "seed": 0}[key]
            if v < minimum:
                raise bad(key, f"must be >= {minimum}, got {v}")
        if not self.backbones:
            raise bad("backbones", "name at least one backbone")
        for b in self.backbones:
            try:
                lookup(BackboneSpec.parse(b).name)  # unknown names raise with suggestions
            except (UnknownBackboneError, TypeError, ValueError) as e:
                raise bad("backbones", str(e)) from None
        if not isinstance(self.backbone_options, Mapping) or not all(
            isinstance(v, Mapping) for v in self.backbone_options.values()
        ):
            raise bad("backbone_options", "must map backbone names to tables of options")
        for b in self.backbone_options:
            if b not in self.backbones:
                raise bad("backbone_options", f"{b!r} is not one of the suite's backbones: {', '.join(self.backbones)}")
        if not self.modalities:
            raise bad("modalities", "name at least one modality")
        for m in self.modalities:
            if m not in MODALITIES:
                raise bad("modalities", f"unknown modality {m!r}; choose from {', '.join(MODALITIES)}")
        if self.protocol not in PROTOCOLS:
            raise bad("protocol", f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}")
        try:
            parse_weights(self.weights)  # auto, placeholder, random, random(seed=N), pretrained[:<source>]
        except (ValueError, TypeError) as e:
            raise bad("weights", str(e)) from None
        for s in self.shifts:
            if len(s) != 2 or not all(isinstance(v, (int, np.integer)) for v in s):
                raise bad("shifts", f"each shift must be two integers (dy, dx) in patches, got {s!r}")
            if max(abs(int(v)) for v in s) * 16 >= self.size:
                raise bad("shifts", f"shift {tuple(s)} (patches) does not fit a {self.size}-pixel image")
        mo = self.min_overlap
        if isinstance(mo, bool) or not isinstance(mo, (int, float, np.integer, np.floating)) or not 0 <= mo <= 1:
            raise bad("min_overlap", f"must be a fraction of the grid's patches in [0, 1], got {mo!r}")
        grid = (-(-self.size // 16),) * 2  # the 16-pixel patch grid of every backbone of the suite
        need = min_overlap_patches(grid, float(mo))
        for s in self.shifts:
            if shift_overlap(grid, s) < need:
                raise bad("shifts", f"shift {tuple(s)} keeps {shift_overlap(grid, s)} of {grid[0] * grid[1]} patches "
                          f"overlapping, fewer than min_overlap = {mo} ({need} patches); use a smaller shift, a "
                          "larger size or a smaller min_overlap")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteConfig:
        """Build from a mapping (e.g. a parsed TOML file); unknown keys are rejected by name."""
        reject_unknown_keys(cls, data, "suite config")
        kw: dict[str, Any] = dict(data)
        for key in ("backbones", "modalities"):
            if key in kw:
                if isinstance(kw[key], str):
                    kw[key] = (kw[key],)
                if not isinstance(kw[key], (list, tuple)):
                    raise ValueError(f"suite config: {key}: must be a list of names, got {kw[key]!r}")
                kw[key] = tuple(kw[key])
        if "shifts" in kw:
            pairs = kw["shifts"]
            if not isinstance(pairs, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in pairs):
                raise ValueError(f"suite config: shifts: must be a list of [dy, dx] pairs, got {kw['shifts']!r}")
            kw["shifts"] = tuple(tuple(s) for s in kw["shifts"])
        for key in ("name", "weights", "protocol", "head", "label_rule"):
            if key in kw and not isinstance(kw[key], str):
                raise ValueError(f"suite config: {key}: must be a string, got {kw[key]!r}")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["backbones"] = list(self.backbones)
        d["modalities"] = list(self.modalities)
        d["shifts"] = [list(s) for s in self.shifts]
        return d


def _suites_dir() -> Any:
    # package data (pyproject: "suites/*.toml"), not a Python package
    return resources.files("neuros.plugins.cv").joinpath("suites")


def builtin_suites() -> list[str]:
    """Names of the built-in suites (the TOML files shipped in ``neuros/plugins/cv/suites/``)."""
    files = _suites_dir().iterdir()
    return sorted(f.name[: -len(".toml")] for f in files if f.name.endswith(".toml"))


def load_suite(source: str | os.PathLike[str] = "report", **overrides: Any) -> SuiteConfig:
    """Read a suite from a TOML file (a path) or a built-in suite (a name such as ``"report"``).

    ``overrides`` replace keys of the file. Unknown keys and bad values raise :class:`ValueError` naming
    the key; a file that is not valid TOML raises naming the file and the line.

    Examples
    --------
    >>> load_suite("report").backbones
    ('cnx-tiny', 'vit-large')
    """
    text, where = _suite_text(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"suite config {where}: not valid TOML: {e}") from None
    if "suite" in data and isinstance(data["suite"], Mapping) and len(data) == 1:
        data = dict(data["suite"])  # a [suite] table is accepted as well as top-level keys
    try:
        return SuiteConfig.from_dict({**data, **overrides})
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {e}") from None


def _suite_text(source: str | os.PathLike[str]) -> tuple[str, str]:
    src = str(source)
    if os.sep not in src and "/" not in src and not src.endswith(".toml"):
        names = builtin_suites()
        if src not in names:
            raise ValueError(f"unknown built-in suite {src!r}; choose from {', '.join(names)} or give a .toml path")
        return _suites_dir().joinpath(f"{src}.toml").read_text(encoding="utf-8"), f"{src}.toml"
    path = Path(src).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"suite config {path} not found")
    return path.read_text(encoding="utf-8"), str(path)


def suite_steps(config: SuiteConfig) -> int:
    """Number of progress steps ``run_suite`` reports (for a progress bar)."""
    per_backbone = 1 + 2 * len(config.modalities) + 1 + len(config.modalities)
    return len(config.backbones) * per_backbone


def suite_datasets(config: SuiteConfig) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The suite's synthetic data: ``{modality: {"train": (images, masks), "test": (images, masks)}}``."""
    # Train and test draws use distinct seeds derived from the suite seed, so they never share images.
    out = {}
    for m in config.modalities:
        tr = make_dataset(m, config.n_train, config.size, seed=2 * config.seed, protocol=config.protocol)
        te = make_dataset(m, config.n_test, config.size, seed=2 * config.seed + 1, protocol=config.protocol)
        out[m] = {"train": tr, "test": te}
    return out


def backbone_spec(config: SuiteConfig, name: str) -> tuple[BackboneSpec, dict[str, Any]]:
    """The spec of backbone ``name`` (a name or spec string) as the suite builds it, and its execution options.

    Weights come from the spec string, else its ``backbone_options`` table, else the suite's ``weights`` (for
    backbones that take weights); options that change the features join the spec, the rest (batch size,
    device, tiling) are returned apart.
    """
    spec = BackboneSpec.parse(name)
    opts = dict(config.backbone_options.get(name, {}))
    ident, extras = split_options(spec.name, opts)
    weights = spec.weights or opts.get("weights") or (config.weights if takes_weights(spec.name) else None)
    return spec.with_weights(weights).with_options(**ident), extras


def build_backbone(config: SuiteConfig, name: str) -> Backbone:
    """The backbone ``name`` as the suite builds it (see :func:`backbone_spec`)."""
    spec, extras = backbone_spec(config, name)
    return spec.build(**extras)


def run_suite(
    config: SuiteConfig, progress: Callable[[str], None] | None = None, store: FeatureStore | None = None
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the three experiments for every backbone.

    Returns
    -------
    results : dict
        ``{"backbones": [...], "segmentation": [...], "crossmodal": [...], "registration": [...],
        "notes": [...]}`` — deterministic for a given config.
    timings : dict
        Wall-clock seconds per stage (kept apart from the deterministic results).

    A ``store`` passed in keeps the extracted features for later use (e.g. the report's example figures).
    """
    tick = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = suite_datasets(config)
    timings["data"] = time.perf_counter() - t0
    store = store if store is not None else FeatureStore(progress=tick)
    results: dict[str, Any] = {"backbones": [], "segmentation": [], "crossmodal": [], "registration": []}
    for name in config.backbones:
        t0 = time.perf_counter()
        bb: Backbone = build_backbone(config, name)
        results["backbones"].append(bb.describe())
        tick(f"loaded {name} ({bb.weights})")
        kw = {"head": config.head, "rule": config.label_rule, "protocol": config.protocol, "seed": config.seed}
        grid = run_crossmodal(bb, data, store, config.modalities, config.modalities, **kw)
        results["crossmodal"].extend(grid)
        results["segmentation"].extend(same_modality(grid))
        tick(f"segmentation {name}")
        for m in config.modalities:
            image, _ = make_image(m, config.size, seed=2 * config.seed, protocol=config.protocol, index=0)
            results["registration"].append(run_registration(bb, m, image, config.shifts, config.min_overlap))
            tick(f"registration {name} · {m}")
        timings[f"backbone:{name}"] = time.perf_counter() - t0
    results["notes"] = sorted({r["note"] for r in results["crossmodal"] if r.get("note")})
    return results, timings
