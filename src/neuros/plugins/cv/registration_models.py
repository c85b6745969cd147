"""Rigid, similarity, affine and deformable registration of 2-D images and 3-D volumes, coarse to fine.

:func:`register` returns a :class:`Registration` whose ``transform`` maps points of the *fixed* image's grid to
the *moving* image (see :mod:`neuros.plugins.cv.transforms`): ``warped[x] = moving[T(x)]``, so the registered
moving image lies on the fixed image's grid whatever the two shapes are.

How it works
------------
1. **Similarity: structure channels, after warping.** Both images are smoothed (σ = 1 pixel of the pyramid
   level), their gradients normalised, ``n = g / sqrt(|g|² + ε²)`` (``ε`` = ``edge_floor`` × the mean gradient
   magnitude), and the tensor ``n nᵀ`` (its ``d(d+1)/2`` distinct entries, off-diagonals × √2) is compared by
   a cosine over the overlap. The dot product of two such tensors is ``(n_f · n_m)²``: the normalised gradient
   field distance (Haber & Modersitzki, 2006), invariant to the sign of edges, so T1 matches T2 and inverted
   contrast. The moving image is warped first and its channels computed after warping, so rotations and
   shears are scored correctly.
2. **Global coarse step** on a copy downsampled until its longer side is ≤ ``coarse_size``: for every
   candidate rotation (2-D: a grid over ``±angle_range`` degrees) and scale, the moving image is rotated, its
   channels computed, and the masked normalised cross-correlation (Padfield, 2012) with the fixed channels is
   evaluated for *every* translation at once by FFT, among translations that keep ``min_overlap`` of the fixed
   grid covered. The best (rotation, scale, translation) wins: a grid search, so no local optimum can trap
   it. 3-D searches rotations too: a near-uniform grid over SO(3) (:data:`ROTATION_STEP_3D` = 30° apart,
   ~550 rotations, within ``angle_range``) on a copy twice as coarse, each with its all-translation search;
   its best few distinct rotations, the principal axes of the foreground (four proper sign choices) and the
   identity then compete at the coarse level (× ``scales``), and the winner is refined locally (± 10°).
3. **Fine step**: instance optimisation (Adam, in torch on the CPU) of the transform's parameters on a
   pyramid (``torch.nn.functional.grid_sample``), maximising the same similarity; a penalty keeps the overlap
   above ``min_overlap``.
4. **Deformable**: after the affine, a stationary velocity field on a control grid every ``grid_spacing``
   pixels, integrated by scaling and squaring (Arsigny et al., MICCAI 2006) into a diffeomorphic displacement
   ``u``; diffusion regulariser on the velocity; the structure similarity in 2-D, the mutual information of
   the intensities at full-resolution sample points in 3-D. The result is ``affine @ DisplacementField(u)``:
   ``T(x) = A (x + u(x)) + b``.
5. **Polish** (linear models and the affine part of ``deformable``): a last refinement at full resolution on
   the mutual information of the raw intensities at sampled points (Mattes et al., IEEE TMI 2003), kept only
   if it moves the answer by less than a pixel of the finest structure level.
6. **Confidence**: ``similarity`` (the structure similarity at the answer, in [0, 1]), ``overlap`` (fraction
   of the fixed grid that sees the moving image), ``consistency`` (the moving → fixed registration run
   independently — in 2-D always with the full rotation and scale search; mean distance in pixels between
   ``T`` and the inverse of the reverse transform over the overlap), ``score`` (the similarity damped by the
   inconsistency) and ``reliable`` (all within the documented thresholds, :data:`RELIABLE`).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from .transforms import CompositeTransform, DisplacementField, LinearTransform, Transform

__all__ = [
    "MODELS",
    "RELIABLE",
    "Registration",
    "StackRegistration",
    "align_stack_models",
    "register",
]

MODELS = ("translation", "rigid", "similarity", "affine", "deformable")

#: Thresholds for ``Registration.reliable``: the score at least ``min_score``, the overlap at least the
#: call's ``min_overlap``, and the forward/backward consistency at most ``max_inconsistency`` pixels (mean
#: point distance; a fraction of the fixed image's size is allowed too, whichever is larger; looser for
#: ``deformable``, whose check compares affine fits to a warped pair). Both directions end with the
#: mutual-information polish, so right answers agree to a few hundredths of a pixel (calibration set:
#: ≤ 0.13 px for 41 right answers, ≥ 3 px for 31 wrong ones).
RELIABLE = {"min_score": 0.15, "max_inconsistency": 1.0, "max_inconsistency_fraction": 0.0025,
            "max_inconsistency_deformable": 2.0, "max_inconsistency_fraction_deformable": 0.01}


@dataclass
class Registration:
    """The answer of :func:`register`.

    Attributes
    ----------
    transform : Transform
        Fixed-grid coordinates → moving-image coordinates (a ``LinearTransform``; for ``deformable`` a
        ``CompositeTransform`` ``affine @ DisplacementField``). ``apply(moving)`` puts the moving image on the
        fixed image's grid.
    model : str
    score : float
        Confidence in [0, 1]: ``similarity × exp(−consistency / limit)`` (``limit`` from :data:`RELIABLE`),
        the similarity alone when the consistency is not checked.
    overlap : float
        Fraction of the fixed grid that sees the moving image.
    consistency : float
        Mean distance (pixels) between ``T`` and the inverse of the independently computed moving → fixed
        transform over the overlap; NaN when not checked.
    reliable : bool
        ``score``, ``overlap`` and ``consistency`` all within :data:`RELIABLE` (and ``min_overlap``).
    fixed_shape, moving_shape : tuple of int
    coarse : LinearTransform
        The global coarse step's answer.
    folding_fraction : float
        Fraction of fixed-grid points where the displacement folds (Jacobian ≤ 0); 0 for linear models.
    similarity : float
        Similarity of the structure channels at the answer, in [0, 1] (the ``score`` before issue 13's
        consistency damping).
    grid : str
        Always ``"fixed"``: outputs lie on the fixed image's grid.
    """

    transform: Transform
    model: str
    score: float
    overlap: float
    consistency: float
    reliable: bool
    fixed_shape: tuple[int, ...]
    moving_shape: tuple[int, ...]
    coarse: LinearTransform
    folding_fraction: float = 0.0
    grid: str = "fixed"
    method: str = ""
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)
    similarity: float = float("nan")

    @property
    def linear(self) -> LinearTransform:
        """The linear part (the whole transform for linear models)."""
        t = self.transform
        if isinstance(t, LinearTransform):
            return t
        return next(s for s in reversed(t.transforms) if isinstance(s, LinearTransform))  # type: ignore[attr-defined]

    def apply(self, moving: Any, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """The moving image resampled onto the fixed image's grid."""
        return self.transform.apply(np.asarray(moving), self.fixed_shape, order=order, cval=cval)

    def apply_labels(self, labels: Any) -> np.ndarray:
        """A label map of the moving image on the fixed image's grid (nearest neighbour)."""
        return self.transform.apply_labels(np.asarray(labels), self.fixed_shape)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (the linear part's matrix and offset; not the field; NaN → None)."""
        lin = self.linear
        return {
            "model": self.model, "score": self.score, "similarity": self.similarity, "overlap": self.overlap,
            "consistency": None if np.isnan(self.consistency) else self.consistency,
            "reliable": self.reliable, "reasons": list(self.reasons), "fixed_shape": list(self.fixed_shape),
            "moving_shape": list(self.moving_shape), "grid": self.grid, "matrix": lin.matrix.tolist(),
            "offset": lin.offset.tolist(), "folding_fraction": self.folding_fraction, "method": self.method,
            "seconds": self.seconds,
        }


# --- input ---------------------------------------------------------------------------------------------------
def _as_input(x: Any, name: str, channel_axis: int | None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if channel_axis is not None:
        arr = arr.mean(axis=channel_axis)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2-D image or a 3-D volume, got shape {arr.shape} "
                         "(colour images: pass channel_axis=-1)")
    if min(arr.shape) < 8:
        raise ValueError(f"{name} is too small to register: shape {arr.shape}, need at least 8 pixels per axis")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values; replace them (e.g. np.nan_to_num) first")
    lo, hi = np.percentile(arr, (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((arr - lo) / (hi - lo), 0, 1).astype(np.float32)


def _downsample(img: np.ndarray, f: int) -> np.ndarray:
    """Block mean by ``f`` after an anti-alias blur; pixel ``i`` covers full-resolution ``f·i … f·i + f − 1``."""
    if f == 1:
        return img
    g = ndi.gaussian_filter(img, 0.5 * f)
    shp = tuple(s // f for s in img.shape)
    g = g[tuple(slice(0, s * f) for s in shp)]
    new = [v for s in shp for v in (s, f)]
    return g.reshape(new).mean(axis=tuple(range(1, 2 * len(shp), 2))).astype(np.float32)


class _Pyramid:
    """An image and its :func:`_downsample` copies, each computed once (the coarse search, the fine levels and
    the reverse check all ask for the same factors)."""

    def __init__(self, img: np.ndarray) -> None:
        self.img, self.shape, self.ndim = img, img.shape, img.ndim
        self._levels: dict[int, np.ndarray] = {1: img}

    def at(self, f: int) -> np.ndarray:
        if f not in self._levels:
            self._levels[f] = _downsample(self.img, f)
        return self._levels[f]


def _at(img: np.ndarray | _Pyramid, f: int) -> np.ndarray:
    return img.at(f) if isinstance(img, _Pyramid) else _downsample(img, f)


def _map_threads(fn: Callable[..., Any], *iterables: Sequence[Any], workers: int = 1) -> list[Any]:
    """``list(map(fn, *iterables))`` on up to ``workers`` threads (in order). The work is torch kernels on
    small tensors, one intra-op thread each: threads over independent pieces use the cores where torch's own
    intra-op threads gain little (two intra-op threads took the 3-D affine only 13 % faster)."""
    n = min(int(workers), len(iterables[0]) if iterables else 0)
    if n <= 1:
        return list(map(fn, *iterables))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n, thread_name_prefix="neuros-register") as pool:
        return list(pool.map(fn, *iterables))


def _default_workers() -> int:
    """Threads of one registration: the CPUs this process may use, at most :data:`MAX_WORKERS`."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


@lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, once (it reads every loaded library: ~12 ms), after
    SciPy's optimiser — and so its BLAS — is loaded."""
    import scipy.optimize  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict[str, Any] = {"depth": 0, "limiter": None}


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS limited to one thread while registrations run (restored when the last one ends: registrations
    may run on several threads at once). SciPy's L-BFGS-B calls BLAS on the 8 k parameters of a 3-D velocity
    field, and OpenBLAS's threads then spin on the second core that the consistency check's reverse
    registration needs: the 3-D deformable registration took 7.0 s and 12.8 s of CPU, with one BLAS thread
    5.9 s and 9.5 s (same answers). (OpenBLAS 0.3.28–0.3.30 ignores the limit when it is set from another thread
    than the main one after the main thread set its own count; calls from the main thread — the CLI, scripts,
    notebooks — always get it.)"""
    with _BLAS_LOCK:
        if _BLAS_STATE["depth"] == 0:
            _BLAS_STATE["limiter"] = _blas_controller().limit(limits=1, user_api="blas")
        _BLAS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["depth"] -= 1
            if _BLAS_STATE["depth"] == 0:
                _BLAS_STATE["limiter"].restore_original_limits()
                _BLAS_STATE["limiter"] = None


#: Most threads one registration uses by default (the forward/reverse pair and the coarse search's batches).
MAX_WORKERS = 4

#: Whether the 3-D consistency check's reverse registration refines its coarse hypotheses
#: (:func:`_refine_hypotheses`). Off: ~2.5 s of CPU per call (57 local candidates on the MNI152 pair, with the
#: 19-rotation refinement of the time) that the check does not need — a reverse that picks a wrong coarse
#: winner makes the directions disagree, and the second opinion (the reverse again from the inverse of the
#: forward answer) settles it. Same answers, scores
#: and flags on 3 × 3 MNI152 pairs, 5 whole-volume rotations (45–160°) and 6 oblique crops; 3-D affine
#: 6.7 → 6.2 s, deformable 12.2 → ~10 s (session 9).
REVERSE_REFINE_3D = False


# --- torch helpers: structure channels and masked similarity --------------------------------------------------
def _torch():
    import torch

    return torch


def _gradients(x: Any) -> Any:
    """Central differences of (N, 1, *S) along each spatial axis → (N, d, *S) (replicate borders)."""
    torch = _torch()
    import torch.nn.functional as F

    d = x.ndim - 2
    out = []
    for ax in range(d):
        pad = [0, 0] * d
        pad[2 * (d - 1 - ax)] = 1
        pad[2 * (d - 1 - ax) + 1] = 1
        xp = F.pad(x, pad, mode="replicate")
        hi = xp.narrow(2 + ax, 2, x.shape[2 + ax])
        lo = xp.narrow(2 + ax, 0, x.shape[2 + ax])
        out.append(0.5 * (hi - lo))
    return torch.cat(out, dim=1)


def _erode(mask: Any) -> Any:
    """Binary erosion by one pixel of an (N, 1, *S) mask (min-pool)."""
    import torch.nn.functional as F

    pool = F.max_pool2d if mask.ndim == 4 else F.max_pool3d
    return -pool(-mask, 3, stride=1, padding=1)


def _tensor_channels(x: Any, valid: Any, eps: Any) -> Any:
    """Structure tensor channels ``n_i n_j`` (off-diagonals × √2) of (N, 1, *S) images, zero outside ``valid``."""
    torch = _torch()
    g = _gradients(x)
    d = g.shape[1]
    if eps is None:
        w = valid.expand_as(g[:, :1])
        mag = torch.sqrt((g * g).sum(1, keepdim=True) + 1e-12)
        eps = (mag * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)
        eps = eps.view(-1, *([1] * (g.ndim - 1)))
    n = g / torch.sqrt((g * g).sum(1, keepdim=True) + eps * eps + 1e-12)
    ch = []
    for i in range(d):
        for j in range(i, d):
            ch.append(n[:, i] * n[:, j] * (1.0 if i == j else math.sqrt(2.0)))
    return torch.stack(ch, 1) * valid


def _masked_cosine(cf: Any, cw: Any, m: Any) -> Any:
    """Cosine of mean-removed channels over the mask ``m`` (N, 1, *S): the similarity, in [-1, 1]."""
    torch = _torch()
    dims = tuple(range(2, cf.ndim))
    cnt = m.sum(dims, keepdim=True).clamp_min(1.0)
    a = (cf - (cf * m).sum(dims, keepdim=True) / cnt) * m
    b = (cw - (cw * m).sum(dims, keepdim=True) / cnt) * m
    num = (a * b).sum(dim=(1, *dims))
    den = torch.sqrt((a * a).sum(dim=(1, *dims)) * (b * b).sum(dim=(1, *dims))).clamp_min(1e-12)
    return num / den


# --- coordinates ------------------------------------------------------------------------------------------------
def _level_points(shape: tuple[int, ...], f: int) -> np.ndarray:
    """Full-resolution coordinates of the pixel centres of a level downsampled by ``f``: (*S_l, d)."""
    sl = tuple(s // f for s in shape)
    idx = np.indices(sl, dtype=np.float64)
    return (np.moveaxis(idx, 0, -1) * f + (f - 1) / 2.0)


def _to_grid(y: Any, f: int, level_shape: tuple[int, ...]) -> Any:
    """Full-resolution moving coordinates (…, d) → grid_sample's normalised (…, d reversed)."""
    torch = _torch()
    yl = (y - (f - 1) / 2.0) / f
    size = torch.tensor([max(s - 1, 1) for s in level_shape], dtype=y.dtype)
    g = 2.0 * yl / size - 1.0
    return g.flip(-1)


def _inside(y: Any, shape: tuple[int, ...], margin: float = 1.0) -> Any:
    """1 where moving coordinates ``y`` (…, d) lie at least ``margin`` pixels inside ``shape``, else 0."""
    torch = _torch()
    hi = torch.tensor([s - 1 - margin for s in shape], dtype=y.dtype)
    return ((y >= margin) & (y <= hi)).all(-1).to(y.dtype)


def _sample(img: Any, grid: Any, mode: str = "bilinear") -> Any:
    import torch.nn.functional as F

    return F.grid_sample(img, grid, mode=mode, padding_mode="zeros", align_corners=True)


# --- the global coarse step -------------------------------------------------------------------------------------
def _rotations_2d(angle_range: float, angle_step: float) -> list[np.ndarray]:
    rng = min(float(angle_range), 180.0)
    n = max(1, round(2 * rng / angle_step)) if rng > 0 else 1
    if rng >= 180:
        angles = np.arange(n) * (360.0 / n) - 180.0
    elif rng > 0:
        angles = np.linspace(-rng, rng, n + 1)
    else:
        angles = np.zeros(1)
    out = []
    for a in np.deg2rad(angles):
        c, s = math.cos(a), math.sin(a)
        out.append(np.array([[c, -s], [s, c]]))
    return out


def _rot2(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


def _principal_axes(img: np.ndarray) -> np.ndarray:
    """Columns: the principal axes of the foreground (Otsu) of ``img``, by decreasing spread."""
    from skimage.filters import threshold_otsu

    fg = img > threshold_otsu(img)
    pts = np.argwhere(fg).astype(np.float64)
    if len(pts) < 10:
        return np.eye(img.ndim)
    cov = np.cov((pts - pts.mean(0)).T)
    w, v = np.linalg.eigh(cov)
    return v[:, np.argsort(w)[::-1]]


def _rotation_grid_3d(step: float, max_angle: float = 180.0) -> list[np.ndarray]:
    """Rotations covering SO(3) about ``step`` degrees apart, those within ``max_angle`` of the identity.

    Hopf-style sampling (Yershova et al., IJRR 2010): where the rotation sends the last axis (a Fibonacci
    lattice on the sphere, ``4π / step²`` points) × a spin about that axis (``360 / step`` angles).
    """
    from scipy.spatial.transform import Rotation

    h = np.deg2rad(float(step))
    n_dir, n_spin = max(2, round(4 * math.pi / h ** 2)), max(1, round(2 * math.pi / h))
    k = np.arange(n_dir) + 0.5
    z = 1.0 - 2.0 * k / n_dir
    phi = math.pi * (1.0 + math.sqrt(5.0)) * k
    dirs = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], 1)
    axis = np.cross(np.array([0.0, 0.0, 1.0]), dirs)  # rotation taking e_z to each direction
    norm = np.linalg.norm(axis, axis=1, keepdims=True)
    axis = np.where(norm > 1e-9, axis / np.maximum(norm, 1e-12), np.array([1.0, 0.0, 0.0]))
    to_dir = Rotation.from_rotvec(axis * np.arccos(np.clip(z, -1, 1))[:, None])
    spins = Rotation.from_rotvec(np.outer(np.arange(n_spin) * 2 * math.pi / n_spin, [0.0, 0.0, 1.0]))
    rots = [to_dir[i] * spins[j] for i in range(n_dir) for j in range(n_spin)]
    lim = np.deg2rad(min(float(max_angle), 180.0)) + 1e-9
    return [np.eye(3)] + [r.as_matrix() for r in rots if r.magnitude() <= lim]


def _local_rotations_3d(step: float) -> list[np.ndarray]:
    """The identity and ± ``step`` degrees about each axis (7 rotations). Also about each pair of axes (19) was
    the choice with a 30° SO(3) grid; with the 40° grid the 7 found the same answers (10 random affine MNI152
    pairs, the benchmark pairs, the oblique crop) in ~11 % less time (session 9)."""
    from scipy.spatial.transform import Rotation

    h = np.deg2rad(float(step))
    vecs = [v for v in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, v)) <= 1]
    return [Rotation.from_rotvec(h * np.asarray(v, float) / max(np.linalg.norm(v), 1.0)).as_matrix()
            for v in vecs]


