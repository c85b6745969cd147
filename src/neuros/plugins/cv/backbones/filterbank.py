"""A classical baseline backbone: the multi-scale filter bank bio-image users know from ilastik.

Per pixel, at each scale σ: Gaussian smoothing, Laplacian of Gaussian, gradient magnitude, difference of
Gaussians (σ vs 1.6σ), the two structure-tensor eigenvalues and the two Hessian eigenvalues — plus the raw
intensity. The per-pixel stack (:func:`pixel_features`) is pooled to a ``stride``-pixel grid (mean and standard
deviation within each cell; 16 px by default, like DINOv3 ViT/16) so it plugs into every head and experiment like
a DINOv3 backbone; ``filterbank[stride=1]`` is the per-pixel stack itself, unpooled. No learned
weights: every output says ``weights="none (classical filters)"``.

Gaussians come from scipy.ndimage, truncated at :data:`TRUNCATE` σ; derivatives are finite differences of
each scale's smoothed image (see :func:`pixel_features`); colour images are converted to luminance first so
the feature dimension does not depend on the input. Every response depends only on the pixels within
:func:`pixel_radius` of it, so the backbone's :attr:`~FilterBankBackbone.receptive_field` and
:attr:`~FilterBankBackbone.halo` are exact: blocks carrying that halo reproduce whole-image features bit for
bit.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from .._validation import as_image
from ..features import FeatureMap
from ..preprocess import pad_to_multiple, to_float01
from .base import Backbone, register_backbone

__all__ = ["FILTERS", "TRUNCATE", "FilterBankBackbone", "pixel_features", "pixel_radius"]

FILTERS = ("gaussian", "log", "gradient", "dog", "st_eig1", "st_eig2", "hess_eig1", "hess_eig2")
DEFAULT_SIGMAS = (1.0, 2.0, 4.0, 8.0)
WEIGHTS = "none (classical filters)"
#: Gaussian kernels are cut at this many σ (scipy.ndimage's ``truncate``).
TRUNCATE = 3.0
#: The difference of Gaussians subtracts a Gaussian this many times wider.
DOG_RATIO = 1.6


def _kernel_radius(sigma: float) -> int:
    """Radius in pixels of scipy.ndimage's Gaussian kernel of ``sigma`` truncated at :data:`TRUNCATE` σ."""
    return int(TRUNCATE * float(sigma) + 0.5)


def pixel_radius(sigmas: tuple[float, ...] = DEFAULT_SIGMAS) -> int:
    """How far (pixels) :func:`pixel_features` reaches: each response depends only on pixels this close.

    Per scale, with ``r`` the Gaussian's radius: the structure tensor smooths products of one-pixel
    differences of the smoothed image (``2r + 1``), the Hessian takes differences of differences (``r + 2``),
    and the difference of Gaussians reaches the wider Gaussian's radius.

    Examples
    --------
    >>> pixel_radius((1.0, 2.0, 4.0, 8.0))  # 2·int(3·8 + 0.5) + 1
    49
    """
    return max(max(2 * _kernel_radius(s) + 1, _kernel_radius(s) + 2, _kernel_radius(DOG_RATIO * s))
               for s in sigmas)


