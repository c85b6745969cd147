"""Head kinds by name: ``make_head("logistic")``, ``list_heads()``, ``load_head(folder)`` (the kind recorded in
``head.json`` picks the class); :data:`DEFAULT_HEAD`, the settings the documented results use (the real suite's
head and ``neuros-cv segment train``'s defaults)."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.spec import BackboneSpec, non_default_options, option_defaults, takes_weights
from .base import FORMAT, SegmentationHead
from .conv import ConvDecoderHead
from .crossfit import CrossFitHead
from .linear import GradientBoostingHead, IncrementalLinearHead, KNNHead, LogisticHead, RandomForestHead
from .mlp import MLPHead

__all__ = ["DEFAULT_HEAD", "DEFAULT_PIXEL_HEAD", "HEADS", "HeadSettings", "head_class", "list_heads", "load_head",
           "make_head"]


@dataclass(frozen=True)
class HeadSettings:
    """A head's kind, class weighting and patch label rule (see :class:`~.base.SegmentationHead`)."""

    kind: str = "logistic"
    class_weight: str | None = "balanced"
    label_rule: str = "argmax"


#: The best-measured settings documented in docs/segmentation.md: the real suite (``RealSuiteConfig``) and
#: ``neuros-cv segment train`` both take their defaults from here, so the CLI trains the head the tables used.
#: Class balancing matters on real EM: membrane Dice 0.35 balanced vs 0.23 unweighted (filterbank, held-out ssTEM).
DEFAULT_HEAD = HeadSettings()

#: The pixel head (feature maps at stride <= 4, e.g. ``filterbank[stride=1]``): a class-balanced MLP, the most
#: accurate and 5x faster to predict than hgb on ssTEM (benchmarks/bench_pixel_heads.py, docs/benchmarks.md).
DEFAULT_PIXEL_HEAD = HeadSettings(kind="mlp")

HEADS: dict[str, type[SegmentationHead]] = {
    c.kind: c for c in (LogisticHead, IncrementalLinearHead, KNNHead, RandomForestHead, GradientBoostingHead, MLPHead,
                        ConvDecoderHead)
}


def list_heads() -> list[str]:
    """Registered head kinds."""
    return list(HEADS)


def head_class(kind: str) -> type[SegmentationHead]:
    """The class registered as ``kind`` (one-line error with close matches otherwise)."""
    if kind not in HEADS:
        close = difflib.get_close_matches(str(kind), list(HEADS), n=2, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown head {kind!r}{hint} (available: {', '.join(HEADS)})")
    return HEADS[kind]


def make_head(kind: str = "logistic", seed: int = 0, class_weight: str | None = None, **params: Any):
    """A fresh head of ``kind`` (``logistic``, ``sgd``, ``knn``, ``rf``, ``hgb``, ``mlp``).

    The head fits feature maps + pixel masks; ``experiments.pipeline`` (the report's protocol) calls the same
    ``fit(maps, masks)`` with ``label_rule="majority", single_class="majority"``.
    """
    return head_class(kind)(seed=seed, class_weight=class_weight, **params)


def _spec_of(meta: dict[str, Any]) -> BackboneSpec | None:
    """The backbone spec of a ``head.json``: its ``backbone_spec``, or one read from the keys older heads wrote.

    Heads written before specs existed name ``backbone`` and ``weights`` (the weights used) and record the
    image scale, intensity scaling and channels in ``preprocessing``; those become the spec's options.
    """
    if "backbone_spec" in meta:
        record = meta["backbone_spec"]
        return None if record is None else BackboneSpec.from_dict(record)
    name = meta.get("backbone")
    if name is None:  # fitted on a patch matrix: no backbone
        return None
    weights = meta.get("weights") if takes_weights(name) else None
    pre = meta.get("preprocessing") or {}
    defaults = option_defaults(name)
    opts = {k: pre[k] for k in ("scale", "scaling", "channels") if k in pre and k in defaults}
    return BackboneSpec(name, weights, non_default_options(opts, defaults))


def _construct(kind: str, params: dict[str, Any]) -> SegmentationHead:
    """An unfitted head from ``head.json``'s kind and parameters (a cross-fitted head names the head it copies)."""
    if kind == CrossFitHead.kind:
        inner = params["head"]
        return CrossFitHead(**{**params, "head": _construct(inner["kind"], inner["params"])})
    return head_class(kind)(**params)


def load_head(folder: str | Path) -> SegmentationHead:
    """Load a head written by :meth:`SegmentationHead.save`.

    Raises a one-line ``ValueError`` when ``head.json`` is missing, unreadable or from another format.
    Heads stored with joblib run pickle on load: only load heads you trust.
    """
    path = Path(folder)
    meta_file = path / "head.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved head: head.json not found")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {meta_file}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file} is not a {FORMAT} head description")
    try:
        head = _construct(meta["kind"], meta["params"])
    except (TypeError, KeyError) as e:
        raise ValueError(f"{meta_file}: bad head parameters: {str(e).splitlines()[0]}") from None
    head.classes_ = np.asarray(meta["classes"], dtype=np.int64)
    head.backbone_, head.weights_ = meta["backbone"], meta["weights"]
    head.feature_dim_, head.stride_ = int(meta["feature_dim"]), float(meta["stride"])
    head.preprocessing_ = dict(meta.get("preprocessing", {}))
    try:
        head.backbone_spec_ = _spec_of(meta)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{meta_file}: bad backbone record: {str(e).splitlines()[0]}") from None
    head.n_train_patches_ = int(meta.get("n_train_patches", 0))
    decision = meta.get("decision")
    if decision is not None:
        try:
            head.decision_ = dict(decision)
            head.decision_offsets_ = np.asarray(decision["offsets"], dtype=np.float32).reshape(len(head.classes_))
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"{meta_file}: bad decision record: {str(e).splitlines()[0]}") from None
    missing = [f for f in meta.get("files", []) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"saved head {path} is incomplete: missing {', '.join(missing)}")
    try:
        head._load_reduction(path)
        if isinstance(head, CrossFitHead):  # its copies are saved heads of their own, one folder each
            head.members_ = [load_head(path / str(m)) for m in meta.get("members", [])]
        head._load_weights(path)
    except (OSError, ValueError, KeyError, EOFError, RuntimeError) as e:
        raise ValueError(f"cannot load head weights from {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    return head
