"""Scribble → train → predict, without Qt: the logic behind the napari widget, testable on plain arrays.

A :class:`Session` holds one backbone, a feature cache and the last trained head. Features of a slice are
computed once per (image, slice, backbone spec) and kept (:class:`FeatureCache`, least recently used out), so
retraining after a new stroke only refits the head and re-predicts — the ilastik / napari-convpaint loop.

Layers are checked before any work (:func:`check_layers`): a 2-D image (grey or RGB) or a 3-D stack (Z, Y, X,
optionally RGB), and a labels layer of the same spatial shape with at least two painted classes (0 =
unlabelled). Heads are the project's heads (``heads.make_head``) with ``unlabelled=0``, saved with
``SegmentationHead.save`` and read with ``heads.load_head`` — the ``head/`` folder of ``neuros-cv segment train``,
so a head trained here runs in ``segment predict`` and ``volume segment``, and the reverse.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.base import Backbone, lookup
from ..backbones.spec import BackboneSpec, takes_weights
from ..dense import DEFAULT_TILE, TiledFeatures
from ..features import FeatureMap
from ..heads import head_class, load_head, make_head
from ..heads.base import SegmentationHead

__all__ = ["LIVE_HEAD", "SCOPES", "TILED_BELOW_STRIDE", "FeatureCache", "LayerError", "LiveSettings", "Session",
           "backbone_spec", "check_layers", "check_scribbles", "crop_map", "image_slice", "labelled_slices",
           "spatial_shape", "visible_box"]

#: Backbones with a stride below this many pixels are computed tile by tile, as ``segment train`` does.
TILED_BELOW_STRIDE = 16
#: What "Predict" covers: the slice on screen, every slice of a stack, or the part of the slice on screen.
SCOPES = ("slice", "stack", "visible")


@dataclass(frozen=True)
class LiveSettings:
    """The head Live mode retrains after every stroke (docs/napari.md, "Live mode").

    Logistic regression on the per-class sample: on a 1024² EM slice with cached ``filterbank[stride=1]``
    features it refits in ~0.15 s and predicts the whole slice in ~0.6 s (benchmarks/bench_live.py), where a
    100-tree random forest needs ~4 s and gradient boosting ~16 s; its Dice on the synthetic EM scribbles is
    within 0.01 of theirs. Scribbles are few pixels, so 5 000 positions per class is every stroke pixel in
    practice and bounds the fit when someone paints large areas.
    """

    kind: str = "logistic"
    max_samples_per_class: int = 5000
    class_weight: str | None = "balanced"


LIVE_HEAD = LiveSettings()


class LayerError(ValueError):
    """A layer choice the plugin cannot work on (one line: what is wrong and what to do)."""


# ----------------------------------------------------------------------------------------------- layer checks
def _is_rgb(shape: tuple[int, ...], rgb: bool | None) -> bool:
    if rgb is not None:
        return bool(rgb)
    return len(shape) in (3, 4) and shape[-1] in (3, 4)


def spatial_shape(shape: tuple[int, ...], rgb: bool | None = None) -> tuple[int, ...]:
    """The image's shape without its colour axis: (Y, X) or (Z, Y, X)."""
    return tuple(shape[:-1]) if _is_rgb(shape, rgb) else tuple(shape)


def check_layers(image_shape: tuple[int, ...], labels_shape: tuple[int, ...] | None, *, rgb: bool | None = None,
                 image_name: str = "image", labels_name: str = "labels") -> tuple[int, ...]:
    """Check an image / scribble-labels pair before any work; returns the image's spatial shape.

    Parameters
    ----------
    image_shape, labels_shape : tuple of int
        Shapes of the image layer's data and of the labels layer's data (None: no labels layer chosen).
    rgb : bool, optional
        The image layer's ``rgb`` flag (None: guessed from a last axis of 3 or 4).
    image_name, labels_name : str
        Layer names for the messages.

    Raises
    ------
    LayerError
        A 1-D or 4-D (non-RGB) image, no labels layer, or labels of another shape; one line each.
    """
    space = spatial_shape(tuple(image_shape), rgb)
    if len(space) not in (2, 3):
        raise LayerError(f"image layer {image_name!r} is {len(space)}-D (shape {tuple(image_shape)}); the plugin "
                         "segments 2-D images and 3-D (Z, Y, X) stacks: pick another layer or slice it first")
    if labels_shape is None:
        raise LayerError("no labels layer chosen for the scribbles; add one (Layers ▸ New labels layer) and paint "
                         "strokes of each class")
    if tuple(labels_shape) != space:
        raise LayerError(f"labels layer {labels_name!r} has shape {tuple(labels_shape)} but image {image_name!r} is "
                         f"{space}; paint scribbles in a labels layer made for this image")
    return space


def labelled_slices(labels: np.ndarray) -> list[int]:
    """Indices of the slices of a (Z, Y, X) labels array holding a painted pixel ([0] for a 2-D one if painted)."""
    lab = np.asarray(labels)
    if lab.ndim == 2:
        return [0] if lab.any() else []
    return np.flatnonzero(lab.reshape(lab.shape[0], -1).any(axis=1)).tolist()