def _grey01(image: np.ndarray) -> np.ndarray:
    arr = to_float01(as_image(image))
    if arr.ndim == 3:
        rgb = arr[:, :, :3] if arr.shape[2] >= 3 else np.repeat(arr[:, :, :1], 3, axis=2)
        arr = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return arr.astype(np.float32)


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (larger, smaller) of the symmetric 2×2 fields [[a, b], [b, c]], closed form."""
    mean, root = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
    return mean + root, mean - root


def _scale_responses(g: np.ndarray, s: float, out: np.ndarray) -> None:
    """Write the :data:`FILTERS` at scale ``s`` of the grey image ``g`` into ``out`` (H, W, len(FILTERS))."""
    smooth = ndimage.gaussian_filter(g, s, truncate=TRUNCATE)
    gy, gx = np.gradient(smooth)
    gyy, gyx = np.gradient(gy)
    gxx = np.gradient(gx, axis=1)
    h1, h2 = _eig2(gyy, gyx, gxx)
    jyy, jxy, jxx = (ndimage.gaussian_filter(p, s, truncate=TRUNCATE) for p in (gy * gy, gx * gy, gx * gx))
    s1, s2 = _eig2(jyy, jxy, jxx)
    out[..., 0] = smooth
    out[..., 1] = (gyy + gxx) * s**2  # Laplacian of Gaussian
    out[..., 2] = np.hypot(gy, gx) * s
    out[..., 3] = smooth - ndimage.gaussian_filter(g, DOG_RATIO * s, truncate=TRUNCATE)
    for k, e in enumerate((s1, s2, h1, h2), start=4):
        out[..., k] = e * s**2


def _workers(n_tasks: int) -> int:
    """Threads for :func:`pixel_features`: one per scale, at most the CPUs this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(n_tasks, cpus))


def pixel_features(image: np.ndarray, sigmas: tuple[float, ...] = DEFAULT_SIGMAS) -> np.ndarray:
    """Per-pixel filter responses (H, W, 1 + 8·len(sigmas)) of an image scaled to [0, 1].

    Channel order: raw intensity, then for each σ the :data:`FILTERS` in order. All derivatives at one scale
    are finite differences of that scale's Gaussian-smoothed image (one Gaussian per scale, reused; about 3×
    faster than separate Gaussian-derivative filters from ``skimage.feature.hessian_matrix``), scale-normalised
    by σ (gradient) and σ² (LoG, Hessian). The structure tensor smooths gradient products at the same σ.

    The scales are computed in parallel threads (scipy.ndimage's filters and NumPy's arithmetic release the
    GIL), each writing its own channels of one preallocated array, so the result does not depend on the
    number of threads.
    """
    g = _grey01(image)
    out = np.empty((*g.shape, 1 + len(FILTERS) * len(sigmas)), np.float32)
    out[..., 0] = g
    jobs = [(float(s), out[..., 1 + len(FILTERS) * i: 1 + len(FILTERS) * (i + 1)]) for i, s in enumerate(sigmas)]
    n = _workers(len(jobs))
    if n == 1:
        for s, part in jobs:
            _scale_responses(g, s, part)
    else:
        # Largest scales first: their Gaussians are the longest, so the threads finish together.
        jobs.sort(key=lambda job: -job[0])
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(lambda job: _scale_responses(g, *job), jobs))
    return out