def _rotations_3d(fixed: np.ndarray, moving: np.ndarray) -> list[np.ndarray]:
    """Identity and the rotations taking the fixed principal axes onto the moving ones (4 proper sign sets)."""
    pf, pm = _principal_axes(fixed), _principal_axes(moving)
    out = [np.eye(3)]
    for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        r = pm @ np.diag(signs) @ pf.T
        if np.linalg.det(r) < 0:
            r = pm @ np.diag(signs) @ np.diag((1, 1, -1)) @ pf.T
        out.append(r)
    return out


def _distinct(matrices: list[np.ndarray], tol: float = 1e-6) -> list[np.ndarray]:
    """``matrices`` without repeats (the first of each), in order: the identity is both a candidate of its own
    and usually the SO(3) search's best rotation, and a principal-axes rotation can be a grid rotation."""
    if len(matrices) < 2:
        return list(matrices)
    m = np.stack(matrices).reshape(len(matrices), -1)
    same = np.abs(m[:, None] - m[None]).max(-1) <= tol
    first = np.argmax(same, axis=1)  # index of each matrix's first equal
    return [matrices[i] for i in range(len(matrices)) if first[i] == i]


def _coarse_candidates(fixed: np.ndarray | _Pyramid, moving: np.ndarray | _Pyramid, f: int,
                       matrices: list[np.ndarray], min_overlap: float, batch: int | None = None,
                       workers: int = 1) -> list[tuple[float, LinearTransform]]:
    """Every candidate matrix with its best translation at level ``f``: (score, full-res transform), best first;
    candidates with no translation that keeps ``min_overlap`` are left out (:func:`_coarse_ranked`)."""
    return [(v, t) for v, _, t in _coarse_ranked(fixed, moving, f, matrices, min_overlap, batch, workers)]


