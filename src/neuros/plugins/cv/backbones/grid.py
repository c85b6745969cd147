"""What every patch-grid backbone of the DINOv3 family shares: preprocessing, padding, tiling, batching and
feature maps denser than the patch.

:class:`GridBackbone` turns images into padded [0, 1] RGB model inputs (:func:`~..preprocess.prepare`), cuts
large ones into overlapping tiles, batches equal shapes and wraps the grids its subclass's :meth:`_forward`
returns into :class:`~..features.FeatureMap` objects. :class:`~.dinov3.DINOv3Backbone` (a network) and
:class:`~.placeholder.PlaceholderBackbone` (a fixed random projection of patch pixels) fill in ``_forward``.

Denser than the patch (the ``stride``, ``shifts`` and ``upsample`` options; see docs/backbones.md):

1. ``scale`` resizes the input first (the model's grid step is then ``patch / scale`` input pixels);
2. ``shifts=k`` is *shift-and-stitch* (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic
   Segmentation", CVPR 2015, §3.2): the model runs k×k times on the input shifted by multiples of ``patch / k``
   and the k×k grids are interleaved into one grid k times finer. The shifts are centred — pass (a, b) reads
   the input from ``(a·g − o, b·g − o)`` with ``g = patch / k`` and ``o = (patch − g) / 2`` (reflect-padded) — so
   every fine cell's feature is that of the patch centred on the cell (the grid convention of
   :class:`~..features.FeatureMap`); k ∈ {1, 2, 4, 8} for a 16-px patch;
3. what remains to the target ``stride`` is upsampling of the grid: ``bilinear`` or ``guided`` (He et al.'s
   guided filter, :mod:`..guided`, with the grey image mean-pooled to the target grid as guide).
"""

from __future__ import annotations

import copy
import math
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from .._validation import as_image_list, check_positive_int
from ..features import FeatureMap, upsample_to_pixels
from ..guided import guided_upsample
from ..preprocess import pad_to_multiple, prepare, scaled_shape, to_float01, to_rgb
from ..tiling import batched, stitch, tiles
from .base import GLOBAL_HALO_CELLS, Backbone
from .variants import VARIANTS, Variant

__all__ = ["DENSE_DEFAULTS", "UPSAMPLE_METHODS", "GridBackbone"]