class FilterBankBackbone(Backbone):
    """Multi-scale filters on a ``stride``-pixel grid: the per-pixel stack itself at stride 1, pooled (mean and
    std per cell) above it.

    Parameters
    ----------
    sigmas : tuple of float
        Scales in pixels.
    stride : int
        Grid step in pixels: 16 (the default, like DINOv3 ViT/16, so heads and masks line up), 8, 4, 2 or 1
        (any positive whole number works). At stride 1 every cell is one pixel and the features are
        :func:`pixel_features` unpooled (``1 + 8·len(sigmas)`` channels).
    pool : {"mean+std", "mean"}
        Pooling of the per-pixel responses over each cell. It does not apply at stride 1 (a one-pixel cell has
        nothing to pool: its standard deviation would be 0), where it is ignored and left out of the spec.
    patch_size : int, optional
        The old name of ``stride`` (specs and heads written before strides existed say
        ``filterbank[patch_size=8]``; :class:`~.spec.BackboneSpec` reads them as ``stride=8``).
    """

    name = "filterbank"
    #: Every option changes the features; there are no weights to choose.
    spec_defaults: ClassVar[dict[str, Any]] = {"sigmas": DEFAULT_SIGMAS, "stride": 16, "pool": "mean+std"}
    #: Old option names still accepted (in ``__init__`` and in spec strings) for the current ones.
    spec_aliases: ClassVar[dict[str, str]] = {"patch_size": "stride"}
    takes_weights: ClassVar[bool] = False

    def __init__(self, sigmas: tuple[float, ...] = DEFAULT_SIGMAS, stride: int | None = None,
                 pool: str = "mean+std", *, patch_size: int | None = None) -> None:
        super().__init__()
        if pool not in ("mean+std", "mean"):
            raise ValueError(f"pool must be 'mean+std' or 'mean', got {pool!r}")
        if not sigmas or any(float(s) <= 0 for s in sigmas):
            raise ValueError(f"sigmas must be positive numbers, got {sigmas!r}")
        if stride is not None and patch_size is not None and int(stride) != int(patch_size):
            raise ValueError(f"stride={stride} and patch_size={patch_size} disagree; patch_size is the old name of "
                             "stride: give one")
        step = stride if stride is not None else (patch_size if patch_size is not None else 16)
        if isinstance(step, bool) or not float(step).is_integer() or int(step) < 1:
            raise ValueError(f"stride must be a whole number of pixels ≥ 1, got {step!r}")
        self.sigmas = tuple(float(s) for s in sigmas)
        self.patch_size = int(step)  # the grid step: every cell is a patch_size×patch_size window
        self.pool = pool
        self.weights = WEIGHTS
        per_pixel = 1 + len(FILTERS) * len(self.sigmas)
        self.feature_dim = per_pixel * (2 if pool == "mean+std" and self.patch_size > 1 else 1)

    @property
    def stride(self) -> float:
        """Pixels per grid cell (the ``stride`` option)."""
        return float(self.patch_size)

    def _spec_options(self) -> dict[str, Any]:
        opts = {"sigmas": self.sigmas, "stride": self.patch_size, "pool": self.pool}
        if self.patch_size == 1:
            del opts["pool"]  # nothing to pool in a one-pixel cell
        return opts

    def restrided(self, stride: int) -> FilterBankBackbone:
        """The same filters on another grid step (the fused backbone brings its parts to a common stride)."""
        return FilterBankBackbone(self.sigmas, stride=int(stride), pool=self.pool)

    @property
    def receptive_field(self) -> float:
        """A cell plus :func:`pixel_radius` of its sigmas on each side, in pixels (exact, not an estimate)."""
        return float(self.patch_size + 2 * pixel_radius(self.sigmas))

    @property
    def halo(self) -> int:
        """:func:`pixel_radius` rounded up to whole cells: blocks with it equal whole images exactly."""
        return math.ceil(pixel_radius(self.sigmas) / self.patch_size) * self.patch_size

    def extract(self, image: np.ndarray) -> FeatureMap:
        """Filter-bank features of one image: per pixel at stride 1, else pooled per cell (the image padded by
        reflection to the grid, like DINOv3)."""
        arr = as_image(image, min_size=self.patch_size)
        p = self.patch_size
        padded = pad_to_multiple(arr, p, mode="reflect")
        px = pixel_features(padded, self.sigmas)
        meta: dict[str, Any] = {"sigmas": list(self.sigmas), "pool": self.pool if p > 1 else "none",
                                "preprocessing": {"scaling": "to_float01(auto)", "colour": "luminance"}}
        if p == 1:
            feats = px
        else:
            h, w = padded.shape[0] // p, padded.shape[1] // p
            blocks = px.reshape(h, p, w, p, -1)
            pooled = [blocks.mean(axis=(1, 3))]
            if self.pool == "mean+std":
                pooled.append(blocks.std(axis=(1, 3)))
            feats = np.concatenate(pooled, axis=-1).astype(np.float32)
        fm = FeatureMap(feats, float(p), arr.shape[:2], self.name, self.weights, meta, self.spec)
        return self._remember(fm)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(sigmas=list(self.sigmas), pool=self.pool, filters=list(FILTERS))
        return d


register_backbone(
    "filterbank",
    FilterBankBackbone,
    summary="classical multi-scale filter bank (Gaussian, LoG, gradient, DoG, structure tensor, Hessian)",
    family="classical",
    feature_dim=FilterBankBackbone().feature_dim,
    patch_size=16,
)