def _coarse_ranked(fixed: np.ndarray | _Pyramid, moving: np.ndarray | _Pyramid, f: int,
                   matrices: list[np.ndarray], min_overlap: float, batch: int | None = None,
                   workers: int = 1) -> list[tuple[float, int, LinearTransform]]:
    """:func:`_coarse_candidates` with each candidate's index in ``matrices``: (score, index, transform).

    Each candidate's moving image is resampled on a box just large enough to hold it (the bounding box of the
    moving image under the candidate's inverse), and candidates are batched by box size, so a near-identity
    rotation is not correlated on the box a 45° one needs (in 3-D the box of a rotated volume's diagonal is
    ~3× the voxels of an upright one). Default batches: 3 in 3-D (smaller ones cost more in overheads, larger
    ones group unlike boxes: 3-D MNI152 coarse level, 33 candidates, 2.6 s in one batch of 40, 1.05 s in
    batches of 3), 12 in 2-D (0.106 s for 75 candidates of a 233 × 197 MRI slice, 0.128 s in batches of 4).
    ``workers`` threads run the batches (torch releases the GIL in its kernels)."""
    torch = _torch()
    d = fixed.ndim
    fl, ml = _at(fixed, f), _at(moving, f)
    sf, sm = fl.shape, ml.shape
    from scipy.fft import next_fast_len

    # fixed: channels, energy and mask (once)
    ft = torch.from_numpy(ndi.gaussian_filter(fl, 1.0))[None, None]
    mf = _erode(torch.ones_like(ft))
    cf = _tensor_channels(ft, mf, None)
    cf = (cf - (cf * mf).sum(tuple(range(2, 2 + d)), keepdim=True) / mf.sum()) * mf
    ef = (cf * cf).sum(1, keepdim=True)
    dims = tuple(range(-d, 0))
    need = min_overlap * float(mf.sum())
    mt = torch.from_numpy(ndi.gaussian_filter(ml, 1.0))[None, None]
    cm_ = np.array([(s - 1) / 2.0 for s in sm])
    batch = int(batch) if batch else (12 if d == 2 else 3)
    # box of each candidate: the moving image's half-extent mapped back by the inverse, + 2 pixels (every valid
    # pixel's gradient stencil inside the box); each side of the parity of the moving image's, so the box
    # centre falls on the moving image's centre lattice and an upright candidate samples pixel centres (no
    # interpolation blur: on an ssTEM crop pair at ×5 the half-pixel phase took the right candidate's score from
    # 0.94 to 0.83 and put its translation half a coarse pixel off)
    inv = np.linalg.inv(np.stack(matrices))
    boxes = 2 * np.ceil(np.abs(inv) @ cm_ + 2.0).astype(int) + 1  # (n, d), odd sides
    boxes += (np.asarray(sm) + 1) % 2  # even where the moving side is even
    order = sorted(range(len(matrices)), key=lambda i: (int(np.prod(boxes[i])), i))
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    shapes = [tuple(int(v) for v in boxes[ids].max(0)) for ids in batches]
    fft_shapes = [tuple(next_fast_len(int(a + b), real=True) for a, b in zip(sf, sc, strict=True)) for sc in shapes]
    spectra_f = {fs: tuple(torch.conj(torch.fft.rfftn(x, s=fs, dim=dims)) for x in (cf, ef, mf))
                 for fs in dict.fromkeys(fft_shapes)}

    def run(ids: list[int], sc: tuple[int, ...], fft_shape: tuple[int, ...]
            ) -> list[tuple[float, int, np.ndarray, np.ndarray]]:
        found: list[tuple[float, int, np.ndarray, np.ndarray]] = []
        mats = [matrices[i] for i in ids]
        cw_ = np.array([(s - 1) / 2.0 for s in sc])
        cf_hat, ef_hat, mf_hat = spectra_f[fft_shape]
        zs = torch.from_numpy(np.moveaxis(np.indices(sc, dtype=np.float32), 0, -1) - cw_.astype(np.float32))
        mt_ = torch.from_numpy(np.stack(mats).astype(np.float32))
        y = torch.einsum("nij,...j->n...i", mt_, zs) + torch.from_numpy(cm_.astype(np.float32))
        n = len(mats)
        warped = _sample(mt.expand(n, -1, *sm), _to_grid(y, 1, sm))
        valid = _inside(y, sm)[:, None]
        cw = _tensor_channels(warped, valid, None)
        cnt = valid.flatten(1).sum(1).clamp_min(1).view(-1, 1, *([1] * d))
        cw = (cw - (cw * valid).sum(tuple(range(2, 2 + d)), keepdim=True) / cnt) * valid
        v_hat = torch.fft.rfftn(valid, s=fft_shape, dim=dims)
        w_hat = torch.fft.rfftn(torch.cat([cw, (cw * cw).sum(1, keepdim=True)], 1), s=fft_shape, dim=dims)
        k = cw.shape[1]
        spectra = torch.stack([(cf_hat * w_hat[:, :k]).sum(1),  # Σ cf(x)·cw(x + d)
                               ef_hat[:, 0] * v_hat[:, 0],  # Σ |cf(x)|² valid(x + d)
                               mf_hat[:, 0] * w_hat[:, k],  # Σ mf(x) |cw(x + d)|²
                               mf_hat[:, 0] * v_hat[:, 0]], 1)  # overlap count
        num, e_f, e_w, count = torch.fft.irfftn(spectra, s=fft_shape, dim=dims).unbind(1)
        den = torch.sqrt(e_f.clamp_min(0) * e_w.clamp_min(0))
        # rank by NCC × overlap^¼: a correlation estimated on a small overlap is noisier, so near-minimal
        # overlaps must correlate clearly better to win (it stopped repetitive nuclei from locking on a
        # neighbour at overlap 0.29 in the calibration set)
        frac = torch.sqrt(torch.sqrt((count / float(mf.sum())).clamp(0, 1)))  # = ** 0.25, faster than pow
        ncc = torch.where((count > need - 0.5) & (den > 1e-9), frac * num / den.clamp_min(1e-12),
                          torch.tensor(-2.0))
        val, idx = ncc.flatten(1).max(1)
        for j in range(n):
            if float(val[j]) > -1.5:
                shift = np.array(np.unravel_index(int(idx[j]), fft_shape), dtype=np.float64)
                shift = np.where(shift > np.array(sc) - 1, shift - np.array(fft_shape), shift)
                found.append((float(val[j]), ids[j], mats[j], shift - cw_))
        return found

    found = [hit for part in _map_threads(run, batches, shapes, fft_shapes, workers=workers) for hit in part]
    found.sort(key=lambda t: (-t[0], t[1]))
    o = (f - 1) / 2.0
    return [(v, i, LinearTransform(m, -m @ np.full(d, o) + f * (m @ dvec + cm_) + o, "affine"))
            for v, i, m, dvec in found]


# --- the fine step ----------------------------------------------------------------------------------------------
def _skew(w: Any, d: int) -> Any:
    torch = _torch()
    if d == 2:
        z = torch.zeros((), dtype=w.dtype)
        return torch.stack([torch.stack([z, -w[0]]), torch.stack([w[0], z])])
    z = torch.zeros((), dtype=w.dtype)
    return torch.stack([torch.stack([z, -w[2], w[1]]), torch.stack([w[2], z, -w[0]]),
                        torch.stack([-w[1], w[0], z])])


class _Level:
    """One pyramid level: fixed channels and the moving image, both downsampled by ``f``."""

    def __init__(self, fixed: np.ndarray | _Pyramid, moving: np.ndarray | _Pyramid, f: int,
                 feats: tuple[Any, Any] | None = None, feature_weight: float = 0.0) -> None:
        torch = _torch()
        self.f = f
        self.feats = None
        fl, ml = _at(fixed, f), _at(moving, f)
        self.fshape, self.mshape = fl.shape, ml.shape
        ft = torch.from_numpy(ndi.gaussian_filter(fl, 1.0))[None, None]
        self.mf = _erode(torch.ones_like(ft))
        self.cf = _tensor_channels(ft, self.mf, None)
        self.mov = torch.from_numpy(ndi.gaussian_filter(ml, 1.0))[None, None]
        g = _gradients(self.mov)
        self.eps_m = torch.sqrt((g * g).sum(1)).mean()
        self.points = torch.from_numpy(_level_points(fixed.shape, f).astype(np.float32))
        if feats is not None and feature_weight > 0:
            ff, fm = feats
            self.feats = (_sample(_feature_tensor(ff), _feature_grid(self.points, ff))[0:1],
                          _feature_tensor(fm), fm, float(feature_weight))
        from .structure_similarity import StructureLevel

        self.structure = StructureLevel(self.cf[0].numpy(), self.mf[0, 0].numpy(), self.mov[0, 0].numpy(),
                                        float(self.eps_m), f)

    def similarity(self, y: Any) -> tuple[Any, Any]:
        """(similarity, overlap fraction) of the moving image sampled at full-res coordinates ``y`` (*S_l, d).

        Without backbone features: :class:`~neuros.plugins.cv.structure_similarity.StructureLevel`'s
        written-out value and gradient (half the time of :meth:`similarity_autograd`, equal to it: tested)."""
        if self.feats is None:
            return _structure_function().apply(y, self.structure)
        return self.similarity_autograd(y)

    def similarity_autograd(self, y: Any) -> tuple[Any, Any]:
        """:meth:`similarity` as torch operations (autograd's gradient), with the backbone features if any."""
        warped = _sample(self.mov, _to_grid(y, self.f, self.mshape)[None])
        yl = (y.detach() - (self.f - 1) / 2.0) / self.f
        inside = _inside(yl, self.mshape)[None, None]
        valid = inside * self.mf
        cw = _tensor_channels(warped, valid, self.eps_m)
        s = _masked_cosine(self.cf * valid, cw, valid)[0]
        if self.feats is not None:  # backbone patch features, upsampled (bilinear) at the sampled points
            ff, mt, fm, w = self.feats
            wf = _sample(mt, _feature_grid(y, fm))
            s = (1.0 - w) * s + w * _masked_cosine(ff * valid, wf * valid, valid)[0]
        # a differentiable overlap (a ramp one level pixel wide at the moving image's border) for the penalty
        torch = _torch()
        hi = torch.tensor([n - 1 for n in self.mshape], dtype=y.dtype)
        ramp = torch.clamp(torch.minimum(yl_ := (y - (self.f - 1) / 2.0) / self.f, hi - yl_) + 0.5, 0, 1)
        return s, ramp.prod(-1).mean()


@lru_cache(maxsize=1)
def _structure_function() -> Any:
    """The autograd function of :meth:`_Level.similarity`: (similarity, overlap) of the moving coordinates, with
    the gradient :class:`~neuros.plugins.cv.structure_similarity.StructureLevel` computes alongside."""
    torch = _torch()

    class StructureSimilarity(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, y: Any, level: Any) -> tuple[Any, Any]:
            s, ov, ds, dov = level.value_and_gradient(y.detach().numpy(), gradient=ctx.needs_input_grad[0])
            ctx.grads = (ds, dov)
            return torch.tensor(s, dtype=y.dtype), torch.tensor(ov, dtype=y.dtype)

        @staticmethod
        def backward(ctx: Any, gs: Any, gov: Any) -> tuple[Any, None]:
            ds, dov = ctx.grads
            return torch.from_numpy(np.ascontiguousarray(ds * float(gs) + dov * float(gov))), None

    return StructureSimilarity


def _feature_tensor(fm: Any) -> Any:
    """(1, C, gh, gw) torch tensor of a FeatureMap's unit-normalised patch features."""
    torch = _torch()
    f = np.asarray(fm.features, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-8)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(f, -1, 0)))[None]


def _feature_grid(y: Any, fm: Any) -> Any:
    """grid_sample coordinates in a FeatureMap's grid for pixel coordinates ``y`` (…, 2); cell ``i`` covers
    pixels ``[i·stride, (i + 1)·stride)``."""
    torch = _torch()
    st = float(fm.stride)
    g = (y - (st - 1) / 2.0) / st
    size = torch.tensor([max(n - 1, 1) for n in fm.features.shape[:2]], dtype=y.dtype)
    return (2.0 * g / size - 1.0).flip(-1)[None] if y.ndim == 3 else (2.0 * g / size - 1.0).flip(-1)


def _linear_params(model: str, d: int) -> dict[str, int]:
    nrot = 1 if d == 2 else 3
    return {"translation": {}, "rigid": {"rot": nrot}, "similarity": {"rot": nrot, "scale": 1},
            "affine": {"mat": d * d}}.get(model, {"mat": d * d})


class _Stalled(Exception):
    """Raised inside :func:`_lbfgs`'s objective to end a minimisation that stopped improving."""


def _set_params(params: list[Any], x: np.ndarray) -> None:
    torch = _torch()
    chunks = np.split(x.astype(np.float32), np.cumsum([p.numel() for p in params])[:-1])
    with torch.no_grad():
        for p, c in zip(params, chunks, strict=True):
            p.copy_(torch.from_numpy(c).view_as(p))


