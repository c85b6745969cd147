"""Cross-fitted heads: ``folds`` copies of a head, each fitted without one fold of the training images.

On ssTEM the conv head's test Dice moved by ±0.02 (membrane) and ±0.06 (mitochondria) between copies trained on
different subsets of the same eight sections, and decision offsets chosen on two held-out sections did not carry
over to a head refit on all eight (docs/segmentation.md). Cross-fitting addresses both:

- every training image is predicted once by the copy that did not see it, so the decision offsets
  (:func:`~.decision.tune_offsets`) are chosen on *all* training images, out of fold, instead of on two;
- prediction averages the copies' class probabilities, which removes most of the variance between them.

This is scikit-learn's ``CalibratedClassifierCV(ensemble=True)`` pattern (one calibrated copy per fold, their
predictions averaged) with a decision rule in place of a probability calibration, and image-level folds (pixels
of one image are not independent samples). Folds are contiguous runs of the training images (``KFold`` without
shuffling): neighbouring serial sections, which resemble each other, are held out together, so the offsets are
chosen on images as unlike the training ones as the data allow. Cost: ``folds`` fits on ``(folds − 1) / folds`` of
the images, and ``folds`` predictions per image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from ..labels import encode_masks
from ..output import dumps_json
from .base import SegmentationHead, _mask_list, as_maps
from .decision import tune_offsets

__all__ = ["CrossFitHead"]

def _member_dir(i: int) -> str:
    return f"member-{i}"


class CrossFitHead(SegmentationHead):
    """An ensemble of ``folds`` copies of ``head``, each fitted without one fold of the images, with decision
    offsets tuned on their out-of-fold predictions.

    Parameters
    ----------
    head : SegmentationHead
        The head to copy (``sklearn.base.clone``: same parameters, unfitted); its common parameters
        (``unlabelled``, ``seed``, ``class_weight``, …) are this head's.
    folds : int
        Number of copies and of image folds (at least 2, at most the number of training images).
    tune : bool
        Choose per-class decision offsets on the out-of-fold predictions (stored as ``decision_offsets_``,
        applied by :meth:`decide`); ``False`` keeps the plain argmax of the averaged probabilities.

    Attributes
    ----------
    members_ : list of SegmentationHead
        The fitted copies; ``members_[k]`` did not see the images of fold ``k`` (``folds_[k]``).
    folds_ : list of list of int
        Training-image indices held out from each copy.
    decision_offsets_, decision_
        The tuned offsets and how they were chosen (saved in ``head.json``).

    Examples
    --------
    >>> from neuros.plugins.cv.heads import CrossFitHead, make_head
    >>> head = CrossFitHead(make_head("conv", unlabelled=0), folds=4)   # doctest: +SKIP
    >>> head.fit(maps, masks).predict(new_map)                          # doctest: +SKIP
    """

    kind = "crossfit"

    def __init__(self, head: SegmentationHead | None = None, folds: int = 4, tune: bool = True) -> None:
        self.head = head
        self.folds = folds
        self.tune = tune

    # the parameters every head has are the copied head's (read-only here: set them on `head`)
    label_rule = property(lambda self: self._base().label_rule)
    threshold = property(lambda self: self._base().threshold)
    class_weight = property(lambda self: self._base().class_weight)
    seed = property(lambda self: self._base().seed)
    single_class = property(lambda self: self._base().single_class)
    unlabelled = property(lambda self: self._base().unlabelled)
    max_samples_per_class = property(lambda self: self._base().max_samples_per_class)
    n_components = property(lambda self: self._base().n_components)

    def _base(self) -> SegmentationHead:
        if not isinstance(self.head, SegmentationHead) or isinstance(self.head, CrossFitHead):
            raise ValueError(f"CrossFitHead needs a head to copy (e.g. make_head('conv')), got {self.head!r}")
        return self.head

    def _check_params(self) -> None:
        self._base()._check_params()
        if isinstance(self.folds, bool) or not isinstance(self.folds, (int, np.integer)) or self.folds < 2:
            raise ValueError(f"folds must be an integer >= 2, got {self.folds!r}")
        if not isinstance(self.tune, bool):
            raise ValueError(f"tune must be True or False, got {self.tune!r}")

    # ----------------------------------------------------------------- training
    def fit(self, feature_maps: Any, masks: Sequence[np.ndarray]) -> CrossFitHead:
        """Fit one copy per fold on the other folds' images; tune the decision offsets out of fold.

        Raises
        ------
        ValueError
            Fewer training images than folds, a fold whose absence leaves a class unlabelled (the copies must
            share their classes), or any error of the copied head's ``fit``.
        """
        self._check_params()
        for attr in ("members_", "folds_", "decision_offsets_", "decision_"):
            self.__dict__.pop(attr, None)
        base = self._base()
        maps = as_maps(feature_maps)
        masks = _mask_list(feature_maps, masks)
        if len(maps) != len(masks):
            raise ValueError(f"{len(maps)} feature maps but {len(masks)} masks")
        n = len(maps)
        if n < self.folds:
            raise ValueError(f"cross-fitting with folds={self.folds} needs at least {self.folds} training images, "
                             f"got {n}; pass more images or fewer folds")
        parts = [p.tolist() for p in np.array_split(np.arange(n), int(self.folds))]
        # every copy must know every class (fail before any fit: a cross-fit is several long fits)
        values = [set(np.unique(np.asarray(m)).tolist()) - {base.unlabelled} for m in masks]
        everything = set().union(*values)
        for held in parts:
            seen = set().union(*(values[i] for i in range(n) if i not in held))
            if seen != everything:
                raise ValueError(
                    f"class(es) {sorted(everything - seen)} are labelled only in images {held}, so the copy trained "
                    "without them would not know them: every class must be labelled outside each fold; use fewer "
                    "folds or label every class in more images")
        members: list[SegmentationHead] = []
        proba: list[np.ndarray] = []
        truth: list[np.ndarray] = []
        for held in parts:  # one model fit per fold (a handful), not a loop over pixels
            rest = [i for i in range(n) if i not in held]
            member = clone(base).fit([maps[i] for i in rest], [masks[i] for i in rest])
            members.append(member)
            if self.tune:
                p = member.predict_proba([maps[i] for i in held])
                t, _ = encode_masks([masks[i] for i in held], [maps[i].image_shape for i in held],
                                    unlabelled=base.unlabelled, classes=member.classes_)
                proba += p
                truth += t
        self.members_, self.folds_ = members, parts
        first = members[0]
        for attr in ("classes_", "backbone_spec_", "backbone_", "weights_", "feature_dim_", "stride_",
                     "preprocessing_", "adapted_"):
            setattr(self, attr, getattr(first, attr, None))
        self.n_train_patches_ = max(int(m.n_train_patches_) for m in members)
        if self.tune:
            offsets, before, after = tune_offsets(proba, truth)
            self.decision_offsets_ = offsets
            self.decision_ = {"rule": "argmax(log p + offsets) of the copies' mean probabilities",
                              "offsets": [float(v) for v in offsets], "tuned_on": "out-of-fold predictions",
                              "folds": parts, "mean_dice_out_of_fold": {"argmax": before, "tuned": after}}
        return self

    # ----------------------------------------------------------------- prediction
    def predict_proba(self, feature_maps: Any, level: str = "pixel",
                      interpolation: str = "bilinear") -> np.ndarray | list[np.ndarray]:
        """The copies' class probabilities, averaged: (H, W, K) per image at pixel level, (h, w, K) at patch level."""
        self._check_fitted()
        total = None
        for member in self.members_:  # one prediction per copy
            p = member.predict_proba(feature_maps, level, interpolation)
            total = p if total is None else (
                [a + b for a, b in zip(total, p, strict=True)] if isinstance(p, list) else total + p)
        k = float(len(self.members_))
        return [a / k for a in total] if isinstance(total, list) else total / k

    @property
    def context_px(self) -> int:
        """The widest reach among the copies (they share their parameters, so all are equal)."""
        return max((m.context_px for m in getattr(self, "members_", [])), default=0)

    @property
    def fitted_kind(self) -> str:
        self._check_fitted()
        return f"crossfit({self.members_[0].fitted_kind})"

    # ----------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        base = self._base()
        meta["params"] = {"head": {"kind": base.kind, "params": base.get_params()}, "folds": int(self.folds),
                          "tune": bool(self.tune)}
        meta["members"] = [_member_dir(i) for i in range(len(self.members_))]
        meta["held_out_folds"] = self.folds_
        return meta

    def _save_weights(self, folder: Path) -> list[str]:
        files = []
        for i, member in enumerate(self.members_):
            sub = folder / _member_dir(i)
            sub.mkdir()
            mmeta = member.metadata()
            mmeta["files"] = member._write_files(sub)
            (sub / "head.json").write_text(dumps_json(mmeta), encoding="utf-8")
            files += [f"{_member_dir(i)}/{f}" for f in [*mmeta["files"], "head.json"]]
        return files

    def _load_weights(self, folder: Path) -> None:
        """The fold record; ``load_head`` loads the copies (``members_``) from the member folders first."""
        self.folds_ = json.loads((folder / "head.json").read_text(encoding="utf-8")).get("held_out_folds")

    def _load_reduction(self, folder: Path) -> None:
        """Each copy keeps its own PCA (in its folder)."""
