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
  ``"nearest"``: each patch's value on all its pixels; no loop over pixels). :meth:`decide` turns them into
  labels (their argmax, or with per-class offsets tuned on held-out images) — the one way head output becomes
  pixel masks, used by :meth:`predict` and every prediction path;
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
from ..dense import TiledFeatures
from ..features import FeatureMap, upsample_to_pixels
from ..labels import CLASS_WEIGHTS, RULES, class_balance_weights, mask_targets, sample_positions
from ..output import atomic_output_dir, dumps_json

__all__ = ["FORMAT", "SegmentationHead", "as_maps"]

FORMAT = "neuros-cv/head/1"
LEVELS = ("pixel", "patch")
INTERPOLATIONS = ("bilinear", "nearest", "guided")
SINGLE_CLASS = ("error", "majority")
#: Rows of the training table a PCA (``n_components``) is fitted on (a seeded sample when there are more).
PCA_FIT_ROWS = 100_000
_PCA_FILE = "pca.npz"

Maps = FeatureMap | TiledFeatures


def as_maps(maps: Any, name: str = "feature_maps") -> list[Maps]:
    """A list of feature maps (:class:`FeatureMap` or :class:`~..dense.TiledFeatures`) from one or a sequence."""
    if isinstance(maps, (FeatureMap, TiledFeatures)):
        return [maps]
    if not isinstance(maps, (list, tuple)):
        raise TypeError(f"{name} must be a FeatureMap (or TiledFeatures) or a list of them, got {type(maps).__name__}")
    for i, fm in enumerate(maps):
        if not isinstance(fm, (FeatureMap, TiledFeatures)):
            raise TypeError(f"{name}[{i}] must be a FeatureMap or TiledFeatures, got {type(fm).__name__}")
    return list(maps)


def _mask_list(feature_maps: Any, masks: Any) -> list[np.ndarray]:
    """Masks as a list: one map with one 2-D mask is a training set of one."""
    if isinstance(feature_maps, (FeatureMap, TiledFeatures)) and isinstance(masks, np.ndarray) and masks.ndim == 2:
        return [masks]
    return list(masks)