def _lbfgs(params: list[Any], closure: Callable[[], Any], iters: int, ftol: float = 1e-7,
           maxls: int = 20, patience: int | None = None, xtol: float = 0.0) -> None:
    """Minimise ``closure()`` over the torch tensors ``params`` with SciPy's L-BFGS-B (torch gradients), and leave
    ``params`` at the lowest loss it evaluated (not evaluated again: the callers read the parameters only).

    The linear stage passes ``ftol=1e-5, maxls=6``: the loss is float32, and tighter settings only spent
    line-search evaluations without moving the answer (TRE unchanged to 0.005 px on 15 pairs, ~30 % less CPU).
    ``patience``: stop once that many evaluations in a row brought no new lowest loss, or one that moved no
    parameter by ``xtol`` or more. Near the optimum of a float32 loss L-BFGS-B's line searches fail on rounding
    noise, and it spends a dozen evaluations restarting before it gives up (:func:`_polish_linear`).
    """
    from scipy.optimize import minimize

    best: list[Any] = [np.inf, None, 0]  # lowest loss, its x, evaluations since it moved by xtol or more

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        if patience is not None and best[2] >= patience:
            raise _Stalled
        if not (np.isfinite(x).all() and np.abs(x).max(initial=0.0) < 1e6):  # a runaway step: refuse it (torch's
            return 1e6, np.zeros_like(x)  # grid_sample backward must never see non-finite coordinates)
        _set_params(params, x)
        for p in params:
            p.grad = None
        loss = closure()
        loss.backward()
        grad = np.concatenate([p.grad.detach().numpy().ravel().astype(np.float64) for p in params])
        value = float(loss.detach())
        if value < best[0]:
            small = best[1] is not None and np.abs(x - best[1]).max() < xtol
            best[:] = [value, x.copy(), best[2] + 1 if small else 0]
        else:
            best[2] += 1
        return value, grad

    x0 = np.concatenate([p.detach().numpy().ravel().astype(np.float64) for p in params])
    opts = {"maxiter": int(iters), "maxfun": 2 * int(iters), "ftol": float(ftol), "maxls": int(maxls)}
    with suppress(_Stalled):
        minimize(fun, x0, jac=True, method="L-BFGS-B", options=opts)
    _set_params(params, x0 if best[1] is None else best[1])  # None: every step was a refused runaway


