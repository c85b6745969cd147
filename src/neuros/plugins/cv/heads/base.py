"""The segmentation-head interface: fit on feature maps + pixel masks, predict at patch or pixel resolution.

A head is an estimator in the scikit-learn style: every parameter is set in ``__init__`` and stored
unchanged; everything learned ends in ``_``. Subclasses implement two matrix methods — ``_fit_matrix(X, y, w)``
and ``_proba_matrix(X)`` — plus ``_save_weights``/``_load_weights``; this base class does the rest once:

- ``fit(feature_maps, masks)``: checks masks (integer labels, shapes), encodes label values to classes,
  turns pixel masks into patch labels (``labels.mask_targets``), optional class balancing, and records the
  backbone spec (name, weights, options that change the features) the head was trained on; with
  ``single_class="majority"``, training patches of one class give a head that predicts that class;
- ``predict_proba(maps, level="pixel" | "patch")``: classifies every grid cell in one matrix call and, at
  pixel level, upsamples the class probabilities (``interpolation="bilinear"``: ``FeatureMap.to_pixels``, or
  ``"nearest"``: each patch's value on all its pixels; no loop over pixels). :meth:`predict` is its argmax —
  the one way head output becomes pixel masks;
- ``save(dir)`` / :func:`load_head`: weights plus ``head.json`` with the backbone spec, written atomically;
  heads from before specs load too (their ``backbone``/``weights``/``preprocessing`` keys become a spec).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ..backbones.placeholder import PLACEHOLDER_NOTE, PLACEHOLDER_WEIGHTS
from ..features import FeatureMap
from ..labels import RULES, class_balance_weights, mask_targets
from ..output import atomic_output_dir, dumps_json

__all__ = ["FORMAT", "SegmentationHead", "as_maps"]

FORMAT = "neuros-cv/head/1"
LEVELS = ("pixel", "patch")
INTERPOLATIONS = ("bilinear", "nearest")
SINGLE_CLASS = ("error", "majority")


def as_maps(maps: Any, name: str = "feature_maps") -> list[FeatureMap]:
    """A list of :class:`FeatureMap` from one map or a sequence of them (one-line error otherwise)."""
    if isinstance(maps, FeatureMap):
        return [maps]
    if not isinstance(maps, (list, tuple)):
        raise TypeError(f"{name} must be a FeatureMap or a list of them, got {type(maps).__name__}")
    for i, fm in enumerate(maps):
        if not isinstance(fm, FeatureMap):
            raise TypeError(f"{name}[{i}] must be a FeatureMap, got {type(fm).__name__}")
    return list(maps)


class SegmentationHead(BaseEstimator):
    """Base class of all heads (see the module docstring for the contract).

    A scikit-learn estimator (``sklearn.base.clone``, ``GridSearchCV`` over head parameters): the parameters are
    exactly the ``__init__`` signature of each head class, stored unchanged.

    Parameters common to every head
    -------------------------------
    label_rule : {"argmax", "majority", "fraction"}
        How a patch gets its training label from the pixels it covers (``labels.patch_targets``).
    threshold : float
        Foreground fraction for ``label_rule="fraction"``.
    class_weight : {None, "balanced"}
        ``"balanced"`` weights every class equally in the loss (n / (K · count)).
    seed : int
        Random seed of the head's optimiser or ensemble.
    single_class : {"error", "majority"}
        When every training patch has the same label: ``"error"`` refuses to fit; ``"majority"`` (the report's
        rule) gives a head that predicts that class everywhere (``fitted_kind`` is then ``"majority"``).
    """

    kind = "base"
    #: Whether ``class_weight="balanced"`` is supported (the kNN head has no loss to weight).
    supports_class_weight = True

    def __init__(self, label_rule: str = "argmax", threshold: float = 0.5, class_weight: str | None = None,
                 seed: int = 0, single_class: str = "error") -> None:
        self.label_rule = label_rule
        self.threshold = threshold
        self.class_weight = class_weight
        self.seed = seed
        self.single_class = single_class

    # ----------------------------------------------------------------- parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        """The parameters of ``cls.__init__`` in signature order (scikit-learn's rule: no ``*args``/``**kw``)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            raise TypeError(f"{cls.__name__}.__init__ must name every parameter explicitly (no *args or **kwargs)")
        return [p.name for p in params]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The ``__init__`` parameters and their values, as scikit-learn's ``get_params``.

        Parameters
        ----------
        deep : bool
            Also list the parameters of parameter values that are estimators themselves (as
            ``name__param``); the heads have none, so both settings return the same here.

        Returns
        -------
        dict
            Exactly the names of ``type(self).__init__``, values stored unchanged (JSON-serialisable).
        """
        out: dict[str, Any] = {}
        for name in self._param_names():
            value = getattr(self, name)
            out[name] = value
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
        return out

    def set_params(self, **params: Any) -> SegmentationHead:
        """Set ``__init__`` parameters (``name__param`` reaches into an estimator-valued one); returns self.

        Raises
        ------
        ValueError
            A name that is not a parameter of this head (one line, with the valid names).
        """
        valid = self._param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; valid parameters: {', '.join(valid)}"
                )
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            getattr(self, name).set_params(**sub_params)
        return self

    def _check_params(self) -> None:
        if self.label_rule not in RULES:
            raise ValueError(f"label_rule must be one of {', '.join(RULES)}, got {self.label_rule!r}")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        if self.single_class not in SINGLE_CLASS:
            raise ValueError(f"single_class must be 'error' or 'majority', got {self.single_class!r}")

    # ----------------------------------------------------------------- training data
    def _patch_table(self, maps: list[FeatureMap], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) with y as class indices; also fixes classes_ and the feature identity on first call."""
        if len(maps) == 0:
            raise ValueError("empty training set: pass at least one feature map and mask")
        if len(maps) != len(masks):
            raise ValueError(f"{len(maps)} feature maps but {len(masks)} masks")
        ids = {(fm.backbone, fm.weights, fm.feature_dim, float(fm.stride)) for fm in maps}
        if len(ids) != 1:
            raise ValueError(f"training feature maps come from different backbones/weights/dims: {sorted(ids)}")
        known = getattr(self, "classes_", None)
        targets, classes = mask_targets(masks, [fm.image_shape for fm in maps], round(maps[0].stride),
                                        self.label_rule, self.threshold, known)
        if known is None:
            self.classes_ = classes
            self._record_identity(maps[0])
        self._check_maps(maps)
        for lab, fm in zip(targets, maps, strict=True):
            if lab.shape != fm.grid_shape:
                raise ValueError(f"label grid {lab.shape} does not match feature grid {fm.grid_shape}")
        X = np.concatenate([fm.flat() for fm in maps]).astype(np.float32, copy=False)
        return X, np.concatenate([lab.ravel() for lab in targets])

    def _weights(self, y: np.ndarray) -> np.ndarray | None:
        return class_balance_weights(y, len(self.classes_)) if self.class_weight == "balanced" else None

    def _reset(self) -> None:
        self._check_params()
        for attr in [a for a in vars(self) if a.endswith("_")]:
            delattr(self, attr)  # refit from scratch

    def fit(self, feature_maps: Any, masks: Sequence[np.ndarray]) -> SegmentationHead:
        """Fit on feature maps (one per image) and their pixel masks (same H×W as each map's image).

        Raises
        ------
        ValueError
            With ``single_class="error"``, when the masks hold one class or every training patch gets the
            same label under ``label_rule``.
        """
        self._reset()
        maps = as_maps(feature_maps)
        X, y = self._patch_table(maps, list(masks))
        self.n_train_patches_ = int(y.size)
        if np.unique(y).size < 2:
            if self.single_class == "majority":
                self.single_class_ = int(np.bincount(y).argmax())
                return self
            raise ValueError(self._single_class_message())
        self._fit_matrix(X, y, self._weights(y))
        return self

    def _single_class_message(self) -> str:
        if self.classes_.size < 2:
            return (f"training masks hold a single class ({self.classes_.tolist()}); a head needs at least two "
                    "classes (or single_class='majority' to predict that class)")
        return (f"every training patch has the same label under label_rule={self.label_rule!r} "
                "(the foreground is smaller than a patch); use label_rule='fraction' with a lower threshold")

    @property
    def fitted_kind(self) -> str:
        """What was fitted: the head's ``kind``, or ``"majority"`` when training held a single class."""
        self._check_fitted()
        return "majority" if getattr(self, "single_class_", None) is not None else self.kind

    def _class_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, K) class probabilities of a patch matrix: the model's, or one-hot on the single training class."""
        constant = getattr(self, "single_class_", None)
        if constant is None:
            return self._proba_matrix(X)
        out = np.zeros((X.shape[0], len(self.classes_)), dtype=np.float32)
        out[:, constant] = 1.0
        return out

    # ----------------------------------------------------------------- prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit() or load_head() first")

    def _record_identity(self, fm: FeatureMap) -> None:
        """Remember what made the training features: the backbone's spec, plus name, weights, dim and stride."""
        self.backbone_spec_ = fm.spec
        self.backbone_, self.weights_, self.feature_dim_ = fm.backbone, fm.weights, fm.feature_dim
        self.stride_ = float(fm.stride)
        self.preprocessing_ = dict(fm.meta.get("preprocessing", {})) if fm.meta else {}

    def _check_maps(self, maps: list[FeatureMap]) -> None:
        """Refuse maps made otherwise than the training features: a one-line error naming the field that differs.

        Maps carrying a spec are compared with the head's spec (name, weights and every option that changes the
        features: scale, layers, norm, l2, preprocessing, …); maps without one (built by hand) by name, weights,
        feature dimension and stride.
        """
        want = getattr(self, "backbone_spec_", None)
        for i, fm in enumerate(maps):
            if want is not None and fm.spec is not None:
                why = want.mismatch(fm.spec)
                if why is not None:
                    raise ValueError(f"feature map {i}: {why}; extract features with the head's backbone {want}")
            got = (fm.backbone, fm.weights, fm.feature_dim)
            expected = (self.backbone_, self.weights_, self.feature_dim_)
            if got != expected:
                raise ValueError(
                    f"feature map {i} comes from backbone {got[0]!r} (weights {got[1]!r}, {got[2]} features) but "
                    f"this head was trained on {expected[0]!r} (weights {expected[1]!r}, {expected[2]} features); "
                    "extract features with the head's backbone"
                )
            if self.stride_ and abs(float(fm.stride) - self.stride_) > 1e-9:
                raise ValueError(
                    f"feature map {i}: features were extracted with stride {float(fm.stride):g} but the head was "
                    f"trained with stride {self.stride_:g}; extract features with the head's backbone"
                )

    def predict_proba(self, feature_maps: Any, level: str = "pixel",
                      interpolation: str = "bilinear") -> np.ndarray | list[np.ndarray]:
        """Class probabilities: (H, W, K) per image at ``level="pixel"``, (h, w, K) at ``"patch"``.

        Columns follow :attr:`classes_`. Pass one FeatureMap to get one array, a list to get a list. At pixel
        level, ``interpolation="bilinear"`` blends neighbouring patches; ``"nearest"`` gives every pixel its
        patch's probabilities (the patch predictions painted onto pixels, as the report scores them).
        """
        self._check_fitted()
        if level not in LEVELS:
            raise ValueError(f"level must be 'pixel' or 'patch', got {level!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        single = isinstance(feature_maps, FeatureMap)
        maps = as_maps(feature_maps)
        if not maps:
            raise ValueError("no feature maps to predict")
        self._check_maps(maps)
        proba = self._class_proba(np.concatenate([fm.flat() for fm in maps]).astype(np.float32, copy=False))
        out, start = [], 0
        for fm in maps:
            h, w = fm.grid_shape
            grid = proba[start : start + h * w].reshape(h, w, -1)
            start += h * w
            out.append(_to_pixels(grid, fm, interpolation) if level == "pixel" else grid)
        return out[0] if single else out

    def predict(self, feature_maps: Any, level: str = "pixel",
                interpolation: str = "bilinear") -> np.ndarray | list[np.ndarray]:
        """Label maps (values from :attr:`classes_`): (H, W) at pixel level, (h, w) at patch level.

        The argmax of :meth:`predict_proba` (same ``level`` and ``interpolation``).
        """
        proba = self.predict_proba(feature_maps, level, interpolation)
        if isinstance(proba, list):
            return [self.classes_[p.argmax(axis=2)] for p in proba]
        return self.classes_[proba.argmax(axis=2)]

    # ----------------------------------------------------------------- subclass hooks
    def _fit_matrix(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> None:
        raise NotImplementedError

    def _proba_matrix(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _save_weights(self, folder: Path) -> list[str]:
        raise NotImplementedError

    def _load_weights(self, folder: Path) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """What ``head.json`` records: format, kind, parameters, classes and the features it expects.

        ``backbone_spec`` (:meth:`BackboneSpec.to_dict`) is what predictions rebuild the backbone from;
        ``backbone``, ``weights``, ``feature_dim``, ``stride`` and ``preprocessing`` describe it for readers.
        """
        self._check_fitted()
        spec = getattr(self, "backbone_spec_", None)
        return {
            "format": FORMAT,
            "kind": self.kind,
            "params": self.get_params(),
            "classes": [int(c) for c in self.classes_],
            "backbone_spec": None if spec is None else spec.to_dict(),
            "backbone": self.backbone_,
            "weights": self.weights_,
            "feature_dim": int(self.feature_dim_),
            "stride": float(self.stride_),
            "preprocessing": self.preprocessing_,
            "n_train_patches": int(self.n_train_patches_),
            **({"placeholder": PLACEHOLDER_NOTE} if self.weights_ == PLACEHOLDER_WEIGHTS else {}),
        }

    def save(self, folder: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
        """Write the weights and ``head.json`` into ``folder`` atomically (all files or none).

        ``overwrite`` replaces only the files a previous save wrote there; ``folder`` may not be, contain or lie
        inside any of ``inputs`` (the training images and masks).
        """
        if getattr(self, "single_class_", None) is not None:
            raise ValueError(f"this head learned nothing to save: training held one class "
                             f"({self.classes_[self.single_class_]}); train on masks with at least two classes")
        meta = self.metadata()
        with atomic_output_dir(folder, overwrite=overwrite, inputs=inputs, command="segment train") as tmp:
            meta["files"] = self._save_weights(tmp)
            (tmp / "head.json").write_text(dumps_json(meta), encoding="utf-8")
        return Path(folder)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def _to_pixels(grid: np.ndarray, fm: FeatureMap, interpolation: str) -> np.ndarray:
    """A (h, w, K) grid at the pixels of ``fm``'s image: bilinear (``FeatureMap.to_pixels``) or nearest."""
    if interpolation == "bilinear":
        return fm.to_pixels(grid)
    step = round(fm.stride)
    return np.repeat(np.repeat(grid, step, axis=0), step, axis=1)[: fm.image_shape[0], : fm.image_shape[1]]