UPSAMPLE_METHODS = ("bilinear", "guided")
#: The identity options of a feature grid denser than the patch, and their defaults (see the module docstring).
DENSE_DEFAULTS: dict[str, Any] = {"stride": None, "shifts": 1, "upsample": "bilinear"}
#: Guided upsampling of feature grids: regularisation in grey levels² (the guide is in [0, 1]).
GUIDED_EPS = 1e-3
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class GridBackbone(Backbone):
    """A backbone whose features sit on a regular grid of ``grid_step`` model-input pixels.

    Subclasses call :meth:`_init_grid` from their ``__init__`` and implement :meth:`_forward` (a batch of
    padded inputs → feature grids) and :meth:`_meta`.
    """

    model_id: str
    variant: Variant

    def _init_grid(self, model_id: str, variant: Variant, *, grid_step: int, scale: float, scaling: str,
                   channels: tuple[int, int, int] | None, tile: int | None, overlap: int, batch_size: int,
                   stride: float | None = None, shifts: int = 1, upsample: str = "bilinear") -> None:
        """Set and check what the grid needs; ``grid_step`` is the model's feature stride in model-input pixels,
        ``stride``/``shifts``/``upsample`` the dense options (module docstring)."""
        if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.model_id, self.variant, self.name = model_id, variant, model_id
        self.patch_size = variant.patch_size
        self.note: str | None = None
        self.scale = float(scale)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.scaling, self.channels = scaling, channels
        self._stride = int(grid_step)
        self._pad = max(self.patch_size, self._stride)
        self.tile, self.overlap = tile, int(overlap)
        if tile is not None:
            check_positive_int(tile, "tile")
            for nm, v in (("tile", tile), ("overlap", overlap)):
                if v % self._pad:
                    raise ValueError(f"{nm}={v} must be a multiple of {self._pad} (the model's grid stride)")
            if tile <= 2 * overlap:
                raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
        # Called with the number of tiles after each batch of tiles of a tiled image (progress bars).
        self.progress: Callable[[int], None] | None = None
        self._set_dense(stride, shifts, upsample)

    # ------------------------------------------------------------------ dense grids
    def _set_dense(self, stride: float | None, shifts: int, upsample: str) -> None:
        """Check and set the target ``stride`` (input pixels), shift-and-stitch factor and upsampling method."""
        if isinstance(shifts, bool) or not isinstance(shifts, (int, np.integer)) or shifts < 1:
            raise ValueError(f"shifts must be a whole number ≥ 1 (k×k shifted passes), got {shifts!r}")
        k, step = int(shifts), self._stride
        if step % k or (step - step // k) % 2:
            ok = [j for j in (1, 2, 4, 8, 16) if step % j == 0 and (step - step // j) % 2 == 0]
            raise ValueError(f"shifts={k} does not split {self.name}'s {step}-px grid into centred whole-pixel "
                             f"offsets; use shifts in {ok}")
        if upsample not in UPSAMPLE_METHODS:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_METHODS)}, got {upsample!r}")
        coarse = step / k / self.scale  # input pixels per cell after shift-and-stitch
        if stride is None:
            target = coarse
        else:
            if isinstance(stride, bool) or not isinstance(stride, (int, float, np.number)) or not stride > 0:
                raise ValueError(f"stride must be a positive number of pixels, got {stride!r}")
            target = float(stride)
        factor = coarse / target
        if factor < 1 - 1e-9 or abs(factor - round(factor)) > 1e-6:
            divisors = [c for c in (16, 8, 4, 2, 1) if c <= coarse and abs(coarse / c - round(coarse / c)) < 1e-6]
            raise ValueError(f"stride={target:g} is not reachable from {self.name}'s {coarse:g}-px grid (scale="
                             f"{self.scale:g}, shifts={k}): choose a stride that divides it, e.g. "
                             f"{', '.join(f'{c:g}' for c in divisors) or 'a larger scale'}")
        self.shifts, self.upsample = k, upsample
        self._target, self._factor = target, round(factor)

    @property
    def dense(self) -> bool:
        """Whether features are finer than the model's own grid (shift-and-stitch or upsampling)."""
        return self.shifts > 1 or self._factor > 1

    def restrided(self, stride: float) -> GridBackbone:
        """This backbone (the same network, shared) with its grid brought to ``stride`` input pixels by
        upsampling, keeping its shifts and method (the fused backbone brings its parts to a common stride)."""
        other = copy.copy(self)
        other._set_dense(stride, self.shifts, self.upsample)
        return other

    @property
    def stride(self) -> float:
        """Input pixels per grid cell: the model's grid step divided by ``scale``, or the target ``stride``."""
        return self._target

    @property
    def native_stride(self) -> float:
        """Input pixels per cell of the model's own grid (its step divided by ``scale``)."""
        return self._stride / self.scale

    def _guided_radius(self) -> int:
        """Guided-filter radius in target cells: one cell of the grid being upsampled."""
        return max(1, self._factor)

    def _dense_margin(self) -> float:
        """Input pixels the dense steps add to the receptive field: bilinear upsampling blends the coarse cells
        within one coarse step (both sides), the guided filter reaches two radii of target cells (both sides)."""
        if self._factor == 1:
            return 0.0
        coarse = self._target * self._factor
        guided = 4 * self._guided_radius() * self._target if self.upsample == "guided" else 0.0
        return 2 * coarse + guided

    @property
    def halo(self) -> int:
        """Context in input pixels a block needs on each side, a whole number of the model's own cells.

        As :attr:`Backbone.halo`, but counted in the model's grid steps (not the target's) so that a block's
        shifted passes and coarse grid line up with the whole image's.
        """
        step, rf = self.native_stride, self.receptive_field
        if not math.isfinite(rf):
            return math.ceil(GLOBAL_HALO_CELLS * step - 1e-9)
        cells = math.ceil(max(0.0, (rf - self._target) / 2) / step - 1e-9)
        return math.ceil(cells * step - 1e-9)

    def _spec_options(self) -> dict[str, Any]:
        """Identity options, the dense ones canonical: ``stride`` only when upsampling makes it (shifts and
        scale alone imply it), ``upsample`` only when something is upsampled."""
        opts = super()._spec_options()
        if "stride" in opts:
            opts["stride"] = self._target if self._factor > 1 else None
            if self._factor == 1:
                opts["upsample"] = DENSE_DEFAULTS["upsample"]
        return opts

    def _resize_margin(self) -> float:
        """Input pixels per side that resizing by ``scale`` mixes in (bilinear: one pixel, or ``1/scale`` when
        shrinking with antialiasing); 0 at scale 1."""
        return 0.0 if self.scale == 1 else float(np.ceil(max(1.0, 1.0 / self.scale)))

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Feature grids (B, h, w, C) float32 of a batch of padded [0, 1] RGB images (B, H', W', 3)."""

    @abstractmethod
    def _meta(self) -> dict[str, Any]:
        """The FeatureMap ``meta`` shared by every map of one call."""

    def _min_size(self) -> int:
        """The smallest image side accepted."""
        return 1

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        return prepare(image, self._pad, self.scaling, self.channels, self.scale)

    def _preprocessing(self) -> dict[str, Any]:
        return {"scaling": self.scaling, "channels": self.channels, "scale": self.scale, "pad_to": self._pad,
                "padding": "reflect, bottom/right"}

    def _tiled(self, padded: np.ndarray) -> np.ndarray:
        """Features of one padded image, tile by tile; activations never exceed a batch of tiles."""
        hp, wp = padded.shape[:2]
        out = np.empty((hp // self._stride, wp // self._stride, self.feature_dim), dtype=np.float32)
        all_tiles = tiles((hp, wp), int(self.tile), self.overlap, self._pad)
        for group in batched(all_tiles, self.batch_size):
            grids = self._forward(np.stack([padded[t.y0 : t.y1, t.x0 : t.x1] for t in group]))
            for t, g in zip(group, grids, strict=True):
                stitch(out, t, g, self._stride)
            if self.progress is not None:
                self.progress(len(group))
        return out

    def n_tiles(self, shape: tuple[int, ...]) -> int:
        """How many tiles an image of ``shape`` (H, W[, C]) is cut into: 1 when it is not tiled.

        A tiled image reports each batch of its tiles to :attr:`progress` while it is extracted.
        """
        h, w = scaled_shape(int(shape[0]), int(shape[1]), self.scale)
        if self.dense:  # k×k passes, each on an input of about the image's size
            g, k = self._stride // self.shifts, self.shifts
            h, w = (math.ceil(math.ceil(n / g) / k) * self._stride for n in (h, w))
        padded = (-(-h // self._pad) * self._pad, -(-w // self._pad) * self._pad)
        if not self._needs_tiling(padded):
            return 1
        passes = self.shifts**2 if self.dense else 1  # each pass is tiled alike
        return passes * len(tiles(padded, int(self.tile), self.overlap, self._pad))

    def _needs_tiling(self, shape: tuple[int, ...]) -> bool:
        return self.tile is not None and (shape[0] > self.tile or shape[1] > self.tile)

    def _grids(self, prepped: list[np.ndarray]) -> list[np.ndarray]:
        """Model grids of padded inputs: big ones tile by tile, the others batched by shape."""
        grids: list[np.ndarray | None] = [None] * len(prepped)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prepped):
            if self._needs_tiling(p.shape):
                grids[i] = self._tiled(p)
            else:
                groups.setdefault(p.shape, []).append(i)
        for idx in groups.values():
            for chunk in range(0, len(idx), self.batch_size):
                part = idx[chunk : chunk + self.batch_size]
                feats = self._forward(np.stack([prepped[i] for i in part]))
                for i, f in zip(part, feats, strict=True):
                    grids[i] = f
        return [g for g in grids if g is not None]

    def _shifted_inputs(self, image: np.ndarray) -> tuple[list[np.ndarray], tuple[int, int]]:
        """The k×k shifted, padded model inputs of one image (shift-and-stitch) and the (rows, cols) of the
        stitched grid it needs (``ceil(size / g)`` cells of ``g = step / k`` model pixels)."""
        rgb = prepare(image, 1, self.scaling, self.channels, self.scale)  # [0, 1] RGB at model scale, unpadded
        k, step = self.shifts, self._stride
        g, o = step // k, (step - step // k) // 2
        need = [-(-n // g) for n in rgb.shape[:2]]  # stitched cells per axis
        per_pass = [-(-n // k) for n in need]  # cells per pass
        size = [-(-(c * step) // self._pad) * self._pad for c in per_pass]  # input per pass, padded to the grid
        pads = [(o, (k - 1) * g + sz - o - n) for sz, n in zip(size, rgb.shape[:2], strict=True)]
        mode = "reflect" if all(max(pd) < n for pd, n in zip(pads, rgb.shape[:2], strict=True)) else "symmetric"
        padded = np.pad(rgb, [*pads, (0, 0)], mode=mode)
        inputs = [np.ascontiguousarray(padded[a * g : a * g + size[0], b * g : b * g + size[1]])
                  for a in range(k) for b in range(k)]
        return inputs, (need[0], need[1])

    def _stitch(self, grids: list[np.ndarray], need: tuple[int, int]) -> np.ndarray:
        """Interleave the k×k pass grids: pass (a, b)'s cell (i, j) is cell (i·k + a, j·k + b)."""
        k = self.shifts
        n, m = -(-need[0] // k), -(-need[1] // k)
        out = np.empty((n * k, m * k, grids[0].shape[-1]), dtype=np.float32)
        for idx, grid in enumerate(grids):
            a, b = divmod(idx, k)
            out[a::k, b::k] = grid[:n, :m]
        return out[: need[0], : need[1]]

    def _guide(self, image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The grey [0, 1] image (the backbone's own scaling and channels) mean-pooled to the target grid."""
        grey = to_rgb(to_float01(np.asarray(image), self.scaling), self.channels) @ _LUMA
        t = round(self._target)
        if t > 1:
            padded = pad_to_multiple(grey, t, mode="reflect")
            grey = padded.reshape(padded.shape[0] // t, t, padded.shape[1] // t, t).mean(axis=(1, 3))
        return np.ascontiguousarray(grey[: shape[0], : shape[1]], dtype=np.float32)

    def _upsampled(self, coarse: np.ndarray, image: np.ndarray) -> np.ndarray:
        """The stitched grid brought to the target stride: (ceil(H / stride), ceil(W / stride), C)."""
        t = self._target
        shape = (math.ceil(image.shape[0] / t - 1e-9), math.ceil(image.shape[1] / t - 1e-9))
        if self._factor == 1:
            return coarse[: shape[0], : shape[1]]
        if self.upsample == "guided":
            return guided_upsample(coarse, self._factor, self._guide(image, shape), eps=GUIDED_EPS,
                                   probabilities=False)
        return upsample_to_pixels(coarse, self._factor, shape)

    def _dense_grids(self, arrs: list[np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
        """Target-stride grids of images (shift-and-stitch passes of all images batched, then upsampling) and
        whether each image's passes were tiled."""
        plans = [self._shifted_inputs(a) for a in arrs]
        grids = self._grids([x for inputs, _ in plans for x in inputs])
        n_pass = self.shifts**2
        out = []
        for i, (a, (_, need)) in enumerate(zip(arrs, plans, strict=True)):
            coarse = self._stitch(grids[i * n_pass : (i + 1) * n_pass], need)
            out.append(np.ascontiguousarray(self._upsampled(coarse, a), dtype=np.float32))
        return out, [self._needs_tiling(inputs[0].shape) for inputs, _ in plans]

    def extract_batch(self, images: Any) -> list[FeatureMap]:
        """Dense features of several images (a list, or a (B, H, W[, C]) array), batched by padded size."""
        arrs = as_image_list(images, min_size=self._min_size())
        if self.dense:
            grids, tiled = self._dense_grids(arrs)
        else:
            prepped = [self._prepare(a) for a in arrs]
            grids = self._grids(prepped)
            tiled = [self._needs_tiling(p.shape) for p in prepped]
        meta, spec = self._meta(), self.spec
        if self.dense:
            meta = dict(meta, dense={"stride": self._target, "shifts": self.shifts, "passes": self.shifts**2,
                                     "coarse_stride": self._target * self._factor,
                                     "upsample": self.upsample if self._factor > 1 else "none"})
        maps = []
        for a, g, t in zip(arrs, grids, tiled, strict=True):
            m = dict(meta, tiled=t, **({"tile": self.tile, "overlap": self.overlap} if t else {}))
            maps.append(FeatureMap(np.ascontiguousarray(g), self.stride, tuple(a.shape[:2]), self.name,
                                   self.weights, m, spec))
        self._remember(maps[-1])
        return maps

    def extract(self, image: np.ndarray) -> FeatureMap:
        """Dense features of one image (padded, not cropped, to the grid; see ``extract_batch``)."""
        if isinstance(image, np.ndarray) and image.ndim == 4:
            raise ValueError(f"image must be 2-D (H, W) or 3-D (H, W, C), got 4-D shape {image.shape}; "
                             "use extract_batch for a batch")
        if isinstance(image, (list, tuple)):
            raise TypeError("extract takes one image array; use extract_batch for a list")
        if isinstance(image, np.ndarray) and image.ndim not in (2, 3):
            raise ValueError(f"image must be 2-D (H, W) or 3-D (H, W, C), got {image.ndim}-D shape {image.shape}")
        return self.extract_batch([image])[0]

    def _pretrain(self) -> str:
        """What the weights in use were pretrained on: a release's dataset only for that release's weights."""
        if not str(self.weights).startswith("pretrained"):
            return f"none ({self.weights} weights)"
        if self.variant.model_id not in VARIANTS:  # a local checkpoint that is not a release (e.g. adapted)
            return "unknown (a local checkpoint, not a DINOv3 release)"
        return self.variant.pretrain

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(hub_id=self.variant.hub_id, arch=self.variant.arch, pretrain=self._pretrain())
        if self.note:
            d["note"] = self.note
        return d