def check_scribbles(labels: np.ndarray, labels_name: str = "labels") -> np.ndarray:
    """The painted class values (at least two, 0 = unlabelled); a one-line :class:`LayerError` otherwise."""
    lab = np.asarray(labels)
    if not np.issubdtype(lab.dtype, np.integer):
        raise LayerError(f"labels layer {labels_name!r} holds {lab.dtype} values; scribbles are integer labels")
    values = np.unique(lab)
    values = values[values != 0]
    if values.size == 0:
        raise LayerError(f"labels layer {labels_name!r} has no painted pixel; paint a few strokes of each class "
                         "(label 1, 2, …) and train again")
    if values.size < 2:
        raise LayerError(f"labels layer {labels_name!r} holds strokes of one class only ({int(values[0])}); paint "
                         "strokes of at least two classes (e.g. background and object)")
    return values


def image_slice(data: Any, index: int | None, rgb: bool | None = None) -> np.ndarray:
    """Slice ``index`` of a stack (or the 2-D image itself when ``index`` is None), as a NumPy array."""
    space = spatial_shape(tuple(np.shape(data)), rgb)
    if len(space) == 2:
        return np.asarray(data)
    return np.asarray(data[int(index or 0)])


def visible_box(shape: tuple[int, int], center: tuple[float, float], zoom: float, canvas: tuple[int, int],
                scale: tuple[float, float] = (1.0, 1.0), translate: tuple[float, float] = (0.0, 0.0),
                margin: int = 16) -> tuple[slice, slice]:
    """The (rows, cols) of a 2-D image on screen, from the camera (world ``center`` of the view, ``zoom`` screen
    pixels per world unit, ``canvas`` size (H, W) in screen pixels) and the layer's ``scale``/``translate``;
    ``margin`` pixels more on each side, clipped to the image."""
    half = np.asarray(canvas, float) / (2.0 * max(float(zoom), 1e-9))
    c = np.asarray(center, float)
    lo = (c - half - np.asarray(translate)) / np.asarray(scale)
    hi = (c + half - np.asarray(translate)) / np.asarray(scale)
    y0, x0 = (np.floor(lo).astype(int) - margin).clip(0, None)
    y1, x1 = np.minimum(np.ceil(hi).astype(int) + margin + 1, shape)
    if y1 <= y0 or x1 <= x0:
        return slice(0, shape[0]), slice(0, shape[1])
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