def _rows(fm: Maps, flat_idx: np.ndarray | None) -> np.ndarray:
    """Features (n, C) at flat grid indices (all cells when None) of a map or tiled features."""
    if isinstance(fm, FeatureMap):
        return fm.flat() if flat_idx is None else fm.flat()[flat_idx]
    if flat_idx is None:
        flat_idx = np.arange(fm.grid_shape[0] * fm.grid_shape[1])
    r, c = np.divmod(flat_idx, fm.grid_shape[1])
    rows = fm.take(r, c)
    fm.release()  # read once: a list of images must not keep a tile each
    return rows


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
    class_weight : {None, "balanced", "sqrt"}
        ``"balanced"`` weights every class equally in the loss (n / (K · count)); ``"sqrt"`` uses the square root
        of those weights (``labels.class_weights_per_class``), between no weighting and full balancing.
    seed : int
        Random seed of the head's optimiser or ensemble.
    single_class : {"error", "majority"}
        When every training patch has the same label: ``"error"`` refuses to fit; ``"majority"`` (the report's
        rule) gives a head that predicts that class everywhere (``fitted_kind`` is then ``"majority"``).
    unlabelled : int or None
        A mask value that is no class (sparse labels, e.g. 0 in a scribble mask): never trained on.
    max_samples_per_class : int or None
        Train on at most this many grid positions per class (a uniform sample, reproducible from ``seed``):
        pixel-level maps have millions of labelled positions; a few hundred thousand train as well.
    n_components : int or None
        Reduce the features to this many principal components first (PCA fitted on a sample of the training
        table, stored with the head).
    """

    kind = "base"
    #: Whether ``class_weight="balanced"`` is supported (the kNN head has no loss to weight).
    supports_class_weight = True
    #: Whether the head trains on a sampled table of positions (``max_samples_per_class`` applies); the conv
    #: decoder trains on windows of the whole maps instead.
    samples_positions = True

    def __init__(self, label_rule: str = "argmax", threshold: float = 0.5, class_weight: str | None = None,
                 seed: int = 0, single_class: str = "error", unlabelled: int | None = None,
                 max_samples_per_class: int | None = None, n_components: int | None = None) -> None:
        self.label_rule = label_rule
        self.threshold = threshold
        self.class_weight = class_weight
        self.seed = seed
        self.single_class = single_class
        self.unlabelled = unlabelled
        self.max_samples_per_class = max_samples_per_class
        self.n_components = n_components

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
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"class_weight must be None, 'balanced' or 'sqrt', got {self.class_weight!r}")
        if self.single_class not in SINGLE_CLASS:
            raise ValueError(f"single_class must be 'error' or 'majority', got {self.single_class!r}")
        for name in ("max_samples_per_class", "n_components"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.unlabelled is not None and (isinstance(self.unlabelled, bool)
                                            or not isinstance(self.unlabelled, (int, np.integer))):
            raise ValueError(f"unlabelled must be an integer mask value or None, got {self.unlabelled!r}")

    # ----------------------------------------------------------------- training data
    def _patch_table(self, maps: list[Maps], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) with y as class indices; also fixes classes_ and the feature identity on first call.

        Targets come from :func:`labels.mask_targets` at the maps' stride (``unlabelled`` cells dropped); with
        ``max_samples_per_class`` a seeded per-class sample of positions (:func:`labels.sample_positions`) is
        gathered — from :class:`~..dense.TiledFeatures` tile by tile, so the image's full map never exists.
        """
        if len(maps) == 0:
            raise ValueError("empty training set: pass at least one feature map and mask")
        if len(maps) != len(masks):
            raise ValueError(f"{len(maps)} feature maps but {len(masks)} masks")
        ids = {(fm.backbone, fm.weights, fm.feature_dim, float(fm.stride)) for fm in maps}
        if len(ids) != 1:
            raise ValueError(f"training feature maps come from different backbones/weights/dims: {sorted(ids)}")
        known = getattr(self, "classes_", None)
        targets, classes = mask_targets(masks, [fm.image_shape for fm in maps], round(maps[0].stride),
                                        self.label_rule, self.threshold, known, unlabelled=self.unlabelled)
        if known is None:
            self.classes_ = classes
            self._record_identity(maps[0])
        self._check_maps(maps)
        for lab, fm in zip(targets, maps, strict=True):
            if lab.shape != fm.grid_shape:
                raise ValueError(f"label grid {lab.shape} does not match feature grid {fm.grid_shape}")
        dense = self.unlabelled is None and self.max_samples_per_class is None
        if dense and all(isinstance(fm, FeatureMap) for fm in maps):  # every cell, in grid order (the report's)
            X = np.concatenate([fm.flat() for fm in maps]).astype(np.float32, copy=False)
            return X, np.concatenate([lab.ravel() for lab in targets])
        picks = sample_positions(targets, self.max_samples_per_class, self.seed)
        if sum(p.size for p in picks) == 0:
            raise ValueError("no labelled position at the features' stride: every grid cell is unlabelled; "
                             "paint more strokes or use a finer stride")
        X = np.concatenate([_rows(fm, p) for fm, p in zip(maps, picks, strict=True)]).astype(np.float32, copy=False)
        y = np.concatenate([lab.ravel()[p] for lab, p in zip(targets, picks, strict=True)])
        return X, y

    def _weights(self, y: np.ndarray) -> np.ndarray | None:
        return None if self.class_weight is None else class_balance_weights(y, len(self.classes_), self.class_weight)

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
        X, y = self._patch_table(maps, _mask_list(feature_maps, masks))
        self.n_train_patches_ = int(y.size)
        if np.unique(y).size < 2:
            if self.single_class == "majority":
                self.single_class_ = int(np.bincount(y).argmax())
                return self
            raise ValueError(self._single_class_message())
        if self.unlabelled is not None:
            missing = np.setdiff1d(np.arange(len(self.classes_)), np.unique(y))
            if missing.size:
                raise ValueError(f"class(es) {self.classes_[missing].tolist()} have no labelled position at stride "
                                 f"{self.stride_:g} to train on; paint strokes of every class (or a finer stride)")
        X = self._fit_reduction(X)
        self._fit_matrix(X, y, self._weights(y))
        return self

    def _fit_reduction(self, X: np.ndarray) -> np.ndarray:
        """Fit the PCA of ``n_components`` (on at most :data:`PCA_FIT_ROWS` seeded rows) and reduce ``X``."""
        if self.n_components is None:
            return X
        if self.n_components > X.shape[1]:
            raise ValueError(f"n_components={self.n_components} exceeds the {X.shape[1]} feature channels")
        rows = X
        if X.shape[0] > PCA_FIT_ROWS:
            rows = X[np.random.default_rng(int(self.seed)).choice(X.shape[0], PCA_FIT_ROWS, replace=False)]
        mean = rows.mean(axis=0, dtype=np.float64)
        # SVD of the centred sample: the principal axes (rows of vt), as sklearn's PCA computes them; written
        # here so the head stores two plain arrays (no pickle) and projects with one matrix product.
        _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
        self.pca_mean_ = mean.astype(np.float32)
        self.pca_components_ = np.ascontiguousarray(vt[: self.n_components].astype(np.float32))
        return self._reduce(X)

    def _load_reduction(self, folder: Path) -> None:
        """Read the PCA a head with ``n_components`` saved (``pca.npz``, plain arrays: no pickle)."""
        if self.n_components is None:
            return
        with np.load(folder / _PCA_FILE, allow_pickle=False) as z:
            self.pca_mean_, self.pca_components_ = z["mean"], z["components"]

    def _reduce(self, X: np.ndarray) -> np.ndarray:
        if getattr(self, "pca_components_", None) is None:
            return X
        return ((X - self.pca_mean_) @ self.pca_components_.T).astype(np.float32)

    def _single_class_message(self) -> str:
        if self.classes_.size < 2:
            return (f"training masks hold a single class ({self.classes_.tolist()}); a head needs at least two "
                    "classes (or single_class='majority' to predict that class)")
        return (f"every training patch has the same label under label_rule={self.label_rule!r} "
                "(the foreground is smaller than a patch); use label_rule='fraction' with a lower threshold")

    @property
    def context_px(self) -> int:
        """Image pixels of context the head itself reads around each output pixel, beyond its features' own
        (0 for heads that classify each grid cell alone; a decoder's reach for the conv head). Blockwise
        prediction (``volume segment``) adds it to the backbone's halo."""
        return 0

    @property
    def fitted_kind(self) -> str:
        """What was fitted: the head's ``kind``, or ``"majority"`` when training held a single class."""
        self._check_fitted()
        return "majority" if getattr(self, "single_class_", None) is not None else self.kind

    def _class_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, K) class probabilities of a patch matrix: the model's, or one-hot on the single training class."""
        constant = getattr(self, "single_class_", None)
        if constant is None:
            return self._proba_matrix(self._reduce(X))
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
        self.adapted_ = fm.meta.get("adapted") if fm.meta else None  # weights written by `neuros-cv adapt`

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
        """Class probabilities: (H, W, K) per image at ``level="pixel"``, (h, w, K) at ``"patch"`` (grid).

        Columns follow :attr:`classes_`. Pass one map to get one array, a list to get a list. Maps may be
        :class:`FeatureMap` or :class:`~..dense.TiledFeatures` (classified tile by tile; only the (h, w, K)
        probability grid is ever whole). At pixel level, ``interpolation="bilinear"`` blends neighbouring cells;
        ``"nearest"`` gives every pixel its cell's probabilities (the patch predictions painted onto pixels, as
        the report scores them); ``"guided"`` upsamples guided by the image (a guided filter; needs
        ``TiledFeatures``, which carry their image). At stride 1 the grid is the pixels.
        """
        self._check_fitted()
        if level not in LEVELS:
            raise ValueError(f"level must be 'pixel' or 'patch', got {level!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        single = isinstance(feature_maps, (FeatureMap, TiledFeatures))
        maps = as_maps(feature_maps)
        if not maps:
            raise ValueError("no feature maps to predict")
        self._check_maps(maps)
        if level == "pixel" and interpolation == "guided":
            bad = [i for i, fm in enumerate(maps) if not isinstance(fm, TiledFeatures)]
            if bad:
                raise ValueError(f"interpolation='guided' needs the image: pass TiledFeatures (feature map {bad[0]} "
                                 "is a FeatureMap), or use 'bilinear'")
        grids = self._grids(maps)
        if level == "patch":
            return grids[0] if single else grids
        out = [_to_pixels(g, fm, interpolation) for g, fm in zip(grids, maps, strict=True)]
        return out[0] if single else out

    def _grids(self, maps: list[Maps]) -> list[np.ndarray]:
        """(h, w, K) class probabilities per map: FeatureMaps in one matrix call, TiledFeatures tile by tile."""
        plain = [fm for fm in maps if isinstance(fm, FeatureMap)]
        proba = (self._class_proba(np.concatenate([fm.flat() for fm in plain]).astype(np.float32, copy=False))
                 if plain else None)
        out, start = [], 0
        for fm in maps:
            h, w = fm.grid_shape
            if isinstance(fm, FeatureMap):
                out.append(proba[start : start + h * w].reshape(h, w, -1))
                start += h * w
                continue
            grid = np.empty((h, w, len(self.classes_)), dtype=np.float32)
            for rows, cols, tile in fm.tiles():
                th, tw = tile.grid_shape
                grid[rows, cols] = self._class_proba(tile.flat().astype(np.float32, copy=False)).reshape(th, tw, -1)
            fm.release()
            out.append(grid)
        return out

    def predict(self, feature_maps: Any, level: str = "pixel",
                interpolation: str = "bilinear") -> np.ndarray | list[np.ndarray]:
        """Label maps (values from :attr:`classes_`): (H, W) at pixel level, (h, w) at patch level.

        :meth:`decide` on :meth:`predict_proba` (same ``level`` and ``interpolation``): the argmax, shifted by
        the head's tuned decision offsets when it has them.
        """
        maps = as_maps(feature_maps)
        cls = type(self)
        per_row = cls.predict_proba is SegmentationHead.predict_proba and cls._grids is SegmentationHead._grids
        if (per_row and maps and all(
                isinstance(fm, TiledFeatures) and round(float(fm.stride)) == 1 for fm in maps)):
            # Stride 1: a grid cell is a pixel, so each tile's argmax is final; the (H, W, K) probabilities of
            # the whole image never exist (memory bounded by one tile's, plus the label map itself).
            self._check_fitted()
            if level not in LEVELS:
                raise ValueError(f"level must be 'pixel' or 'patch', got {level!r}")
            if interpolation not in INTERPOLATIONS:
                raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
            self._check_maps(maps)
            labels = [self._tile_labels(fm) for fm in maps]
            return labels[0] if isinstance(feature_maps, TiledFeatures) else labels
        proba = self.predict_proba(feature_maps, level, interpolation)
        if isinstance(proba, list):
            return [self.decide(p) for p in proba]
        return self.decide(proba)

    def decide(self, proba: np.ndarray, index: bool = False) -> np.ndarray:
        """Labels from class probabilities (last axis, columns as :attr:`classes_`): the one decision rule.

        The argmax of ``log(proba) + decision_offsets_``; without tuned offsets (the default) that is the
        argmax of ``proba``. Offsets are chosen on held-out images by :func:`~.decision.fit_tuned` and saved
        with the head, so every prediction path (``predict``, ``segment predict``, volumes, napari) decides alike.

        Parameters
        ----------
        proba : (..., K) array
            Probabilities from :meth:`predict_proba` (any leading shape).
        index : bool
            Return class indices 0..K-1 instead of the class values.
        """
        offsets = getattr(self, "decision_offsets_", None)
        if offsets is None:
            idx = np.asarray(proba).argmax(axis=-1)
        else:
            idx = (np.log(np.clip(proba, 1e-7, None)) + np.asarray(offsets, dtype=np.float32)).argmax(axis=-1)
        return idx if index else self.classes_[idx]

    def _tile_labels(self, fm: TiledFeatures) -> np.ndarray:
        """(H, W) labels of a stride-1 TiledFeatures, classified and decided tile by tile."""
        out = np.empty(fm.grid_shape, dtype=self.classes_.dtype)
        for rows, cols, tile in fm.tiles():
            th, tw = tile.grid_shape
            proba = self._class_proba(tile.flat().astype(np.float32, copy=False))
            out[rows, cols] = self.decide(proba).reshape(th, tw)
        fm.release()
        return out

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
            **({"adapted": self.adapted_} if getattr(self, "adapted_", None) else {}),
            **({"decision": self.decision_} if getattr(self, "decision_offsets_", None) is not None else {}),
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
            meta["files"] = self._write_files(tmp)
            (tmp / "head.json").write_text(dumps_json(meta), encoding="utf-8")
        return Path(folder)

    def _write_files(self, folder: Path) -> list[str]:
        """The weights and the PCA (if any) into ``folder``; the names of the files written."""
        files = self._save_weights(folder)
        if getattr(self, "pca_components_", None) is not None:
            np.savez(folder / _PCA_FILE, mean=self.pca_mean_, components=self.pca_components_)
            files.append(_PCA_FILE)
        return files

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({params})"


def _to_pixels(grid: np.ndarray, fm: Maps, interpolation: str) -> np.ndarray:
    """A (h, w, K) grid at the pixels of ``fm``'s image: bilinear, nearest or guided by the image."""
    step = round(fm.stride)
    if step == 1 and grid.shape[:2] == tuple(fm.image_shape):
        return grid
    if interpolation == "bilinear":
        return upsample_to_pixels(grid, fm.stride, fm.image_shape)
    if interpolation == "guided":
        from ..guided import guided_upsample

        return guided_upsample(grid, fm.stride, fm.image)
    return np.repeat(np.repeat(grid, step, axis=0), step, axis=1)[: fm.image_shape[0], : fm.image_shape[1]]
