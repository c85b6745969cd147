"""Translation registration of image pairs and serial-section stacks, coarse to fine, to sub-pixel accuracy.

Shift convention (everywhere in neurOS cv): ``(dy, dx)`` such that
``image_b ≈ np.roll(image_a, (dy, dx), axis=(0, 1))``. Note that
``skimage.registration.phase_cross_correlation(a, b)`` returns the opposite sign.

How :func:`register_translation` works
--------------------------------------
1. **Coarse**, over every allowed shift: either a backbone's patch features (the report's mean-cosine
   diagonal score, computed by the FFT fast path :func:`~neuros.plugins.cv.feature_matching.diagonal_scores`,
   refined to a fraction of a patch), or — with ``backbone=None`` — the contrast-invariant structure channels
   below on a downsampled copy of the images.
2. **Fine**, at full resolution within a few pixels of the coarse answer: the normalised cross-correlation
   (cosine similarity over the overlap, for every shift) of *structure channels*: the normalised gradient
   field's tensor ``(|n|², n_x² - n_y², 2 n_x n_y)`` (Haber & Modersitzki's NGF distance written as a
   correlation). It is invariant to the sign of edges, so it matches images whose contrast is inverted or
   non-linearly remapped (T1 vs T2 MRI, inverted tissue with a dark background); ``fine="intensity"`` uses
   the zero-mean intensities instead.
3. **Sub-pixel**: the summed cross-power spectrum is evaluated around the integer peak on a grid of
   ``1 / upsample`` pixels with a matrix-multiply DFT (Guizar-Sicairos et al., 2008), divided by the
   overlap energies, and the final peak refined by a parabola.

The ``score`` is the normalised correlation of the structure (or intensity) channels at the answer, in
[0, 1]: near 0 for flat, textureless or non-overlapping images, near 1 for clean shifted copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from ._validation import as_image
from .backbones.base import Backbone, get_backbone
from .feature_matching import channel_cross_correlation, diagonal_scores, refine_peak
from .preprocess import to_float01
from .shifts import best_shift, crop_window, min_overlap_count, overlap_counts, overlap_mask, parse_max_shift

__all__ = [
    "StackTransforms",
    "Translation",
    "align_stack",
    "register_translation",
    "resolve_backbone",
    "shift_image",
    "structure_channels",
]

FINE_MODES = ("structure", "intensity")
REFERENCES = ("previous", "running")


@dataclass(frozen=True)
class Translation:
    """A translation estimate, in pixels: ``image_b ≈ np.roll(image_a, (dy, dx), axis=(0, 1))``.

    Attributes
    ----------
    dy, dx : float
        The shift in pixels (sub-pixel).
    score : float
        Confidence in [0, 1]: the normalised correlation at the answer (low when unreliable).
    coarse : (float, float)
        The coarse estimate in pixels.
    overlap : float
        Fraction of the image area that overlaps at the answer.
    backbone, weights : str
        What produced the coarse estimate (``"structure"`` / ``"none"`` for the built-in channels).
    method : str
        ``"<coarse>+<fine>"``, e.g. ``"vit-small+structure"``.
    """

    dy: float
    dx: float
    score: float
    coarse: tuple[float, float] = (0.0, 0.0)
    overlap: float = 1.0
    backbone: str = "structure"
    weights: str = "none"
    method: str = "structure+structure"

    @property
    def shift(self) -> tuple[float, float]:
        """``(dy, dx)``."""
        return (self.dy, self.dx)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        d = asdict(self)
        d["coarse"] = [float(v) for v in self.coarse]
        return d


# --- building blocks -----------------------------------------------------------------------------------------
def _grey01(image: np.ndarray) -> np.ndarray:
    """Float64 greyscale in [0, 1] (channels averaged)."""
    g = to_float01(image).astype(np.float64)
    return g.mean(axis=2) if g.ndim == 3 else g


def structure_channels(image: Any, sigma: float = 1.5, eps: float = 3.0) -> np.ndarray:
    """Contrast-invariant local structure: the tensor of the normalised gradient field, (H, W, 3).

    With the Gaussian gradient ``g`` (scale ``sigma``) and ``n = g / sqrt(|g|² + ε²)``, where ``ε`` is
    ``eps`` times the mean gradient magnitude, the channels are ``(|n|², n_x² - n_y², 2 n_x n_y) / √2``, each
    with its mean removed. Their dot product between two images is ``(n_a · n_b)²`` up to the means: large
    where edges are parallel whatever their sign, hence invariant to contrast inversion and to monotone or
    non-monotone intensity remaps that keep the edges.

    Parameters
    ----------
    image : array_like
        (H, W) or (H, W, C) image; channels are averaged.
    sigma : float
        Gaussian derivative scale in pixels.
    eps : float
        Edge-strength floor relative to the mean gradient magnitude. Small values normalise every gradient
        to unit length (pure orientation, most contrast-invariant but noise-sensitive); large values keep
        the gradient strength (closer to the structure tensor, steadier between serial sections whose
        content differs). The default 3 was chosen on real EM stacks and MNI cross-contrast pairs
        (benchmarks/bench_registration.py).
    """
    g = _grey01(as_image(image))
    gy = ndi.gaussian_filter(g, sigma, order=(1, 0))
    gx = ndi.gaussian_filter(g, sigma, order=(0, 1))
    mag2 = gx * gx + gy * gy
    floor = (eps * float(np.sqrt(mag2).mean())) ** 2
    if floor <= 0:  # a constant image: no structure at all
        return np.zeros((*g.shape, 3), dtype=np.float32)
    nx2, ny2, nxy = (v / (mag2 + floor) for v in (gx * gx, gy * gy, gx * gy))
    ch = np.stack([nx2 + ny2, nx2 - ny2, 2.0 * nxy], axis=-1) / np.sqrt(2.0)
    ch -= ch.mean(axis=(0, 1))
    return ch.astype(np.float32)


def _intensity_channels(image: Any) -> np.ndarray:
    g = _grey01(as_image(image))
    return (g - g.mean())[:, :, None].astype(np.float32)


def _channels(image: np.ndarray, fine: str, sigma: float, edge_floor: float) -> np.ndarray:
    if fine == "structure":
        return structure_channels(image, sigma, edge_floor)
    return _intensity_channels(image)


@dataclass
class _Surface:
    """Normalised cross-correlation of two channel maps for every shift in a ±(my, mx) window."""

    ncc: np.ndarray
    denom: np.ndarray
    counts: np.ndarray
    spectrum: np.ndarray = field(repr=False)
    fft_shape: tuple[int, int]
    max_shift: tuple[int, int]


def _ncc_surface(fa: np.ndarray, fb: np.ndarray, my: int, mx: int) -> _Surface:
    """Cosine similarity of the overlapping parts of ``fa`` and ``fb`` (H, W, K) at every shift.

    Numerator: the channel-summed correlation; denominator: sqrt of each map's energy inside the overlap
    (two more correlations, with an all-ones map), as in masked normalised cross-correlation.
    """
    h, w = fa.shape[:2]
    corr, spec, shape = channel_cross_correlation(fa, fb, (my, mx), return_spectrum=True)
    ones = np.ones((h, w, 1), dtype=np.float32)
    ea = (fa.astype(np.float64) ** 2).sum(axis=2, keepdims=True).astype(np.float32)
    eb = (fb.astype(np.float64) ** 2).sum(axis=2, keepdims=True).astype(np.float32)
    energy_a = np.clip(channel_cross_correlation(ea, ones, (my, mx)), 0, None)
    energy_b = np.clip(channel_cross_correlation(ones, eb, (my, mx)), 0, None)
    denom = np.sqrt(energy_a * energy_b)
    tiny = 1e-9 * max(float(denom.max()), 1e-30)
    ncc = np.divide(corr, denom, out=np.zeros_like(corr), where=denom > tiny)
    return _Surface(ncc, denom, overlap_counts((h, w), (my, mx)), spec, shape, (my, mx))


def _upsampled_correlation(
    spec: np.ndarray, fft_shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """The correlation ``ifft2(spec)`` evaluated at fractional shifts ``ys × xs`` by a matrix-multiply DFT.

    Band-limited interpolation of the correlation surface (Guizar-Sicairos et al., Opt. Lett. 2008); written
    here because skimage keeps its version private and it must act on our channel-summed spectrum.
    """
    ly, lx = fft_shape
    ky = np.fft.fftfreq(ly)  # cycles per sample, signed
    kx = np.fft.fftfreq(lx)
    ey = np.exp(2j * np.pi * np.outer(ys, ky))  # (ny, ly)
    ex = np.exp(2j * np.pi * np.outer(kx, xs))  # (lx, nx)
    return (ey @ spec @ ex).real / (ly * lx)


def _bilinear(table: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``table`` at fractional indices (grids ``y`` × ``x``)."""
    return ndi.map_coordinates(table, np.meshgrid(y, x, indexing="ij"), order=1, mode="nearest")