def crop_map(fm: FeatureMap, rows: slice, cols: slice) -> tuple[FeatureMap, tuple[slice, slice]]:
    """The part of a feature map that covers pixel ``rows`` × ``cols``, widened to whole grid cells; returns it
    and the pixel window it covers (a view of the features, nothing copied)."""
    step = round(float(fm.stride))
    if abs(step - float(fm.stride)) > 1e-9:  # a rescaled ViT grid: crop nothing
        return fm, (slice(0, fm.image_shape[0]), slice(0, fm.image_shape[1]))
    r0, c0 = rows.start // step, cols.start // step
    r1, c1 = -(-rows.stop // step), -(-cols.stop // step)
    y0, x0 = r0 * step, c0 * step
    y1, x1 = min(r1 * step, fm.image_shape[0]), min(c1 * step, fm.image_shape[1])
    sub = FeatureMap(fm.features[r0:r1, c0:c1], fm.stride, (y1 - y0, x1 - x0), fm.backbone, fm.weights,
                     fm.meta, fm.spec)
    return sub, (slice(y0, y1), slice(x0, x1))


# ----------------------------------------------------------------------------------------------- feature cache
class FeatureCache:
    """Feature maps by key, the ``max_items`` most recently used kept (thread-safe: the worker fills it).

    Keys are ``(image token, slice, backbone spec)``; the widget drops an image's entries when its data change.
    """

    def __init__(self, max_items: int = 8) -> None:
        self.max_items = int(max_items)
        self._items: OrderedDict[Hashable, FeatureMap] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, compute: Callable[[], FeatureMap]) -> FeatureMap:
        """The cached map of ``key``, else ``compute()`` (outside the lock), stored and returned."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        fm = compute()
        with self._lock:
            self.misses += 1
            self._items[key] = fm
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return fm

    def drop(self, token: Hashable) -> None:
        """Forget every map of one image (``token`` = the first element of its keys)."""
        with self._lock:
            for key in [k for k in self._items if isinstance(k, tuple) and k and k[0] == token]:
                del self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def backbone_spec(backbone: str, weights: str | None = None) -> BackboneSpec:
    """The spec a backbone text (a name or spec, fused ``A+B`` too) and a weights choice ask for, checked now
    (unknown names: one line with close matches) — the rule of ``segment train --backbone/--weights``."""
    spec = BackboneSpec.parse(backbone.strip())
    parts = spec.parts or (spec,)
    for part in parts:
        lookup(part.name)
    if weights:
        if not any(takes_weights(part.name) for part in parts):
            raise ValueError(f"weights apply to DINOv3 backbones; {spec.name!r} has none (leave weights empty)")
        if not spec.parts and spec.weights is not None and spec.weights != weights:
            raise ValueError(f"backbone {backbone} names weights {spec.weights!r} but weights is {weights!r}; "
                             "give the weights once")
        spec = spec.with_weights(weights)
    return spec


# ----------------------------------------------------------------------------------------------- the session
class Session:
    """One backbone, its feature cache and the current head: train on scribbles, predict slices.

    Parameters
    ----------
    backbone : str
        A backbone spec (``filterbank[stride=1]``, ``vit-small@random(seed=3)+filterbank[stride=4]``…).
    weights : str, optional
        DINOv3 weights (``placeholder``, ``random``, ``pretrained``, ``auto``), as ``segment train --weights``.
    tile : int
        Backbones of stride < 16 are computed tile by tile (``dense.TiledFeatures``) and the tiles assembled.
    cache_items : int
        How many slices' features to keep.
    """

    def __init__(self, backbone: str = "filterbank[stride=1]", weights: str | None = None, tile: int = DEFAULT_TILE,
                 cache_items: int = 8) -> None:
        self.cache = FeatureCache(cache_items)
        self.tile = int(tile)
        self.head: SegmentationHead | None = None
        self._bb: Backbone | None = None
        self.set_backbone(backbone, weights)

    # -------------------------------------------------------------- backbone
    def set_backbone(self, backbone: str, weights: str | None = None) -> BackboneSpec:
        """Choose the backbone (checked now, built on first use); a different spec drops the trained head."""
        spec = backbone_spec(backbone, weights or None)
        if getattr(self, "spec", None) != spec:
            self.spec = spec
            self._bb = None
        return spec

    @property
    def backbone(self) -> Backbone:
        """The backbone, built once from the spec."""
        if self._bb is None:
            self._bb = self.spec.build()
        return self._bb

    def features(self, token: Hashable, index: int, image: np.ndarray) -> FeatureMap:
        """The cached feature map of slice ``index`` of image ``token`` (computed on first request)."""
        def compute() -> FeatureMap:
            bb = self.backbone
            if float(bb.stride) < TILED_BELOW_STRIDE:
                return TiledFeatures(bb, image, tile=self.tile).materialise()
            return bb.extract(image)

        return self.cache.get((token, int(index), str(self.spec)), compute)

    # -------------------------------------------------------------- train / predict
    def train(self, token: Hashable, data: Any, labels: np.ndarray, kind: str = LIVE_HEAD.kind,
              max_samples_per_class: int | None = LIVE_HEAD.max_samples_per_class, seed: int = 0,
              rgb: bool | None = None, progress: Callable[[str], None] | None = None) -> SegmentationHead:
        """Fit a head of ``kind`` on every slice that holds scribbles (0 = unlabelled); returns it (and keeps it).

        ``labels`` has the image's spatial shape; features of each painted slice come from the cache.
        """
        lab = np.asarray(labels)
        check_layers(tuple(np.shape(data)), lab.shape, rgb=rgb)
        check_scribbles(lab)
        slices = labelled_slices(lab)
        maps, masks = [], []
        for k in slices:
            if progress is not None:
                progress(f"features of slice {k}")
            maps.append(self.features(token, k, image_slice(data, k, rgb)))
            masks.append(lab if lab.ndim == 2 else lab[k])
        weighting = "balanced" if head_class(kind).supports_class_weight else None
        head = make_head(kind, seed=seed, class_weight=weighting, unlabelled=0,
                         max_samples_per_class=max_samples_per_class)
        if progress is not None:
            progress(f"fitting a {kind} head on {len(slices)} slice(s)")
        head.fit(maps, masks)
        self.head = head
        return head

    def _need_head(self) -> SegmentationHead:
        if self.head is None:
            raise LayerError("no head yet: paint scribbles and press Train, or load a saved head")
        return self.head

    def predict_slice(self, token: Hashable, index: int, image: np.ndarray,
                      box: tuple[slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
        """Class values and (H, W, K) probabilities of one slice, or of its part ``box`` (rows, cols);
        returns them with the pixel window they cover."""
        head = self._need_head()
        fm = self.features(token, index, image)
        window = (slice(0, fm.image_shape[0]), slice(0, fm.image_shape[1]))
        if box is not None:
            fm, window = crop_map(fm, *box)
        proba = head.predict_proba(fm)
        return head.decide(proba), proba, window

    # -------------------------------------------------------------- heads on disk
    def save_head(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the head as ``segment train`` does (``head.json`` + weights)."""
        return self._need_head().save(folder, overwrite=overwrite)

    def load_head(self, folder: str | Path) -> SegmentationHead:
        """Read a head saved by ``segment train`` (or by :meth:`save_head`) and switch to its backbone."""
        head = load_head(folder)
        spec = getattr(head, "backbone_spec_", None)
        if spec is None:
            raise LayerError(f"the head in {folder} names no backbone; train it with `neuros-cv segment train`")
        if spec != self.spec:
            self.spec, self._bb = spec, None
        self.head = head
        return head