def _linear_level(lev: Any, a0: np.ndarray, b0: np.ndarray, centre: np.ndarray, model: str, iters: int,
                  min_overlap: float, ftol: float = 1e-5, patience: int | None = None, xtol: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One pyramid level: ``T(x) = A0 (c + Δ (x − c)) + b0 + f τ`` with Δ, τ of the model, by L-BFGS.

    Parameters are scaled so that a unit step moves the level's border by about one level pixel.
    """
    torch = _torch()
    d = a0.shape[0]
    radius = float(np.mean(lev.fshape)) / 2.0
    tau = torch.zeros(d, dtype=torch.float32, requires_grad=True)
    extra = {k: torch.zeros(n, dtype=torch.float32, requires_grad=True) for k, n in _linear_params(model, d).items()}
    big_a, big_b = torch.from_numpy(a0.astype(np.float32)), torch.from_numpy(b0.astype(np.float32))
    c = torch.from_numpy(centre.astype(np.float32))

    def build() -> tuple[Any, Any]:
        delta = torch.eye(d)
        if "rot" in extra:
            delta = torch.linalg.matrix_exp(_skew(extra["rot"] / radius, d))
        if "scale" in extra:
            delta = delta * torch.exp(extra["scale"][0] / radius)
        if "mat" in extra:
            delta = delta + extra["mat"].view(d, d) / radius
        return big_a @ delta, big_a @ (c - delta @ c) + big_b + tau * lev.f

    def closure() -> Any:
        mat, off = build()
        s, ov = lev.similarity(lev.points @ mat.T + off)
        return -s + 10.0 * torch.relu(min_overlap - ov)

    _lbfgs([tau, *extra.values()], closure, iters, ftol=ftol, maxls=6, patience=patience, xtol=xtol)
    with torch.no_grad():
        mat, off = build()
    return mat.double().numpy(), off.double().numpy()


def _optimise_linear(levels: list[_Level], init: LinearTransform, model: str, iterations: Sequence[int],
                     min_overlap: float) -> LinearTransform:
    a0, b0 = init.matrix.copy(), init.offset.copy()
    centre = (np.asarray(levels[-1].fshape) * levels[-1].f - 1) / 2.0
    for lev, iters in zip(levels, iterations, strict=True):
        a0, b0 = _linear_level(lev, a0, b0, centre, model, int(iters), min_overlap)
    kind = model if model in ("translation", "rigid", "similarity") else "affine"
    return LinearTransform(a0, b0, kind)


def _svf(v: Any, shape: tuple[int, ...], f: int, steps: int) -> Any:
    """Displacement (1, d, *S) in level pixels from a velocity on a control grid (full-res px), by squaring."""
    torch = _torch()
    import torch.nn.functional as F

    d = len(shape)
    mode = "bilinear" if d == 2 else "trilinear"
    u = F.interpolate(v, size=shape, mode=mode, align_corners=True) / (f * 2 ** steps)
    base = torch.from_numpy(np.moveaxis(np.indices(shape, dtype=np.float32), 0, -1))[None]
    size = torch.tensor([max(s - 1, 1) for s in shape], dtype=torch.float32)
    for _ in range(steps):
        pos = base + torch.movedim(u, 1, -1)
        grid = (2.0 * pos / size - 1.0).flip(-1)
        u = u + F.grid_sample(u, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return u


def _optimise_field(levels: list[_Level], lin: LinearTransform, shape: tuple[int, ...], spacing: float,
                    iterations: Sequence[int], smooth: float, grid_f: int, steps: int = 6) -> Any:
    """Velocity field on a control grid every ``spacing`` pixels (full-res px), level by level, by L-BFGS.

    The field is integrated (scaling and squaring) on the grid downsampled by ``grid_f`` and read at each
    level's pixels by linear interpolation — as :func:`_full_field` reads it at every pixel — so the fitted
    field is the returned one. (Until session 10 it was integrated at each level's resolution: slower, and
    label Dice 0.986 instead of 0.989 on the 10 deformable benchmark pairs.)"""
    torch = _torch()
    d = lin.ndim
    cg = tuple(math.ceil((s - 1) / spacing) + 1 for s in shape)
    v = torch.zeros((1, d, *cg), dtype=torch.float32, requires_grad=True)
    big_a = torch.from_numpy(lin.matrix.astype(np.float32))
    big_b = torch.from_numpy(lin.offset.astype(np.float32))
    gshape = tuple(max(1, s // grid_f) for s in shape)

    def loss(lev: _Level, at_points: _PointInterpolation) -> Any:
        u = _svf(v, gshape, grid_f, steps)  # px of the integration grid
        x = lev.points + at_points(u).view(*lev.points.shape) * grid_f
        s, _ = lev.similarity(x @ big_a.T + big_b)
        reg = sum(((v.diff(dim=2 + ax) / spacing) ** 2).mean() for ax in range(d))
        return -s + smooth * reg

    for lev, iters in zip(levels, iterations, strict=True):
        pts = lev.points.numpy().reshape(-1, d).astype(np.float64)
        at_points = _PointInterpolation((pts - (grid_f - 1) / 2.0) / grid_f, gshape)
        _lbfgs([v], partial(loss, lev, at_points), iters)
    return v.detach()


def _polish_field(fixed: np.ndarray, moving: np.ndarray, v0: Any, lin: LinearTransform, spacing: float,
                  f: int, iters: int, smooth: float, steps: int = 6, workers: int = 1) -> Any:
    """The 3-D velocity field, from ``v0``, on the mutual information of the raw intensities at the polish's
    full-resolution sample points (:class:`_PolishLevel`), plus ``smooth`` × the diffusion regulariser; the
    field is integrated (scaling and squaring) on the grid downsampled by ``f`` and interpolated at the
    points. On the MNI152 T1 / T2-like pair it lifted label Dice from 0.84 (structure channels at half
    resolution, the earlier 3-D field) to 0.93 in the same time."""
    torch = _torch()

    d = lin.ndim
    pl = _PolishLevel(fixed, moving, int(FIELD_3D["points"]), int(FIELD_3D["bins"]), workers, fixed_window="bspline")
    lshape = tuple(max(1, s // f) for s in fixed.shape)
    at_points = _PointInterpolation(((pl.points.numpy() - (f - 1) / 2.0) / f).astype(np.float64), lshape)
    v = v0.clone().requires_grad_(True)
    big_a = torch.from_numpy(lin.matrix.astype(np.float32))
    big_b = torch.from_numpy(lin.offset.astype(np.float32))

    def loss() -> Any:
        u = _svf(v, lshape, f, steps)  # level px
        up = at_points(u)
        s, _ = pl.similarity((pl.points + up * f) @ big_a.T + big_b)
        reg = sum(((v.diff(dim=2 + ax) / spacing) ** 2).mean() for ax in range(d))
        return -s + smooth * reg

    _lbfgs([v], loss, iters)
    return v.detach()


class _PointInterpolation:
    """Linear interpolation of a (1, C, *L) grid at fixed points (level pixel coordinates, clamped to the grid
    as ``grid_sample``'s border padding does) → (N, C), as a sparse matrix (2^d weights per point) built once.

    Written here because the points never move while the field is fitted: a SciPy CSR product and its
    transpose (forward, backward) take 7 ms for 2¹⁷ points where ``grid_sample`` and its backward take 29."""

    def __init__(self, points: np.ndarray, shape: tuple[int, ...]) -> None:
        import scipy.sparse as sp

        n, d = points.shape
        hi = np.asarray(shape, dtype=np.float64) - 1
        c = np.clip(points, 0, hi)
        lo = np.minimum(np.floor(c).astype(np.int64), np.maximum(np.asarray(shape) - 2, 0))
        frac = c - lo
        rows, cols, vals = [], [], []
        for corner in itertools.product((0, 1), repeat=d):
            w = np.prod([frac[:, k] if b else 1.0 - frac[:, k] for k, b in enumerate(corner)], axis=0)
            idx = np.minimum(lo + np.asarray(corner), np.asarray(shape) - 1)
            rows.append(np.arange(n))
            cols.append(np.ravel_multi_index(tuple(idx.T), shape))
            vals.append(w)
        m = sp.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n, int(np.prod(shape))))
        self.matrix, self.transpose, self.shape = m, m.T.tocsr(), tuple(shape)

    def __call__(self, grid: Any) -> Any:
        return _sparse_rows_function().apply(grid.reshape(grid.shape[1], -1), self)


@lru_cache(maxsize=1)
def _sparse_rows_function() -> Any:
    """The autograd function of :class:`_PointInterpolation` (defined on first use: torch loads lazily)."""
    torch = _torch()

    class SparseRows(torch.autograd.Function):
        """``W @ x.T`` for a fixed SciPy sparse ``W`` (the :class:`_PointInterpolation`), with its backward."""

        @staticmethod
        def forward(ctx: Any, x: Any, interp: _PointInterpolation) -> Any:
            ctx.interp = interp
            return torch.from_numpy(np.asarray(interp.matrix @ x.detach().numpy().T, dtype=np.float32))

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            gx = ctx.interp.transpose @ g.detach().numpy()
            return torch.from_numpy(np.ascontiguousarray(gx.T, dtype=np.float32)), None

    return SparseRows


def _full_field(v: Any, shape: tuple[int, ...], steps: int = 6, f: int = 1) -> np.ndarray:
    """The displacement (d, *shape) in pixels: ``v`` integrated on the grid downsampled by ``f`` — the grid the
    field was fitted on (:func:`_polish_field`) — and interpolated linearly at every pixel, as the fit saw it
    at its sample points (clamped at the border). ``f = 1``: integrated at full resolution."""
    torch = _torch()
    import torch.nn.functional as F

    with torch.no_grad():
        if f == 1:
            return _svf(v, shape, 1, steps)[0].numpy()
        lshape = tuple(max(1, s // f) for s in shape)
        u = _svf(v, lshape, f, steps)  # level pixels
        axes = [torch.clamp((torch.arange(n, dtype=torch.float32) - (f - 1) / 2.0) / f, 0, m - 1)
                / max(m - 1, 1) * 2 - 1 for n, m in zip(shape, lshape, strict=True)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).flip(-1)[None]
        mode = "bilinear"  # trilinear for a 5-D input
        out = F.grid_sample(u, grid, mode=mode, padding_mode="border", align_corners=True)
        return (out[0] * f).numpy()


# --- the public function ----------------------------------------------------------------------------------------
def _factors(shape: tuple[int, ...], size: int) -> int:
    return max(1, math.ceil(max(shape) / float(size)))


def _pyramid(shape: tuple[int, ...], coarse_f: int, fine_size: int, full: bool = True) -> list[int]:
    """Downsampling factors of the fine step: the finest (longer side ``fine_size``; full resolution for images
    up to twice that if ``full``, where it costs little and the optimum gains most) and, if still finer than
    the coarse search, twice that."""
    fmin = 1 if full and max(shape) <= 2 * fine_size else _factors(shape, fine_size)
    return [2 * fmin, fmin] if 2 * fmin < coarse_f else [fmin]


#: Models whose answer is the midpoint of the two directions when they agree (:func:`_midpoint`, ``_register``).
MIDPOINT_MODELS = ("rigid", "similarity", "affine")


def _midpoint(a: LinearTransform, b: LinearTransform) -> LinearTransform:
    """The transform halfway between two of the same kind: ``a ∘ (a⁻¹ ∘ b)^½`` (the principal square root of
    homogeneous matrices: half the rotation, scale and shear of the difference, so rigid stays rigid)."""
    from scipy.linalg import sqrtm

    d = a.ndim

    def hom(t: LinearTransform) -> np.ndarray:
        h = np.eye(d + 1)
        h[:d, :d], h[:d, d] = t.matrix, t.offset
        return h

    ha = hom(a)
    m = ha @ np.real(sqrtm(np.linalg.solve(ha, hom(b))))
    return LinearTransform(m[:d, :d], m[:d, d], a.kind)


def _mean_point_error(fwd: LinearTransform, rev: LinearTransform, shape: tuple[int, ...],
                      moving_shape: tuple[int, ...]) -> float:
    """Mean |T(x) − R⁻¹(x)| over a grid of fixed points that land inside the moving image."""
    axes = [np.linspace(0, s - 1, 9) for s in shape]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    a, b = fwd.map_points(pts), rev.inverse().map_points(pts)
    inside = np.all((a >= 0) & (a <= np.asarray(moving_shape) - 1), axis=1)
    if not inside.any():
        return float("inf")
    return float(np.linalg.norm(a - b, axis=1)[inside].mean())


#: 3-D rotation search: grid step (degrees) over SO(3), how many of its best rotations (at twice the coarse
#: factor) go on to the coarse level, and how far apart (degrees) those must be. A 40° grid (235 rotations)
#: found what the 30° one (553) did — 10 MNI152 T1 / T2-like affine pairs at random rotations up to 180° and
#: scales 0.85–1.2, 5 rigid ones at 45–160°, the 3-D benchmark pairs, the oblique-crop test — in 10–25 % less
#: time (session 9).
ROTATION_STEP_3D, ROTATION_KEEP_3D, ROTATION_SEPARATION_3D = 40.0, 6, 25.0


def _search_rotations_3d(fixed: _Pyramid, moving: _Pyramid, fc: int, opts: dict[str, Any]) -> list[np.ndarray]:
    """The best few rotations of an SO(3) grid (:func:`_rotation_grid_3d`), each with its best translation, on
    a copy twice as coarse as the coarse search's (so a full grid costs about what 70 candidates do there)."""
    grid = _rotation_grid_3d(ROTATION_STEP_3D, opts["angle_range"])
    ranked = _coarse_candidates(fixed, moving, 2 * fc, grid, opts["min_overlap"], batch=8,
                                workers=opts.get("workers", 1))
    keep: list[np.ndarray] = []
    cos_sep = math.cos(np.deg2rad(ROTATION_SEPARATION_3D))
    for _, t in ranked:
        # rotation angle between candidates: trace(R_a^T R_b) = 1 + 2 cos(angle)
        if all((np.trace(k.T @ t.matrix) - 1) / 2 < cos_sep for k in keep):
            keep.append(t.matrix)
        if len(keep) == ROTATION_KEEP_3D:
            break
    return keep


#: Coarse hypotheses refined locally before one is chosen, per dimension: at most ``HYPOTHESES`` distinct ones
#: (matrices at least ``HYPOTHESIS_DISTANCE`` apart, Frobenius norm: a 15° rotation or a 0.8 scale step is
#: ~0.3), each scoring at least ``HYPOTHESIS_RATIO`` × the best. 2-D, since session 13: the best 5, however far
#: behind the best they score. With at most 3 within 0.9 of the best, a repetitive nuclei pair (rigid, −7.9°,
#: halfway between two grid angles, 0° and −15° scoring 0.28 and 0.31 against 0.35 for a 165° rotation at 30 %
#: overlap) had its right basin never refined (TRE 417 px; ANTs solved it), and with the finer scale grid
#: (:data:`SCALES`) a zoomed-out ssTEM pair's right candidate ranked 5th among near-noise scores (0.17–0.19;
#: TRE 422 px); 4, 5 and 6 all solve the four pairs that failed, 5 is kept for margin. 3-D keeps 3 within 0.9:
#: each 3-D hypothesis ranks 19 rotations on ~24³ copies (with 5 and five scales the 3-D affine took 2.4 →
#: 4.3 s), no 3-D pair needed more, and refining all 3 moved the 3-D deformable answers' start (same
#: rotations) and their TRE 1.83 / 2.13 / 1.12 → 2.02 / 2.20 / 1.12 voxels (seeds 0–2).
HYPOTHESES, HYPOTHESIS_RATIO, HYPOTHESIS_DISTANCE = {2: 5, 3: 3}, {2: 0.0, 3: 0.9}, 0.25


def _refine_hypotheses(fixed: _Pyramid, moving: _Pyramid, fc: int, ranked: list[tuple[float, LinearTransform]],
                       local: list[np.ndarray], min_overlap: float, workers: int) -> LinearTransform:
    """The coarse answer: the best few distinct candidates of the grid search (``ranked``), each refined over
    the ``local`` perturbations at the coarse level, then ranked again — with their best translation — at a
    level twice as fine. One grid winner by a small margin at a very coarse level is not trusted: a 48³ crop
    is ~10 voxels wide there, and a 176° candidate beat the right one (22°) by 0.011 (it scores 0.32 against
    0.49 after refinement, one level finer)."""
    d = fixed.ndim
    hyps: list[np.ndarray] = []
    for v, t in ranked:
        if v < HYPOTHESIS_RATIO[d] * ranked[0][0] or len(hyps) == HYPOTHESES[d]:
            break
        if all(np.linalg.norm(t.matrix - h) >= HYPOTHESIS_DISTANCE for h in hyps):
            hyps.append(t.matrix)
    cands = [h @ q for h in hyps for q in local]
    best_of: dict[int, LinearTransform] = {}
    for _, i, t in _coarse_ranked(fixed, moving, fc, cands, min_overlap, workers=workers):
        best_of.setdefault(i // len(local), t)  # best first: the first seen of a hypothesis is its best
    winners = [best_of[k] for k in sorted(best_of)]
    if len(winners) <= 1:
        return winners[0] if winners else ranked[0][1]
    f2 = max(1, math.ceil(fc / 2))
    final = _coarse_candidates(fixed, moving, f2, [w.matrix for w in winners], min_overlap, workers=workers)
    return final[0][1] if final else winners[0]


#: 3-D coarse search with several scales: every rotation at the scale nearest 1, the others only for this many
#: of the best rotations.
SCALED_ROTATIONS_3D = 3


def _scaled_candidates_3d(fixed: _Pyramid, moving: _Pyramid, fc: int, rots: list[np.ndarray],
                          scales: Sequence[float], min_overlap: float, workers: int
                          ) -> list[tuple[float, LinearTransform]]:
    """:func:`_coarse_candidates` of ``scale × rotation`` in two rounds: every rotation at the scale nearest 1,
    then the other scales for the :data:`SCALED_ROTATIONS_3D` best rotations; both rounds ranked together.
    The SO(3) search ranks rotations at scale 1 alone, and a blurred coarse volume at a scale off by 20 %
    still ranks its rotations as at the right one, so the full product (33 candidates on the MNI152 pair,
    six structure-tensor channels of ~50³ FFTs each) spent half its time on scales of wrong rotations."""
    s0 = min(scales, key=lambda s: abs(math.log(s)))
    first = _coarse_ranked(fixed, moving, fc, [s0 * r for r in rots], min_overlap, workers=workers)
    best: list[int] = []
    for _, i, _t in first:
        if i not in best:
            best.append(i)
        if len(best) == SCALED_ROTATIONS_3D:
            break
    others = [s * rots[i] for i in best for s in scales if s != s0]
    second = _coarse_ranked(fixed, moving, fc, others, min_overlap, workers=workers) if others else []
    both = sorted([(v, 0, i, t) for v, i, t in first] + [(v, 1, i, t) for v, i, t in second],
                  key=lambda h: (-h[0], h[1], h[2]))
    return [(v, t) for v, _, _, t in both]


class _NoOverlap(ValueError):
    """No candidate transform keeps ``min_overlap`` (a one-line error for the call; for the consistency
    check's reverse registration, an answer it cannot confirm)."""


def _reverse_overlap(min_overlap: float, fixed_shape: tuple[int, ...], moving_shape: tuple[int, ...]) -> float:
    """The reverse registration's ``min_overlap``: the forward's, as a fraction of the *moving* image. A 48³
    crop of a 98 × 116 × 94 volume covers 10 % of it at best, so the reverse asked for 25 % found nothing and the
    call failed with "no transform keeps min_overlap" — from a check the caller never asked about."""
    return float(min_overlap) * min(1.0, float(np.prod(fixed_shape)) / float(np.prod(moving_shape)))


def _linear_stage(fixed: _Pyramid, moving: _Pyramid, model: str, opts: dict[str, Any]
                  ) -> tuple[LinearTransform, LinearTransform, list[_Level]]:
    """Coarse search, structure levels and polish: (coarse answer, linear answer, levels).

    In 3-D the rotations of ``opts["shortlist_3d"]`` (the SO(3) search's, :func:`_search_rotations_3d`, done
    once per registration: the consistency check passes them transposed, and the reverse ranks them in its own
    direction) compete with the identity and the principal axes. ``opts["candidates"]``, if given, replaces
    the whole candidate set (the check's second opinion)."""
    d = fixed.ndim
    lin_model = "affine" if model == "deformable" else model
    fc = _factors(tuple(max(a, b) for a, b in zip(fixed.shape, moving.shape, strict=True)), opts["coarse_size"])
    scales = (1.0,) if lin_model in ("translation", "rigid") else tuple(opts["scales"])
    if opts.get("candidates") is not None:
        mats = [np.asarray(m, dtype=np.float64) for m in opts["candidates"]]
    else:
        if d == 2:
            rots = _rotations_2d(0 if model == "translation" else opts["angle_range"], opts["angle_step"])
        else:
            rots = [np.eye(3)] if model == "translation" else _rotations_3d(fixed.img, moving.img)
            rots += list(opts.get("shortlist_3d") or ())
        mats = _distinct([s * r for s in scales for r in rots])
    workers = opts.get("workers", 1)
    if d == 3 and len(scales) > 1 and opts.get("candidates") is None:
        ranked = _scaled_candidates_3d(fixed, moving, fc, _distinct(rots), scales, opts["min_overlap"], workers)
    else:
        ranked = _coarse_candidates(fixed, moving, fc, mats, opts["min_overlap"], workers=workers)
    if not ranked:
        raise _NoOverlap(f"no transform keeps min_overlap={opts['min_overlap']:g} of the fixed image covered")
    coarse = ranked[0][1]
    if len(mats) > 1 and opts.get("refine", True):
        if d == 3:  # local refinement: ± a third of the grid step
            local = _local_rotations_3d(ROTATION_STEP_3D / 3.0)
        else:  # a third of the angle step, ±6 % scale
            step = np.deg2rad(opts["angle_step"]) / 3.0
            fine_scales = (1.0,) if len(scales) == 1 else (0.94, 1.0, 1.0 / 0.94)
            local = [k * r for k in fine_scales for r in (np.eye(2), *(_rot2(a) for a in (-step, step)))]
        coarse = _refine_hypotheses(fixed, moving, fc, ranked, local, opts["min_overlap"], workers)
    feats, fw = opts.get("feats"), opts.get("feature_weight", 0.0)
    # in 3-D the full-resolution structure level is the costliest part of the fit; the mutual-information
    # polish (full resolution, sampled points) does its job for a fraction of the time
    full = d == 2 or not opts.get("polish") or lin_model == "translation"
    levels = [_Level(fixed, moving, f, feats, fw) for f in _pyramid(fixed.shape, fc, opts["fine_size"], full)]
    iters = _iterations(len(levels), opts["iterations"])
    lin = _optimise_linear(levels, coarse, lin_model, iters, opts["min_overlap"])
    if opts.get("polish") and lin_model != "translation":
        lin = _polish_linear(fixed, moving, lin, lin_model, opts["min_overlap"], levels[-1].f,
                             opts.get("polish_points"), opts.get("polish_workers", 1))
    return coarse, lin, levels


#: Default coarse scale candidates (``register(scales=None)``) per dimension. 2-D: 0.8–1.25 in steps of
#: √1.25 ≈ 1.118. Until session 13 the grid was 0.8 / 1.0 / 1.25, and a warped MRI pair whose true scales
#: (0.85 / 0.92) sat halfway between two of them was solved by none of its candidates (2-D deformable seed 7,
#: ±30°: TRE 111 px in T1 and T1 vs T2-like, flagged unreliable; ANTs SyN solved the T1 pair); with five,
#: 2.9 px (the warp's part) and reliable — for ~0.02 s more per direction (120 candidates instead of 72).
#: 3-D keeps three: there the other scales are tried for the 3 best rotations only (:func:`_scaled_candidates_3d`).
SCALES = {2: (0.8, 0.894, 1.0, 1.118, 1.25), 3: (0.8, 1.0, 1.25)}

#: Scales the 2-D consistency check always searches (besides the call's).
REVERSE_SCALES = SCALES[2]

#: Last linear refinement (:func:`_polish_linear`): sample points (at most, per dimension), histogram bins,
#: L-BFGS iterations, and the largest mean point move (pixels) accepted from the structure-channel answer.
#: ``patience`` and ``xtol``: :func:`_lbfgs` stops after 3 evaluations without a new best that moved a parameter
#: (~ a pixel at the border per unit) by 0.002 or more — on 12 2-D affine pairs (T1 vs T2-like, T1, ssTEM; cubic)
#: 161 → 101 evaluations, every forward answer within 0.001 px of what the 30 iterations reached (session 12).
POLISH: dict[str, Any] = {"points": {2: 1 << 15, 3: 1 << 16}, "bins": 48, "iterations": 30, "max_move": 1.0,
                          "patience": 3, "xtol": 0.002}

#: The 3-D velocity field (:func:`_polish_field`): sample points and default L-BFGS iterations. Measured on the
#: MNI152 T1 / T2-like pairs of seeds 0–2 (docs/benchmarks.md, sixth round): 2¹⁶ points × 20 iterations fit
#: in 2.2 s what 2¹⁷ × 40 did in 6.0 s, label Dice 0.931–0.938 instead of 0.934–0.940 (SyN 0.906 on seed 0);
#: with the returned field interpolated from the fitted grid (:func:`_full_field`), 0.948–0.953, and 40
#: iterations (3.8 s) add nothing (0.949 / 0.951 on seeds 0 / 2). Integrated on a grid every ``grid_spacing``
#: voxels (8: as fine as the control grid; it was a quarter of the volume's size, ~4 voxels): 0.3–0.5 s less,
#: and Dice 0.949 / 0.953 / 0.952 → 0.956 / 0.959 / 0.960, TRE lower on all three (session 10). Squarings: 4
#: (the largest displacement, ~3 voxels, is under half a grid pixel, so each of 2⁴ steps moves < 0.03 of one).
#: Histogram bins: 32 (ANTs' default; the linear polish keeps 48): TRE 1.926 / 2.202 / 1.111 → 1.876 / 2.190 /
#: 1.077 voxels, Dice 0.9550 / 0.9584 / 0.9592 → 0.9560 / 0.9582 / 0.9626 (24 bins: between; session 10).
FIELD_3D: dict[str, int] = {"points": 1 << 16, "iterations": 20, "squarings": 4, "bins": 32}


class _PolishLevel:
    """Full-resolution mutual information of the raw intensities at a fixed random set of fixed-grid points
    (the :func:`_linear_level` interface: ``f``, ``fshape``, ``points``, ``similarity``).

    The points are split into :data:`POLISH_PARTS` parts, whose joint histograms add up to the whole one; with
    ``workers`` > 1 the parts are sampled, binned and differentiated on threads (:func:`_split_mi_function`).
    The split is the same whatever ``workers`` is, so the answer does not depend on it.

    ``fixed_window``: the fixed intensities' Parzen window, ``"box"`` (one bin, as ITK's Mattes metric; each
    point a 1 × 4 histogram block) or ``"bspline"`` (cubic, 4 × 4). The linear polish uses the box — MI forward
    and backward 13 → 9 ms on 25 k points, and on the three MNI152 T1 / T2-like affine pairs TRE 0.053 / 0.080 /
    0.045 → 0.041 / 0.051 / 0.043 voxel; the 3-D field the cubic one (label Dice 0.001–0.002 higher for
    0.2 s more; session 10)."""

    def __init__(self, fixed: np.ndarray, moving: np.ndarray, n_points: int, bins: int, workers: int = 1,
                 fixed_window: str = "box") -> None:
        torch = _torch()
        from .mutual_information import box_window, bspline_window, stack_with_gradient

        self.f, self.fshape, self.mshape, self.bins = 1, fixed.shape, moving.shape, bins
        self.workers = max(1, int(workers))
        inner = tuple(slice(1, s - 1) for s in fixed.shape)
        idx = np.moveaxis(np.indices(fixed.shape, dtype=np.float32), 0, -1)[inner].reshape(-1, fixed.ndim)
        if len(idx) > n_points:
            idx = idx[np.sort(np.random.default_rng(0).choice(len(idx), n_points, replace=False))]
        self.points = torch.from_numpy(idx)
        vals = torch.from_numpy(fixed[tuple(idx.astype(np.int64).T)].astype(np.float32))
        cuts = np.linspace(0, len(idx), POLISH_PARTS + 1).astype(int)
        self.parts = [slice(int(i), int(j)) for i, j in itertools.pairwise(cuts)]
        window = box_window if fixed_window == "box" else bspline_window
        self.windows = [window(vals[p], bins) for p in self.parts]
        mov = torch.from_numpy(moving)[None, None]
        self.mov = stack_with_gradient(mov, _gradients(mov))

    def part(self, k: int, y: Any) -> tuple[Any, tuple[Any, ...]]:
        """Part ``k``'s joint histogram at its points' moving-image coordinates ``y`` (the part's rows, plain
        tensors), and what :meth:`part_gradient` needs of them."""
        from .mutual_information import bspline_window_slope, joint_histogram, sample_value_and_slope

        inside = _inside(y, self.mshape, 0.0)
        val, slope = sample_value_and_slope(self.mov, y)
        mi_, mw, mdw = bspline_window_slope(val, self.bins)
        return joint_histogram(self.windows[k], (mi_, mw), inside, self.bins), (mi_, mw, mdw, slope, inside)

    def part_gradient(self, k: int, gradient: Any, saved: tuple[Any, ...]) -> Any:
        """Derivative of the mutual information with respect to part ``k``'s coordinates (rows, d), given the
        derivative ``gradient`` with respect to the whole joint histogram."""
        from .mutual_information import point_gradient

        mi_, mw, mdw, slope, inside = saved
        return point_gradient(gradient, self.windows[k], (mi_, mw, mdw), inside)[:, None] * slope

    def similarity(self, y: Any) -> tuple[Any, Any]:
        return _split_mi_function().apply(y, self)


#: Parts of the polish's sample points (:class:`_PolishLevel`): one per thread of a two-core machine.
POLISH_PARTS = 2


@lru_cache(maxsize=1)
def _split_mi_function() -> Any:
    """The autograd function of :meth:`_PolishLevel.similarity`: mutual information of the summed joint
    histograms of the level's parts, each part's histogram (forward) and its gradient (backward) on its own
    thread. Written here because one autograd graph runs its backward on one thread: after the consistency
    check's reverse registration is done, the full-resolution polish — the costliest part of a 3-D
    registration — would keep one core of two busy. The gradient is written out
    (:func:`~neuros.plugins.cv.mutual_information.point_gradient`), not autograd's: the graph of the ~40
    small operations per point set cost more than they did (session 11: one evaluation on 4 096 points of a
    2-D slice 6.6 → 4.4 ms, on 25 k points 12.7 → 9.7 ms), and it is equal to autograd's (tested)."""
    torch = _torch()

    class SplitMI(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, y: Any, lev: _PolishLevel) -> Any:
            from .mutual_information import histogram_gradient

            y = y.detach()
            parts = _map_threads(lambda k: lev.part(k, y[lev.parts[k]]), range(len(lev.parts)), workers=lev.workers)
            mi, grad = histogram_gradient(sum(j for j, _ in parts))
            ctx.saved, ctx.grad, ctx.lev = [s for _, s in parts], grad, lev
            overlap = sum(s[-1].sum() for _, s in parts) / len(y)  # the parts' inside masks: the overlap
            ctx.mark_non_differentiable(overlap)
            return mi, overlap

        @staticmethod
        def backward(ctx: Any, g: Any, _: Any) -> Any:
            lev = ctx.lev
            gy = torch.cat(_map_threads(lambda k: lev.part_gradient(k, ctx.grad, ctx.saved[k]),
                                        range(len(ctx.saved)), workers=lev.workers))
            return gy * g, None

    return SplitMI


def _polish_linear(fixed: _Pyramid, moving: _Pyramid, lin: LinearTransform, model: str, min_overlap: float,
                   finest: int = 1, points: int | None = None, workers: int = 1) -> LinearTransform:
    """The linear answer refined at full resolution on the mutual information of the raw intensities (Mattes
    et al., IEEE TMI 2003: the similarity ANTs and elastix optimise) — the structure channels find the
    answer from far away and across contrasts, the intensities pin it down to a few hundredths of a pixel.
    Kept only if it moves the fixed grid's points by at most ``POLISH["max_move"]`` pixels of the finest
    structure level (downsampled by ``finest``) on average: a refinement, never a different answer."""
    n = int(points) if points else int(POLISH["points"][fixed.ndim])
    lev = _PolishLevel(fixed.img, moving.img, n, int(POLISH["bins"]), workers)
    centre = (np.asarray(fixed.shape, dtype=np.float64) - 1) / 2.0
    a, b = _linear_level(lev, lin.matrix, lin.offset, centre, model, int(POLISH["iterations"]), min_overlap,
                         patience=int(POLISH["patience"]), xtol=float(POLISH["xtol"]))
    new = LinearTransform(a, b, lin.kind)
    axes = [np.linspace(0, s - 1, 9) for s in fixed.shape]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, fixed.ndim)
    move = float(np.linalg.norm(new.map_points(pts) - lin.map_points(pts), axis=1).mean())
    return new if np.isfinite(move) and move <= POLISH["max_move"] * max(1, finest) else lin


def _iterations(n: int, spec: int | Sequence[int]) -> list[int]:
    if isinstance(spec, int):
        return [int(spec)] * n
    out = list(spec)
    if len(out) < n:
        out = [out[0]] * (n - len(out)) + out
    return out[-n:]


def register(
    fixed: Any,
    moving: Any,
    model: str = "affine",
    backbone: Any = None,
    *,
    min_overlap: float = 0.25,
    angle_range: float = 180.0,
    angle_step: float = 15.0,
    scales: Sequence[float] | None = None,
    coarse_size: int | None = None,
    fine_size: int | None = None,
    iterations: int | Sequence[int] = 30,
    grid_spacing: float = 8.0,
    smooth: float = 1.0,
    deformable_iterations: int | Sequence[int] | None = None,
    check_consistency: bool = True,
    channel_axis: int | None = None,
    weights: str | None = None,
    feature_weight: float = 0.5,
    polish: bool = True,
    workers: int | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed``: a transform from fixed-grid coordinates to moving-image coordinates.

    Parameters
    ----------
    fixed, moving : array_like
        2-D images or 3-D volumes (both the same dimension; shapes may differ). The answer lies on the fixed
        image's grid: ``result.apply(moving)`` has ``fixed``'s shape.
    model : {"translation", "rigid", "similarity", "affine", "deformable"}
    backbone : Backbone, str or None
        2-D only: also compare the backbone's patch features (unit-normalised, bilinearly upsampled, warped
        with the moving image) in the fine step, weighted ``feature_weight`` against the structure channels.
        Default ``None``: structure channels only — the features available offline here (placeholder,
        random or tiny models) carry nothing a registration can use; pretrained DINOv3 features are the
        point of the option (DINO-Reg, MICCAI 2024). The coarse search always uses the structure channels.
    min_overlap : float
        Smallest fraction of the fixed grid that must see the moving image (search constraint, optimisation
        penalty, and a condition of ``reliable``).
    angle_range, angle_step : float
        Degrees: the 2-D coarse rotation search covers ``±angle_range`` in steps of ``angle_step``.
    scales : sequence of float, optional
        Coarse scale candidates for ``similarity``/``affine``/``deformable`` (default: :data:`SCALES` of the
        images' dimension).
    coarse_size : int, optional
        Longer side (pixels) of the downsampled copy used by the global search. Default 48 in 2-D, 24 in 3-D.
    fine_size : int, optional
        Longer side of the finest optimisation level of the linear stage; images up to twice this size are
        optimised at full resolution. Default 128 in 2-D (the optimum is then within ~0.05 px on 512²
        same-contrast pairs, sub-pixel interpolation does the rest, and the cost no longer grows with the
        image), 32 in 3-D (the mutual-information polish does the rest: a 64 level cost ~1 s and did not
        lower the TRE on three MNI152 pairs).
        The deformable stage runs on two levels in 2-D, the finest at ``4 × fine_size`` (full resolution
        up to 512²); in 3-D on one, mutual information at full-resolution sample points with the field
        integrated on a grid every ``grid_spacing`` voxels (the control grid's resolution).
    iterations : int or sequence of int
        L-BFGS iterations per pyramid level (coarse to fine).
    grid_spacing : float
        Control-point spacing of the deformable velocity field, in fixed-image pixels.
    smooth : float
        Weight of the diffusion regulariser of the velocity field.
    deformable_iterations : int or sequence of int
        L-BFGS iterations per level for the velocity field (3-D: the last value). Default 40 in 2-D,
        ``FIELD_3D["iterations"]`` (20) in 3-D.
    check_consistency : bool
        Also register ``fixed`` to ``moving`` (the linear stage) and report the mean point distance. For
        ``rigid`` / ``similarity`` / ``affine`` (with ``polish``) whose two directions agree within the
        consistency limit, the answer is the midpoint of the two (:func:`_midpoint`): the directions' biases
        cancel.
    channel_axis : int, optional
        Average this axis of both inputs first (colour images).
    weights : str, optional
        Passed to ``get_backbone`` when ``backbone`` is a name.
    feature_weight : float
        Weight of the backbone-feature similarity (0–1) when ``backbone`` is given.
    polish : bool
        Refine the linear answer at full resolution on the mutual information of the intensities
        (:func:`_polish_linear`; kept only if it moves the answer by at most ``POLISH["max_move"]`` px). Not
        before the 2-D deformable field, which absorbs the sub-pixel remainder itself.
    workers : int, optional
        Threads for the independent parts: the consistency check's reverse registration runs beside the
        forward one (and the deformable stage), the coarse search's candidates and the polish's sample points
        are split between threads.
        Default: the CPUs this process may use, at most :data:`MAX_WORKERS`. The answer does not depend on it.

    Returns
    -------
    Registration

    Raises
    ------
    ValueError
        Unknown model, inputs of different dimension, NaN/inf, too small, or no transform keeps
        ``min_overlap``.
    """
    torch = _torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster, and it never spins against other work
    try:
        with _one_blas_thread():
            return _register(fixed, moving, model, backbone, min_overlap, angle_range, angle_step, scales,
                             coarse_size, fine_size, iterations, grid_spacing, smooth, deformable_iterations,
                             check_consistency, channel_axis, weights, feature_weight, polish,
                             _default_workers() if workers is None else max(1, int(workers)))
    finally:
        torch.set_num_threads(threads)


def _register(fixed: Any, moving: Any, model: str, backbone: Any, min_overlap: float, angle_range: float,
              angle_step: float, scales: Sequence[float] | None, coarse_size: int | None, fine_size: int | None,
              iterations: int | Sequence[int], grid_spacing: float, smooth: float,
              deformable_iterations: int | Sequence[int] | None, check_consistency: bool,
              channel_axis: int | None, weights: str | None, feature_weight: float, polish: bool,
              workers: int) -> Registration:
    t0 = time.perf_counter()
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if not 0 < float(min_overlap) <= 1:
        raise ValueError(f"min_overlap must be a fraction in (0, 1], got {min_overlap}")
    f_img, m_img = _as_input(fixed, "fixed", channel_axis), _as_input(moving, "moving", channel_axis)
    if f_img.ndim != m_img.ndim:
        raise ValueError(f"fixed is {f_img.ndim}-D {f_img.shape} and moving is {m_img.ndim}-D {m_img.shape}; "
                         "register images of the same dimension")
    feats = _backbone_features(backbone, weights, fixed, moving, f_img, m_img, channel_axis)
    if model == "translation" and f_img.ndim == 2 and f_img.shape == m_img.shape and feats is None:
        return _translation(f_img, m_img, float(min_overlap), check_consistency, t0)
    d = f_img.ndim
    coarse_size = int(coarse_size) if coarse_size is not None else (48 if d == 2 else 24)
    fine_size = int(fine_size) if fine_size is not None else (128 if d == 2 else 32)
    scales = SCALES[d] if scales is None else tuple(float(s) for s in scales)
    if deformable_iterations is None:
        deformable_iterations = 40 if d == 2 else FIELD_3D["iterations"]
    opts = {"min_overlap": float(min_overlap), "angle_range": float(angle_range),
            "angle_step": float(angle_step), "scales": scales, "coarse_size": int(coarse_size),
            "fine_size": fine_size, "iterations": iterations, "feats": feats,
            "feature_weight": float(feature_weight), "polish": bool(polish)}
    f_pyr, m_pyr = _Pyramid(f_img), _Pyramid(m_img)
    if d == 3 and model != "translation" and float(angle_range) > 0:  # the SO(3) search: once, for both directions
        fc = _factors(tuple(max(a, b) for a, b in zip(f_img.shape, m_img.shape, strict=True)), coarse_size)
        opts["shortlist_3d"] = _search_rotations_3d(f_pyr, m_pyr, fc, dict(opts, workers=workers))
    method = f"coarse-search+{'affine' if model == 'deformable' else model}"
    if feats is not None:
        method += f"+{feats[0].backbone}"
    reverse: Callable[[], tuple[LinearTransform, float]] | None = None
    if check_consistency:
        # the reverse registration confirms the answer and, for linear models, is the other half of the midpoint
        # (below): in 2-D a coarser finest structure level (in 3-D the forward's is already 32), half of the
        # polish points (an eighth until session 11: the midpoint then moved same-contrast answers by ~0.005 px;
        # still an eighth for deformable, whose reverse only confirms the affine part)
        share = 2 if model in MIDPOINT_MODELS else 8  # deformable: only a check
        ropts = dict(opts, fine_size=max(32, fine_size // 2), polish_points=POLISH["points"][d] // share,
                     min_overlap=_reverse_overlap(min_overlap, f_img.shape, m_img.shape))
        if d == 2:  # the check searches everything, whatever the call restricted (cheap in 2-D)
            ropts.update(angle_range=180.0, scales=tuple(sorted({*scales, *REVERSE_SCALES})))
        elif opts.get("shortlist_3d"):  # 3-D: the forward SO(3) shortlist re-ranked in reverse
            ropts["shortlist_3d"] = [r.T for r in opts["shortlist_3d"]]
        if d == 3:
            ropts["refine"] = REVERSE_REFINE_3D
        if feats is not None:
            ropts["feats"] = feats[::-1]
        rmodel = "affine" if model == "deformable" else model

        def reverse() -> tuple[LinearTransform, float] | None:
            try:
                _, answer, rlevels = _linear_stage(m_pyr, f_pyr, rmodel, ropts)
            except _NoOverlap:  # nothing to confirm the answer with: inconsistent (infinite), not an error
                return None
            return answer, _evaluate(rlevels[-1], answer)[0]

    if model == "deformable" and d == 2:
        # no linear polish before the 2-D field (the reverse check keeps its own): the field, fitted at full
        # resolution, absorbs the sub-pixel remainder — on the 10 deformable benchmark pairs (five sources ×
        # 2 seeds) median TRE 0.088 → 0.086 px, mean label Dice 0.9888 → 0.9887, 28.4 → 22.9 s (session 10;
        # in 3-D the polish stays: without it TRE 1.80 → 2.37 voxels)
        opts["polish"] = False
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack

    from .forked import ForkedCall, can_fork

    # the reverse runs beside the forward registration (and the deformable stage); the two share the workers.
    # 2-D: in a forked child process — on a thread the two directions' small operations hand the GIL to and
    # fro (two threads were slower than one doing both); 3-D: on a thread — large torch kernels release the
    # GIL, and a child process was measured no faster (3-D affine 7.0 s vs 6.8 s, session 6)
    split = reverse is not None and workers > 1
    opts["workers"] = max(1, workers // 2) if split else workers
    # the polish starts when the reverse (a coarser finest level, half of the points) is nearly done:
    # it takes every worker
    opts["polish_workers"] = workers
    if reverse is not None:
        ropts["workers"], ropts["polish_workers"] = opts["workers"], 1
    with ExitStack() as stack:
        pending: Any = None
        if split and d == 2 and can_fork():
            pending = stack.enter_context(ForkedCall(reverse))
            # and the forward polish on one thread: the child has the other core, and the 2-D polish's 2¹⁵
            # points are too few to gain from a thread that contends for the GIL (12 pairs 5.35 → 5.0 s)
            opts["polish_workers"] = 1
        elif split:
            pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="neuros-register-reverse"))
            pending = pool.submit(reverse)
        coarse, lin, levels = _linear_stage(f_pyr, m_pyr, model, opts)
        folding = 0.0
        v = None
        field_f = 1  # the field's finest grid: the full field is interpolated from it as the fit saw it
        if model == "deformable" and d == 2:
            fd = _factors(f_img.shape, 4 * fine_size)
            dlev = [_Level(f_pyr, m_pyr, f, feats, float(feature_weight))
                    for f in sorted({max(2 * fd, 1), fd}, reverse=True)]
            field_f = max(1, round(float(grid_spacing)))  # integrated on a grid as fine as the control grid's
            v = _optimise_field(dlev, lin, f_img.shape, float(grid_spacing),
                                _iterations(len(dlev), deformable_iterations), float(smooth), field_f)
        elif model == "deformable":  # 3-D: mutual information at full-resolution points (see _polish_field)
            v0 = _torch().zeros((1, d, *(math.ceil((s - 1) / float(grid_spacing)) + 1 for s in f_img.shape)))
            field_f = max(1, round(float(grid_spacing)))  # as in 2-D
            v = _polish_field(f_img, m_img, v0, lin, float(grid_spacing), field_f,
                              _iterations(1, deformable_iterations)[-1], float(smooth), FIELD_3D["squarings"],
                              workers)
        consistency = float("nan")
        limit = _inconsistency_limit(f_img.shape, model)
        rev_answer: LinearTransform | None = None
        if reverse is not None:
            if isinstance(pending, ForkedCall):  # the reverse takes less than the forward registration: a child
                # still silent after twice the forward's time (+ 10 s) is stuck (a lock another thread held at
                # the fork) and is replaced by the reverse run here
                got = pending.result(timeout=2.0 * (time.perf_counter() - t0) + 10.0)
            else:
                got = pending.result() if pending is not None else reverse()
            consistency = float("inf") if got is None else _mean_point_error(lin, got[0], f_img.shape, m_img.shape)
            rev_answer = None if got is None else got[0]
            if not consistency <= limit:
                # a second opinion before calling the answer inconsistent: the reverse registration again, from
                # the inverse of the forward answer's matrix; its own similarity decides which of its two
                # answers it keeps, so a wrong forward answer is confirmed only if the reverse direction's
                # metric prefers it to what its own search found (a zoomed-out ssTEM pair whose padding edge
                # fooled the reverse search had a right answer flagged with consistency 556 px)
                ropts2 = dict(ropts, candidates=[np.linalg.inv(lin.matrix)])
                try:
                    _, rev2, rlevels2 = _linear_stage(m_pyr, f_pyr, rmodel, ropts2)
                except _NoOverlap:
                    rev2 = None
                if rev2 is not None and (got is None or _evaluate(rlevels2[-1], rev2)[0] > got[1]):
                    consistency = _mean_point_error(lin, rev2, f_img.shape, m_img.shape)
                    rev_answer = rev2
        if rev_answer is not None and consistency <= limit and polish and model in MIDPOINT_MODELS:
            # the two directions agree: the answer is their midpoint. Each direction's mutual-information optimum
            # is biased by sampling one image on its grid and interpolating the other (a few hundredths of a
            # pixel, ~0.15 voxel in 3-D), in opposite senses; halfway, the biases cancel (session 11, pairs
            # resampled with a cubic spline: 3-D affine TRE 0.155 / 0.172 / 0.038 → 0.041 / 0.050 / 0.060
            # voxel, ANTs 0.058; 2-D MRI affine median 0.018 → 0.003 px, T1 vs T2-like 0.044 → 0.035)
            lin = _midpoint(lin, rev_answer.inverse())
    transform: Transform = lin
    if v is not None:
        field_ = DisplacementField(_full_field(v, f_img.shape, 6 if d == 2 else FIELD_3D["squarings"], field_f))
        folding = field_.folding_fraction()
        transform = CompositeTransform([field_, lin])
        method += "+svf"
    similarity, overlap = _evaluate(levels[-1], transform)
    score = _confidence(similarity, consistency, limit)
    reasons = _reasons(score, overlap, consistency, float(min_overlap), limit)
    return Registration(transform=transform, model=model, score=score, overlap=overlap, consistency=consistency,
                        reliable=not reasons, fixed_shape=tuple(f_img.shape), moving_shape=tuple(m_img.shape),
                        coarse=coarse, folding_fraction=folding, method=method,
                        seconds=time.perf_counter() - t0, reasons=reasons, similarity=similarity)


def _inconsistency_limit(shape: tuple[int, ...], model: str) -> float:
    """Largest forward/backward inconsistency (pixels) of a reliable answer: :data:`RELIABLE`'s, or for
    ``deformable`` its ``*_deformable`` entries — there the check compares the two directions' *affine* fits
    to a warped pair, which differ by part of the warp even when both are right."""
    key = "_deformable" if model == "deformable" else ""
    return max(RELIABLE["max_inconsistency" + key], RELIABLE["max_inconsistency_fraction" + key] * max(shape))


def _confidence(similarity: float, consistency: float, limit: float) -> float:
    """``score``: the similarity, damped by the forward/backward inconsistency — ``exp(−c / limit)``, the
    limit of :data:`RELIABLE` — so a well-matched answer that the reverse registration does not confirm
    scores low. Without the check (NaN) the similarity alone."""
    if np.isnan(consistency):
        return similarity
    return float(similarity * math.exp(-min(consistency, 1e6) / limit))


def _backbone_features(backbone: Any, weights: str | None, fixed: Any, moving: Any, f_img: np.ndarray,
                       m_img: np.ndarray, channel_axis: int | None) -> tuple[Any, Any] | None:
    """Patch features of both images from ``backbone`` (2-D only), or None."""
    if backbone is None or backbone in ("none", "structure"):
        if weights is not None:
            raise ValueError("weights= needs a backbone name (e.g. backbone='vit-small')")
        return None
    from .registration import resolve_backbone

    bb = resolve_backbone(backbone, weights)
    if f_img.ndim != 2:
        raise ValueError("backbone features are 2-D only; register 3-D volumes with backbone=None")
    raw = [np.asarray(x) if channel_axis is None else np.moveaxis(np.asarray(x), channel_axis, -1)
           for x in (fixed, moving)]
    return bb.extract(raw[0]), bb.extract(raw[1])


def _translation(fixed: np.ndarray, moving: np.ndarray, min_overlap: float, check: bool, t0: float
                 ) -> Registration:
    """Same-shape 2-D translations: :func:`~neuros.plugins.cv.registration.register_translation` (unchanged)."""
    from .registration import register_translation

    t = register_translation(fixed, moving, min_overlap=min_overlap)
    lin = LinearTransform.translation(t.shift)  # moving ≈ roll(fixed, shift): T(x) = x + shift
    consistency = float("nan")
    if check:
        back = register_translation(moving, fixed, min_overlap=min_overlap)
        consistency = float(np.hypot(t.dy + back.dy, t.dx + back.dx))
    reasons = _reasons(t.score, t.overlap, consistency, min_overlap, _inconsistency_limit(fixed.shape, ""))
    return Registration(transform=lin, model="translation", score=t.score, overlap=t.overlap,
                        consistency=consistency, reliable=not reasons, fixed_shape=tuple(fixed.shape),
                        moving_shape=tuple(moving.shape), coarse=LinearTransform.translation(t.coarse),
                        method=f"register_translation:{t.method}", seconds=time.perf_counter() - t0,
                        reasons=reasons)


def _evaluate(level: _Level, transform: Transform) -> tuple[float, float]:
    torch = _torch()
    pts = level.points.reshape(-1, level.points.shape[-1]).double().numpy()
    y = transform.map_points(pts).reshape(*level.points.shape)
    with torch.no_grad():
        s, ov = level.similarity(torch.from_numpy(y.astype(np.float32)))
    return float(np.clip(float(s), 0.0, 1.0)), float(ov)


def _reasons(score: float, overlap: float, consistency: float, min_overlap: float, limit: float) -> list[str]:
    out = []
    if overlap < min_overlap:
        out.append(f"overlap {overlap:.2f} < min_overlap {min_overlap:g}")
    if score < RELIABLE["min_score"]:
        out.append(f"score {score:.2f} < {RELIABLE['min_score']:g}")
    if np.isposinf(consistency):
        out.append("the reverse registration (the consistency check) found no transform to confirm it")
    elif not np.isnan(consistency) and not consistency <= limit:
        out.append(f"forward/backward inconsistency {consistency:.2f} px > {limit:.2f} px")
    return out


# --- stacks -----------------------------------------------------------------------------------------------------
@dataclass
class StackRegistration:
    """Transforms found by :func:`align_stack_models`: ``transforms[i]`` maps section 0's frame to section ``i``."""

    transforms: list[Transform]
    pairs: list[tuple[int, int, Registration]]
    model: str


def _solve_chain(n: int, d: int, pairs: list[tuple[int, int, LinearTransform, float]], shape: tuple[int, ...]
                 ) -> list[LinearTransform]:
    """Least squares over all pair estimates: ``G_j(p) ≈ T_ij(G_i(p))`` on a grid of points, ``G_0 = id``."""
    axes = [np.linspace(0, s - 1, 5) for s in shape]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    npar = d * d + d  # per section (rows of A, then b)
    rows, rhs = [], []

    def design(p: np.ndarray) -> np.ndarray:  # (P*d, npar): G(p) flattened
        out = np.zeros((len(p) * d, npar))
        for k in range(d):
            out[k::d, k * d:(k + 1) * d] = p
            out[k::d, d * d + k] = 1.0
        return out

    dp = design(pts)
    for i, j, t, w in pairs:
        block = np.zeros((len(pts) * d, n * npar))
        block[:, j * npar:(j + 1) * npar] = dp
        # T(G_i p) = M (A_i p + b_i) + c: linear in G_i's parameters
        big = np.kron(np.eye(len(pts)), t.matrix) @ dp
        block[:, i * npar:(i + 1) * npar] -= big
        rows.append(w * block)
        rhs.append(w * np.tile(t.offset, len(pts)))
    # anchor G_0 = identity
    anchor = np.zeros((len(pts) * d, n * npar))
    anchor[:, :npar] = dp * 10.0
    rows.append(anchor)
    rhs.append(10.0 * pts.ravel())
    sol, *_ = np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)
    out = []
    for i in range(n):
        p = sol[i * npar:(i + 1) * npar]
        out.append(LinearTransform(p[: d * d].reshape(d, d), p[d * d:], "affine"))
    return out


def align_stack_models(
    volume: Any,
    model: str = "rigid",
    *,
    neighbours: int = 2,
    order: int = 1,
    progress: Callable[[str], None] | None = None,
    **register_kw: Any,
) -> tuple[np.ndarray, StackRegistration]:
    """Align a serial-section stack with rigid/similarity/affine/deformable transforms, without drift build-up.

    Every section is registered (linear stage) to each of its next ``neighbours`` sections; the per-section
    transforms from section 0's frame are then the least-squares solution of all those pair estimates
    (weighted by score), so one bad pair is outvoted and errors do not simply add up along the chain. With
    ``model="deformable"`` each linearly aligned section is then registered deformably to the mean of its
    aligned neighbours (i − 1, i + 1) — one pass, no chaining of warps.

    Parameters
    ----------
    volume : array_like, (n, H, W)
    model : {"translation", "rigid", "similarity", "affine", "deformable"}
    neighbours : int
        How many following sections each section is registered to (1: plain chaining).
    order : int
        Interpolation order of the aligned output.
    progress : callable, optional
        Called with a short message per pair.
    **register_kw
        Passed to :func:`register`.

    Returns
    -------
    aligned : ndarray, float32 (n, H, W)
    StackRegistration
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (n, H, W), got shape {vol.shape}")
    n = vol.shape[0]
    if n < 2:
        raise ValueError(f"volume has {n} section(s); a stack needs at least two to align")
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    lin_model = "affine" if model == "deformable" else model
    register_kw.setdefault("check_consistency", False)
    pairs = []
    for i in range(n - 1):
        for j in range(i + 1, min(n, i + 1 + max(1, int(neighbours)))):
            r = register(vol[i], vol[j], lin_model, **register_kw)
            pairs.append((i, j, r))
            if progress is not None:
                progress(f"sections {i}→{j}: score={r.score:.2f}")
    lin = _solve_chain(n, 2, [(i, j, r.linear, max(r.score, 1e-3)) for i, j, r in pairs], vol.shape[1:])
    transforms: list[Transform] = [LinearTransform(t.matrix, t.offset, lin_model) for t in lin]
    aligned = np.stack([t.apply(s, vol.shape[1:], order=order) for t, s in zip(transforms, vol, strict=True)])
    if model == "deformable":
        kw = {k: v for k, v in register_kw.items() if k != "check_consistency"}
        new = list(transforms)
        for i in range(n):
            nb = [aligned[j] for j in (i - 1, i + 1) if 0 <= j < n]
            target = np.mean(nb, axis=0)
            r = register(target, aligned[i], "deformable", check_consistency=False, angle_range=0,
                         scales=(1.0,), **kw)
            new[i] = transforms[i] @ r.transform
        transforms = new
        aligned = np.stack([t.apply(s, vol.shape[1:], order=order) for t, s in zip(transforms, vol, strict=True)])
    return aligned, StackRegistration(transforms, pairs, model)