def _subpixel_peak(surf: _Surface, iy: int, ix: int, upsample: int) -> tuple[float, float, float]:
    """Refine the integer peak ``(iy, ix)`` of ``surf`` (window indices) to 1/upsample pixel and beyond."""
    my, mx = surf.max_shift
    dy0, dx0 = iy - my, ix - mx
    if surf.ncc[iy, ix] <= 0:  # nothing correlates (flat or unrelated images): no peak to refine
        return float(dy0), float(dx0), 0.0
    if upsample <= 1:
        fy, fx = refine_peak(surf.ncc, (iy, ix))
        return dy0 + fy, dx0 + fx, float(surf.ncc[iy, ix])
    half = 1.0
    offs = np.arange(-half, half + 1e-9, 1.0 / upsample)
    ys, xs = dy0 + offs, dx0 + offs
    corr = _upsampled_correlation(surf.spectrum, surf.fft_shape, ys, xs)
    den = _bilinear(surf.denom, ys + my, xs + mx)
    tiny = 1e-9 * max(float(surf.denom.max()), 1e-30)
    up = np.divide(corr, den, out=np.zeros_like(corr), where=den > tiny)
    # Outside the computed window the surface is undefined: keep the search inside it.
    inside = ((np.abs(ys) <= my)[:, None]) & ((np.abs(xs) <= mx)[None, :])
    up = np.where(inside, up, -np.inf)
    jy, jx = np.unravel_index(int(np.argmax(up)), up.shape)
    fy, fx = refine_peak(up, (int(jy), int(jx)))
    return float(ys[jy] + fy / upsample), float(xs[jx] + fx / upsample), float(up[jy, jx])


