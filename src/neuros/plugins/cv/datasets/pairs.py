"""Registration pairs with known truth, made from real images that ship with packages or sit in ../shared/data.

A pair is ``fixed = truth.apply(base)`` and ``moving = base`` (or another contrast of the same base), so the
true transform maps fixed-image points to moving-image points exactly — the convention of
:mod:`neuros.plugins.cv.transforms` — and label maps follow with :meth:`~..transforms.Transform.apply_labels`.
Images are resampled with a cubic spline (:data:`RESAMPLE_ORDER`), not linearly: a fixed image that *is* the
linear interpolant of the moving one is matched exactly by any metric that samples the moving image linearly
— ours did, to 0.001 px on same-contrast pairs, a precision no real pair of acquisitions allows (session 11:
with cubic resampling 0.002–0.05 px, and the peers' figures move too).
The fixed image is the central part of the base (``crop``), so a rotated or scaled base fills it.

Truths are random and reproducible from a seed: rigid, similarity and affine transforms (rotation up to
``±rotation`` degrees, scale in ``scale``, shear up to ``shear``, shift up to ``shift`` of the side) and
smooth displacement fields (Gaussian-filtered noise, peak ``peak`` px, checked to be free of folding).

Sources: ``sstem`` (real ssTEM EM sections), ``mri`` (MNI152 T1 axial slice; labels grey/white matter),
``mri-t2`` (the same slice as a T2-like image made from the tissue maps: the cross-contrast case),
``nuclei`` (stardist fluorescence nuclei; instance labels), ``ihc`` (scikit-image's immunohistochemistry,
grey). :func:`make_pair_3d` builds the 3-D MNI152 T1 vs T2-like pair, :func:`make_section_stack` a serial-section
stack of real ssTEM sections, each with its own random rigid motion and elastic distortion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ..transforms import CompositeTransform, DisplacementField, LinearTransform, Transform

#: Spline order of the images' resampling (labels: nearest). 3, not 1 — see the module's docstring.
RESAMPLE_ORDER = 3

__all__ = [
    "MODELS",
    "RESAMPLE_ORDER",
    "SOURCES",
    "RegistrationPair",
    "SectionStack",
    "make_pair",
    "make_pair_3d",
    "make_section_stack",
    "random_linear",
    "random_warp",
    "target_registration_error",
]

SOURCES = ("sstem", "mri", "mri-t2", "nuclei", "ihc")
MODELS = ("translation", "rigid", "similarity", "affine", "deformable")


@dataclass
class RegistrationPair:
    """A fixed and a moving image, the true transform (fixed → moving points) and, where known, labels."""

    name: str
    fixed: np.ndarray
    moving: np.ndarray
    truth: Transform
    fixed_labels: np.ndarray | None = None
    moving_labels: np.ndarray | None = None
    cross_contrast: bool = False
    meta: dict = field(default_factory=dict)


def random_linear(ndim: int, model: str, rng: np.random.Generator, center: Sequence[float],
                  rotation: float = 30.0, scale: tuple[float, float] = (0.8, 1.25), shear: float = 0.1,
                  shift: float = 8.0) -> LinearTransform:
    """A random linear transform of ``model`` about ``center`` (rotation in degrees, shift in pixels)."""
    if model not in MODELS[:4]:
        raise ValueError(f"model must be one of {', '.join(MODELS[:4])}, got {model!r}")
    t = rng.uniform(-shift, shift, ndim)
    if model == "translation":
        return LinearTransform.translation(t)
    n_angles = 1 if ndim == 2 else 3
    angles = np.deg2rad(rng.uniform(-rotation, rotation, n_angles))
    angles = angles[0] if ndim == 2 else angles
    if model == "rigid":
        return LinearTransform.rigid(angles, t, center)
    s = math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
    sim = LinearTransform.similarity(s, angles, t, center)
    if model == "similarity":
        return sim
    sh = np.eye(ndim) + np.triu(rng.uniform(-shear, shear, (ndim, ndim)), 1)
    return LinearTransform.affine(sim.matrix @ sh, t, center)


def random_warp(shape: Sequence[int], rng: np.random.Generator, peak: float = 8.0,
                sigma: float | None = None) -> DisplacementField:
    """A smooth random displacement field with largest displacement ``peak`` px, without folding.

    Gaussian-filtered white noise (``sigma`` default: a sixth of the smallest side); halved until its Jacobian
    determinant is positive everywhere.
    """
    shape = tuple(int(s) for s in shape)
    sig = float(sigma) if sigma is not None else min(shape) / 6
    f = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sig, mode="wrap") for _ in shape])
    f *= peak / max(np.abs(f).max(), 1e-12)
    field_ = DisplacementField(f)
    while field_.folding_fraction() > 0:  # pragma: no cover - only for very rough fields
        field_ = DisplacementField(field_.field / 2)
    return field_


def target_registration_error(estimate: Transform, truth: Transform, shape: Sequence[int],
                              step: int = 8) -> float:
    """Mean distance (moving-image pixels) between where ``estimate`` and ``truth`` send a grid of fixed points."""
    grids = np.meshgrid(*[np.arange(step // 2, int(n), step, dtype=np.float64) for n in shape], indexing="ij")
    pts = np.stack([g.ravel() for g in grids], axis=1)
    return float(np.linalg.norm(estimate.map_points(pts) - truth.map_points(pts), axis=1).mean())


# ---------------------------------------------------------------------- sources
def _norm(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    lo, hi = np.percentile(a, [0.5, 99.5])
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


@lru_cache(maxsize=1)
def _mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1, a T2-like volume from the tissue probability maps, and labels (1 grey, 2 white matter)."""
    from nilearn import datasets as nd

    t1 = np.asarray(nd.load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    gm = np.asarray(nd.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(nd.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    brain = np.asarray(nd.load_mni152_brain_mask(resolution=1).get_fdata()) > 0
    csf = np.clip(brain - gm - wm, 0, 1)
    # T2-like contrast: CSF bright, grey matter brighter than white matter (the reverse of T1), dark outside.
    t2 = (1.0 * csf + 0.65 * gm + 0.35 * wm).astype(np.float32)
    t2 = ndimage.gaussian_filter(t2, 0.7)
    labels = np.where(wm > 0.5, 2, np.where(gm > 0.5, 1, 0)).astype(np.uint8)
    return _norm(t1), _norm(t2), labels


def _base(source: str, root: str | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(base image, the other contrast or None, labels or None) of one source, 2-D."""
    if source == "sstem":
        from .catalog import load_sstem

        data = load_sstem(root, sections=[3], downsample=2)
        return data.images[0], None, data.masks[0]
    if source in ("mri", "mri-t2"):
        t1, t2, lab = _mni152()
        z = 80
        img, other = np.rot90(t1[:, :, z]), np.rot90(t2[:, :, z])
        return (img, other, np.rot90(lab[:, :, z])) if source == "mri-t2" else (img, None, np.rot90(lab[:, :, z]))
    if source == "nuclei":
        from stardist.data import test_image_nuclei_2d

        img, inst = test_image_nuclei_2d(return_mask=True)
        return _norm(img), None, np.asarray(inst, dtype=np.int32)
    if source == "ihc":
        from skimage import data

        rgb = data.immunohistochemistry().astype(np.float32) / 255
        return _norm(rgb @ np.array([0.299, 0.587, 0.114], np.float32)), None, None
    raise ValueError(f"unknown pair source {source!r}; choose from {', '.join(SOURCES)}")


def make_pair(source: str, model: str = "affine", seed: int = 0, crop: float = 0.75, rotation: float = 30.0,
              scale: tuple[float, float] = (0.8, 1.25), shear: float = 0.1, peak: float = 8.0,
              root: str | None = None) -> RegistrationPair:
    """A 2-D pair of ``source`` with a random true transform of ``model`` (``"deformable"``: affine + warp).

    Parameters
    ----------
    source : {"sstem", "mri", "mri-t2", "nuclei", "ihc"}
        ``"mri-t2"`` makes the moving image T2-like while the fixed one is T1 (cross-contrast).
    model : {"translation", "rigid", "similarity", "affine", "deformable"}
    seed : int
        Draws the transform (``numpy.random.default_rng(seed)``).
    crop : float
        Side of the fixed image as a fraction of the base's (its centre part).
    rotation, scale, shear, peak
        Ranges of the random transform (degrees, factors, shear, warp peak in pixels).
    root : str, optional
        Folder of the ssTEM data (default ../shared/data/sstem_drosophila_vnc).
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    rng = np.random.default_rng(seed)
    base, other, labels = _base(source, root)
    shape = tuple(round(n * crop) for n in base.shape)
    corner = (np.array(base.shape) - np.array(shape)) / 2
    to_base = LinearTransform.translation(corner)  # fixed grid → the centred window of the base
    lin = random_linear(2, "affine" if model == "deformable" else model, rng, np.array(base.shape) / 2,
                        rotation, scale, shear, shift=0.04 * min(base.shape))
    truth: Transform = lin @ to_base
    if model == "deformable":
        truth = CompositeTransform([random_warp(shape, rng, peak), truth])
    fixed = truth.apply(base, shape, order=RESAMPLE_ORDER)
    moving = other if other is not None else base
    pair = RegistrationPair(f"{source}-{model}-{seed}", fixed, moving, truth, cross_contrast=other is not None,
                            meta={"source": source, "model": model, "seed": seed, "base_shape": list(base.shape),
                                  "rotation": rotation})
    if labels is not None:
        pair.fixed_labels, pair.moving_labels = truth.apply_labels(labels, shape), labels
    return pair


def make_pair_3d(model: str = "deformable", seed: int = 0, downsample: int = 2, peak: float = 4.0,
                 rotation: float = 10.0) -> RegistrationPair:
    """MNI152 T1 (fixed) vs its T2-like volume (moving) with a random affine (+ warp), downsampled ×``downsample``."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    rng = np.random.default_rng(seed)
    t1, t2, lab = _mni152()
    z = 1 / int(downsample)
    t1, t2, lab = ndimage.zoom(t1, z, order=1), ndimage.zoom(t2, z, order=1), ndimage.zoom(lab, z, order=0)
    lin = random_linear(3, "affine" if model == "deformable" else model, rng, np.array(t1.shape) / 2,
                        rotation=rotation, shift=4.0)
    truth: Transform = lin
    if model == "deformable":
        truth = CompositeTransform([random_warp(t1.shape, rng, peak), lin])
    fixed = truth.apply(t1, order=RESAMPLE_ORDER)
    return RegistrationPair(f"mni152-3d-{model}-{seed}", fixed, t2, truth, truth.apply_labels(lab, t1.shape), lab,
                            cross_contrast=True, meta={"source": "mni152-3d", "model": model, "seed": seed,
                                                       "downsample": downsample, "rotation": rotation})


@dataclass
class SectionStack:
    """Serial sections ``stack[i] = truths[i].apply(section_i)``: ``truths[i]`` maps stack-grid points to the
    undistorted section's pixels (the sections of the data set are already aligned to each other)."""

    stack: np.ndarray
    truths: list[Transform]
    meta: dict = field(default_factory=dict)

    def residual(self, transforms: Sequence[Transform], margin: float = 0.15, step: int = 8) -> list[float]:
        """Per section, the mean distance (undistorted pixels) between where the estimated alignment and the
        truth put the points of section 0's frame: ``|truths[i](transforms[i](x)) − truths[0](x)|`` over a grid
        of points inside the central ``1 − 2·margin`` of the frame. ``transforms[i]`` maps section 0's frame
        to section ``i`` of the stack (the convention of ``align_stack_models``)."""
        shape = self.stack.shape[1:]
        axes = [np.arange(round(margin * n), round((1 - margin) * n), step, dtype=np.float64) for n in shape]
        pts = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
        want = self.truths[0].map_points(pts)
        return [float(np.linalg.norm(t.map_points(e.map_points(pts)) - want, axis=1).mean())
                for t, e in zip(self.truths, transforms, strict=True)]


def make_section_stack(n: int = 6, seed: int = 0, downsample: int = 4, crop: float = 0.8, rotation: float = 5.0,
                       shift: float = 10.0, peak: float = 4.0, root: str | None = None) -> SectionStack:
    """Real ssTEM sections 0 … n−1, each moved by a random rigid transform (rotation up to ``±rotation``
    degrees, shift up to ``shift`` px) and a smooth elastic warp (peak ``peak`` px), as cutting and imaging do.

    Parameters
    ----------
    n : int
        Sections (at most 14).
    seed : int
        Draws the distortions.
    downsample : int
        Block-mean factor of the 1024² sections (4 → 256²).
    crop : float
        Side of the stack's grid as a fraction of a section's (its centre), so moved sections fill it.
    rotation, shift, peak
        Ranges of the distortions (degrees, pixels, pixels).
    root : str, optional
        Folder of the ssTEM data (default ../shared/data/sstem_drosophila_vnc).
    """
    from .catalog import load_sstem

    rng = np.random.default_rng(seed)
    sections = load_sstem(root, sections=list(range(int(n))), downsample=int(downsample)).images
    base = sections[0].shape
    shape = tuple(round(s * crop) for s in base)
    to_window = LinearTransform.translation((np.array(base) - np.array(shape)) / 2)
    stack, truths = [], []
    for img in sections:
        lin = random_linear(2, "rigid", rng, np.array(base) / 2, rotation=rotation, shift=shift) @ to_window
        truth = CompositeTransform([random_warp(shape, rng, peak), lin])
        stack.append(truth.apply(img, shape, order=RESAMPLE_ORDER))
        truths.append(truth)
    return SectionStack(np.stack(stack).astype(np.float32), truths,
                        {"source": "sstem", "n": int(n), "seed": seed, "downsample": downsample,
                         "rotation": rotation, "shift": shift, "peak": peak})