def _search(
    fa: np.ndarray,
    fb: np.ndarray,
    window: tuple[int, int],
    min_overlap: float,
    upsample: int,
) -> tuple[float, float, float]:
    """Best shift of ``fb`` against ``fa`` within ``±window`` with at least ``min_overlap`` area overlap."""
    h, w = fa.shape[:2]
    my, mx = min(window[0], h - 1), min(window[1], w - 1)
    surf = _ncc_surface(fa, fb, my, mx)
    allowed = overlap_mask(surf.counts, min_overlap_count((h, w), min_overlap))
    try:
        # Ties (e.g. an all-zero surface from flat images) go to the smallest shift.
        dy, dx = best_shift(surf.ncc, allowed)
    except ValueError:
        raise ValueError(
            f"no shift within ±{window} keeps min_overlap={min_overlap:g} of the image overlapping"
        ) from None
    return _subpixel_peak(surf, dy + my, dx + mx, upsample)


def _overlap_crops(
    a: np.ndarray, b: np.ndarray, shift: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The parts of ``a`` and ``b`` that overlap when ``b = roll(a, shift)`` (same shape, aligned)."""
    h, w = a.shape[:2]
    dy, dx = shift
    ya, yb = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    xa, xb = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    return a[ya, xa], b[yb, xb]


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    from skimage.transform import downscale_local_mean

    blurred = ndi.gaussian_filter(image, 0.5 * factor)
    return downscale_local_mean(blurred, (factor, factor))


def resolve_backbone(backbone: Backbone | str | None, weights: str | None = None) -> Backbone | None:
    """The backbone a registration uses: an instance as given, a registered name built by ``get_backbone``.

    Parameters
    ----------
    backbone : Backbone, str or None
        ``None``, ``"none"`` and ``"structure"`` mean no backbone (structure channels only).
    weights : str, optional
        Passed to ``get_backbone`` with a name; an error without a backbone.

    Returns
    -------
    Backbone or None

    Raises
    ------
    ValueError
        ``weights`` without a backbone.
    TypeError
        ``backbone`` of another type.
    """
    if backbone is None or isinstance(backbone, Backbone):
        if weights is not None and backbone is None:
            raise ValueError("weights= needs a backbone name (e.g. backbone='vit-small')")
        return backbone
    if isinstance(backbone, str):
        if backbone in ("none", "structure"):
            return None
        return get_backbone(backbone, **({"weights": weights} if weights is not None else {}))
    raise TypeError(f"backbone must be a Backbone, a registered name or None, got {type(backbone).__name__}")


# --- public API ----------------------------------------------------------------------------------------------
def register_translation(
    image_a: Any,
    image_b: Any,
    backbone: Backbone | str | None = None,
    *,
    weights: str | None = None,
    max_shift: float | tuple[float, float] | None = None,
    min_overlap: float = 0.25,
    fine: str = "structure",
    upsample: int = 20,
    sigma: float = 1.5,
    edge_floor: float = 3.0,
    coarse_size: int = 256,
) -> Translation:
    """Estimate the translation between two images in pixels, coarse to fine, to sub-pixel accuracy.

    Parameters
    ----------
    image_a, image_b : array_like
        Two images of the same (H, W) (greyscale or channel-last; channels are averaged for the fine step).
    backbone : Backbone, str or None
        Features for the coarse step: a :class:`~neuros.plugins.cv.backbones.base.Backbone`, a registered
        name (``"filterbank"``, ``"vit-small"``, …) or ``None`` for the built-in structure channels on a
        downsampled copy (fast, contrast-invariant).
    weights : str, optional
        Passed to :func:`get_backbone` when ``backbone`` is a name (``"placeholder"``, ``"random"``, …).
    max_shift : float or (float, float), optional
        Largest |dy| (and |dx|) in pixels considered. Default: any shift that keeps ``min_overlap``.
    min_overlap : float
        Smallest fraction of the image area that must overlap (0 < min_overlap <= 1).
    fine : {"structure", "intensity"}
        Channels for the full-resolution step: contrast-invariant structure (default) or zero-mean
        intensity (same-contrast pairs only).
    upsample : int
        Sub-pixel resolution of the fine peak search is ``1 / upsample`` pixel before the parabola fit.
    sigma : float
        Gradient scale (pixels) of the structure channels; larger values ignore finer texture and noise.
    edge_floor : float
        ``eps`` of :func:`structure_channels`: the gradient strength (relative to the mean) below which
        edges are damped rather than normalised.
    coarse_size : int
        With ``backbone=None``, the images are downsampled by a power of two until their longer side is at
        most this for the coarse search.

    Returns
    -------
    Translation
        ``dy, dx`` (pixels) such that ``image_b ≈ np.roll(image_a, (dy, dx), axis=(0, 1))`` and a ``score``.

    Raises
    ------
    ValueError
        Different shapes, NaN/inf pixels, images smaller than one patch, or bad parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter, shift
    >>> a = gaussian_filter(np.random.default_rng(0).random((128, 128)), 2)
    >>> b = shift(a, (3.4, -5.25), order=3, mode="reflect")
    >>> t = register_translation(a, b)
    >>> bool(abs(t.dy - 3.4) < 0.1 and abs(t.dx + 5.25) < 0.1), t.score > 0.9
    (True, True)
    """
    bb = resolve_backbone(backbone, weights)
    patch = int(bb.patch_size) if bb is not None else 8
    a = as_image(image_a, "image_a", min_size=patch)
    b = as_image(image_b, "image_b", min_size=patch)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"image_a and image_b differ in shape: {a.shape[:2]} vs {b.shape[:2]}; crop or pad first")
    if fine not in FINE_MODES:
        raise ValueError(f"fine must be one of {', '.join(FINE_MODES)}, got {fine!r}")
    if not 0 < float(min_overlap) <= 1:
        raise ValueError(f"min_overlap must be a fraction in (0, 1], got {min_overlap}")
    if isinstance(upsample, bool) or int(upsample) < 1:
        raise ValueError(f"upsample must be an integer >= 1, got {upsample}")
    h, w = a.shape[:2]
    my, mx = parse_max_shift(max_shift, (h, w), subpixel=True, unit="pixels")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma}")
    if not np.isfinite(edge_floor) or edge_floor <= 0:
        raise ValueError(f"edge_floor must be > 0, got {edge_floor}")
    ca, cb = _channels(a, fine, sigma, edge_floor), _channels(b, fine, sigma, edge_floor)

    # Coarse: every allowed shift, at a coarse scale.
    if bb is None:
        factor = 1
        while max(h, w) / factor > coarse_size and min(h, w) / (2 * factor) >= 16:
            factor *= 2
        if factor == 1:  # small enough: the fine search covers every shift directly
            dy, dx, score = _search(ca, cb, (my, mx), min_overlap, upsample)
            return _result(dy, dx, score, (dy, dx), h, w, "structure", "none", f"structure+{fine}")
        ga, gb = (_downsample(_grey01(x), factor) for x in (a, b))
        sa, sb = structure_channels(ga, sigma, edge_floor), structure_channels(gb, sigma, edge_floor)
        cy, cx, _ = _search(sa, sb, (-(-my // factor), -(-mx // factor)), min_overlap, 1)
        coarse = (cy * factor, cx * factor)
        radius = 2 * factor + 2
        name, wts = "structure", "none"
    else:
        fa, fb = bb.extract(a), bb.extract(b)
        stride = float(fa.stride)
        gh, gw = fa.grid_shape
        window = parse_max_shift((my / stride, mx / stride), (gh, gw), subpixel=True)
        means, counts = diagonal_scores(fa, fb, max_shift=window)
        allowed = overlap_mask(crop_window(counts, window), min_overlap_count((gh, gw), min_overlap))
        try:
            py, px = best_shift(crop_window(means, window), allowed)
        except ValueError:
            raise ValueError(
                f"no shift within max_shift={max_shift} keeps min_overlap={min_overlap:g} of a {gh}×{gw} grid"
            ) from None
        fy, fx = refine_peak(np.nan_to_num(means, nan=-np.inf), (py + gh - 1, px + gw - 1))
        coarse = ((py + fy) * stride, (px + fx) * stride)
        radius = int(np.ceil(1.5 * stride)) + 2
        name, wts = bb.name, bb.weights

    # Fine: full resolution, within `radius` of the coarse answer, on the overlapping crops.
    iy = int(np.clip(round(coarse[0]), -my, my))
    ix = int(np.clip(round(coarse[1]), -mx, mx))
    ra, rb = _overlap_crops(ca, cb, (iy, ix))
    if min(ra.shape[:2]) < 4:
        raise ValueError(f"the coarse estimate ({iy}, {ix}) leaves almost no overlap between the images")
    # The crops overlap fully at residual 0; rescale min_overlap to the crop's area.
    frac = min(1.0, min_overlap * h * w / (ra.shape[0] * ra.shape[1]))
    win = (min(radius, my + abs(iy)), min(radius, mx + abs(ix)))
    try:
        ry, rx, score = _search(ra, rb, win, max(frac * 0.5, 1e-6), upsample)
    except ValueError:
        ry, rx, score = 0.0, 0.0, 0.0
    dy, dx = iy + ry, ix + rx
    if abs(dy) > my + 0.5 or abs(dx) > mx + 0.5:  # the fine step wandered past max_shift: keep the bound
        dy, dx = float(np.clip(dy, -my, my)), float(np.clip(dx, -mx, mx))
    return _result(dy, dx, score, coarse, h, w, name, wts, f"{name}+{fine}")


def _result(
    dy: float, dx: float, score: float, coarse: tuple[float, float], h: int, w: int, name: str, wts: str,
    method: str,
) -> Translation:
    overlap = max(0.0, (h - abs(dy)) * (w - abs(dx)) / (h * w))
    return Translation(
        dy=float(dy),
        dx=float(dx),
        score=float(np.clip(score, 0.0, 1.0)),
        coarse=(float(coarse[0]), float(coarse[1])),
        overlap=float(overlap),
        backbone=name,
        weights=wts,
        method=method,
    )


def shift_image(image: Any, shift: tuple[float, float], order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Move an image by ``(dy, dx)`` pixels (sub-pixel, spline ``order``), filling uncovered pixels.

    ``shift_image(a, (dy, dx))`` ≈ ``np.roll(a, (dy, dx), axis=(0, 1))`` without wrap-around, so
    ``shift_image(b, (-t.dy, -t.dx))`` brings ``b`` onto ``a`` for ``t = register_translation(a, b)``.
    Channels of an (H, W, C) image move together. Returns float32.
    """
    arr = np.asarray(image, dtype=np.float32)
    sh = (float(shift[0]), float(shift[1])) + (0.0,) * (arr.ndim - 2)
    return ndi.shift(arr, sh, order=order, mode="constant", cval=float(fill), prefilter=order > 1)


@dataclass(frozen=True)
class StackTransforms:
    """The translations found by :func:`align_stack`, one row per section.

    Attributes
    ----------
    shifts : ndarray, shape (n, 2)
        Position of each section relative to the reference frame: section ``i`` ≈ the reference frame
        rolled by ``shifts[i]``; the aligned section is the input moved by ``-shifts[i]``.
    pairwise : ndarray, shape (n, 2)
        The registration of section ``i`` against its reference (row 0: zeros).
    scores : ndarray, shape (n,)
        Confidence of each registration (row 0: 1.0, the anchor).
    backbone, weights, reference : str
        What produced the transforms.
    """

    shifts: np.ndarray
    pairwise: np.ndarray
    scores: np.ndarray
    backbone: str
    weights: str
    reference: str

    def rows(self) -> list[dict[str, Any]]:
        """One dict per section (for CSV/JSON): section, dy, dx, pair_dy, pair_dx, score, backbone, weights."""
        return [
            {
                "section": i,
                "dy": float(s[0]),
                "dx": float(s[1]),
                "pair_dy": float(p[0]),
                "pair_dx": float(p[1]),
                "score": float(sc),
                "backbone": self.backbone,
                "weights": self.weights,
                "reference": self.reference,
            }
            for i, (s, p, sc) in enumerate(zip(self.shifts, self.pairwise, self.scores, strict=True))
        ]


def align_stack(
    volume: Any,
    backbone: Backbone | str | None = None,
    *,
    weights: str | None = None,
    reference: str = "previous",
    running_weight: float = 0.5,
    order: int = 1,
    fill: float = 0.0,
    progress: Callable[[str], None] | None = None,
    **register_kw: Any,
) -> tuple[np.ndarray, StackTransforms]:
    """Align a serial-section stack by translations, section to neighbour, accumulating the transforms.

    Parameters
    ----------
    volume : array_like, shape (n, H, W) or (n, H, W, C)
        The sections, in order; at least two.
    backbone, weights
        As in :func:`register_translation` (built once and reused for every pair).
    reference : {"previous", "running"}
        ``"previous"``: register each raw section to the previous raw section and add up the shifts (no
        resampling between steps). ``"running"``: register each section directly to a running reference —
        an exponential average of the sections aligned so far — which lets errors average out rather than
        accumulate, at the cost of a blurrier target.
    running_weight : float
        Weight of the newest aligned section in the running reference (0 < w <= 1).
    order : int
        Spline order for resampling the sections (1: bilinear).
    fill : float
        Value for pixels moved in from outside.
    progress : callable, optional
        Called with a short message after each section.
    **register_kw
        Passed to :func:`register_translation` (``max_shift``, ``min_overlap``, ``fine``, ``upsample``…).

    Returns
    -------
    aligned : ndarray
        The aligned stack, same shape and dtype as ``volume`` (integers rounded and clipped).
    transforms : StackTransforms
        Shifts relative to section 0, per-pair registrations and scores.
    """
    vol = np.asarray(volume)
    if vol.ndim not in (3, 4):
        raise ValueError(f"volume must be (n, H, W) or (n, H, W, C), got {vol.ndim}-D shape {vol.shape}")
    n = vol.shape[0]
    if n < 2:
        raise ValueError(f"volume has {n} section(s); a stack needs at least two to align")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if not 0 < float(running_weight) <= 1:
        raise ValueError(f"running_weight must be in (0, 1], got {running_weight}")
    bb = resolve_backbone(backbone, weights)
    sections = [as_image(vol[i], f"volume[{i}]") for i in range(n)]
    shifts = np.zeros((n, 2))
    pairwise = np.zeros((n, 2))
    scores = np.ones(n)
    name, wts = ("structure", "none") if bb is None else (bb.name, bb.weights)
    ref = _grey01(sections[0]) if reference == "running" else None
    if progress is not None:
        progress("section 0 (anchor)")
    for i in range(1, n):
        if reference == "previous":
            t = register_translation(sections[i - 1], sections[i], bb, **register_kw)
            pairwise[i] = t.shift
            shifts[i] = shifts[i - 1] + pairwise[i]
        else:
            t = register_translation(ref, _grey01(sections[i]), bb, **register_kw)
            pairwise[i] = t.shift
            shifts[i] = pairwise[i]
            # Edge-replicated (not zero-filled) so the fill border adds no false edge to the reference.
            moved = ndi.shift(_grey01(sections[i]), -shifts[i], order=order, mode="nearest")
            ref = (1 - running_weight) * ref + running_weight * moved
        scores[i] = t.score
        if progress is not None:
            progress(f"section {i}: dy={shifts[i, 0]:+.2f} dx={shifts[i, 1]:+.2f} score={t.score:.2f}")
    aligned = np.stack([shift_image(s, -shifts[i], order, fill) for i, s in enumerate(sections)])
    if np.issubdtype(vol.dtype, np.integer):
        info = np.iinfo(vol.dtype)
        aligned = np.clip(np.rint(aligned), info.min, info.max)
    aligned = aligned.astype(vol.dtype if vol.dtype != bool else np.float32)
    return aligned, StackTransforms(shifts, pairwise, scores, name, wts, reference)
