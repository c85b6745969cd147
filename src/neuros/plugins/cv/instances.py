"""Objects from pixel maps: instance labels of one class and the neuron regions that a membrane map separates.

Two jobs, both pure functions on NumPy arrays that return ``uint32`` label images (0 = background, objects
numbered 1..n):

- :func:`label_instances` — objects of one class (mitochondria, nuclei) from class probabilities or a mask:
  connected components, or a seeded watershed that splits touching objects along the necks of their
  distance transform (seeds: h-maxima or local peaks of the distance transform).
- :func:`membrane_regions` — the regions (neurons) enclosed by a membrane map, as the ISBI 2012 EM
  segmentation challenge scores them: connected components of the confident non-membrane pixels, optionally
  grown over the membrane by a watershed of the membrane probability.

Object and region scores live in :mod:`neuros.plugins.cv.metrics` (``match_instances``, ``region_scores``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed

__all__ = ["label_instances", "membrane_regions"]

Method = Literal["watershed", "components"]
Landscape = Literal["distance", "probability"]


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}")
    return ndi.generate_binary_structure(2, connectivity)


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    return t


def _check_proba(p: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(p).all():
        bad = int((~np.isfinite(p)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); probabilities must be finite numbers in [0, 1]")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"{name} holds values outside [0, 1] ({p.min():g}..{p.max():g}); pass probabilities")
    return p


def _as_array(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric or boolean array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def _foreground(proba: Any, cls: int | None, threshold: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The object mask of one class and, for probability input, that class's probability map."""
    arr = _as_array(proba, "proba")
    t = _check_threshold(threshold)
    if arr.ndim == 3:
        if cls is None:
            raise ValueError(f"proba has {arr.shape[2]} classes (H, W, K); pass cls, the class index of the objects")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"proba of shape {arr.shape} must be float class probabilities, got dtype {arr.dtype}")
        if not 0 <= int(cls) < arr.shape[2]:
            raise ValueError(f"cls={cls} is out of range for proba with {arr.shape[2]} classes (0..{arr.shape[2] - 1})")
        p = _check_proba(arr[..., int(cls)], "proba")
        return p >= t, p
    if arr.ndim != 2:
        raise ValueError(f"proba must be (H, W, K) probabilities or an (H, W) map, got shape {arr.shape}")
    if arr.dtype == bool:
        if cls is not None:
            raise ValueError("cls applies to (H, W, K) probabilities or integer class maps, not to a boolean mask")
        return arr, None
    if np.issubdtype(arr.dtype, np.integer):  # a class map: the objects are the pixels equal to cls
        return (arr == int(cls)) if cls is not None else arr > 0, None
    if cls is not None:
        raise ValueError("cls applies to (H, W, K) probabilities or integer class maps; an (H, W) float map "
                         "is already the probability of the object class")
    p = _check_proba(arr, "proba")
    return p >= t, p


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Objects smaller than ``min_size`` pixels set to 0, the rest relabelled 1..n (uint32)."""
    if min_size < 0:
        raise ValueError(f"min_size must be ≥ 0 pixels, got {min_size}")
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    out, _, _ = relabel_sequential(labels.astype(np.uint32, copy=False))
    return out.astype(np.uint32, copy=False)


def _seeds(distance: np.ndarray, components: np.ndarray, h: float, min_distance: int | None) -> np.ndarray:
    """Watershed markers: h-maxima (or local peaks) of the distance transform, one per object kernel.

    A component without any marker (an object thinner than ``h``) becomes its own marker, so no object is
    lost by the watershed.
    """
    if min_distance is not None:
        if int(min_distance) < 1:
            raise ValueError(f"min_distance must be ≥ 1 pixel, got {min_distance}")
        peaks = peak_local_max(distance, min_distance=int(min_distance), labels=components, exclude_border=False)
        maxima = np.zeros(distance.shape, bool)
        maxima[tuple(peaks.T)] = True
    else:
        if not h > 0:
            raise ValueError(f"h must be > 0 pixels (the depth of a neck that separates two objects), got {h}")
        maxima = h_maxima(distance, h).astype(bool) & (components > 0)
    markers, n = ndi.label(maxima, structure=np.ones((3, 3), bool))
    has = np.zeros(int(components.max()) + 1, bool)
    has[components[markers > 0]] = True
    orphan = ~has[components] & (components > 0)
    return np.where(orphan, components + n, markers)


def label_instances(
    proba: np.ndarray,
    cls: int | None = None,
    method: Method = "watershed",
    threshold: float = 0.5,
    min_size: int = 0,
    *,
    h: float = 2.0,
    min_distance: int | None = None,
    landscape: Landscape = "distance",
    connectivity: int = 1,
) -> np.ndarray:
    """Instance labels of one class from pixel class probabilities or a mask.

    Parameters
    ----------
    proba : ndarray
        One of: ``(H, W, K)`` float class probabilities (``cls`` picks the class); an ``(H, W)`` float
        probability of the object class; an ``(H, W)`` boolean mask; an ``(H, W)`` integer class map (the
        objects are the pixels equal to ``cls``, or all non-zero pixels when ``cls`` is None).
    cls : int, optional
        The class index of the objects (required for ``(H, W, K)`` input).
    method : {"watershed", "components"}
        ``"components"``: connected components of the foreground. ``"watershed"``: a seeded watershed that
        splits touching objects (mitochondria, nuclei) along the necks of the distance transform.
    threshold : float
        Foreground where the probability is ``≥ threshold`` (probability input only).
    min_size : int
        Objects with fewer pixels are removed (set to 0).
    h : float
        Watershed seeds: the h-maxima of the Euclidean distance transform — a neck must be at least ``h``
        pixels shallower than both objects' centres for them to be split.
    min_distance : int, optional
        When given, seeds are instead the local peaks of the distance transform at least ``min_distance``
        pixels apart (``skimage.feature.peak_local_max``), one or more per connected component.
    landscape : {"distance", "probability"}
        The watershed floods the negative distance transform, or ``1 − probability`` (probability input
        only) so that boundaries follow the classifier's low-confidence valleys.
    connectivity : {1, 2}
        Pixel neighbourhood of an object (1: 4-neighbours, 2: 8-neighbours).

    Returns
    -------
    ndarray of uint32, shape (H, W)
        0 = background, objects numbered 1..n.

    Raises
    ------
    ValueError
        NaN or out-of-range probabilities, a missing or out-of-range ``cls``, a wrong shape or a bad option.

    References
    ----------
    .. [1] S. Beucher and F. Meyer, "The morphological approach to segmentation: the watershed transformation",
       in *Mathematical Morphology in Image Processing*, Marcel Dekker, 1993, pp. 433–481.
    .. [2] P. Soille, *Morphological Image Analysis*, 2nd ed., Springer, 2003 (h-maxima, ch. 6).
    .. [3] S. van der Walt et al., "scikit-image: image processing in Python", *PeerJ* 2:e453, 2014.
    """
    if method not in ("watershed", "components"):
        raise ValueError(f"method must be 'watershed' or 'components', got {method!r}")
    if landscape not in ("distance", "probability"):
        raise ValueError(f"landscape must be 'distance' or 'probability', got {landscape!r}")
    mask, p = _foreground(proba, cls, threshold)
    structure = _structure(connectivity)
    components, _ = ndi.label(mask, structure=structure)
    if method == "components" or not mask.any():
        return _drop_small(components, int(min_size))
    if landscape == "probability" and p is None:
        raise ValueError("landscape='probability' needs probability input, not a mask; use landscape='distance'")
    distance = ndi.distance_transform_edt(mask)
    markers = _seeds(distance, components, float(h), min_distance)
    surface = -distance if landscape == "distance" else 1.0 - p
    labels = watershed(surface, markers, connectivity=connectivity, mask=mask)
    return _drop_small(labels, int(min_size))


def membrane_regions(
    membrane: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 0,
    *,
    fill: bool = True,
) -> np.ndarray:
    """The regions (e.g. neurons) that a membrane map separates.

    Seeds are the 4-connected components of the confident non-membrane pixels (membrane probability
    ``< threshold``), so a membrane one pixel wide — even drawn with diagonal steps — separates two regions
    and a single gap in it merges them, as in the ISBI 2012 challenge's evaluation. With ``fill`` the
    membrane pixels are then given to the adjacent regions by a watershed of the membrane probability
    (every pixel labelled, the way a prediction is scored); without it they stay 0 (the way the truth is
    scored: the ISBI metrics are restricted to non-membrane truth pixels).

    Parameters
    ----------
    membrane : ndarray, shape (H, W)
        Membrane probability in [0, 1] (float), or a membrane mask (boolean, or integer with non-zero =
        membrane).
    threshold : float
        Non-membrane where the probability is ``< threshold`` (probability input only).
    min_size : int
        Seed components with fewer pixels (specks inside a thick membrane) are dropped; with ``fill`` their
        pixels join the surrounding regions.
    fill : bool
        Grow the regions over the membrane pixels (watershed of the membrane map) instead of leaving them 0.

    Returns
    -------
    ndarray of uint32, shape (H, W)
        Regions numbered 1..n; 0 = membrane (when ``fill`` is False) or nothing (when it is True and the
        map has at least one region).

    References
    ----------
    .. [1] I. Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation algorithms for
       connectomics", *Frontiers in Neuroanatomy* 9:142, 2015, doi:10.3389/fnana.2015.00142.
    .. [2] S. Beucher and F. Meyer, "The morphological approach to segmentation: the watershed transformation",
       in *Mathematical Morphology in Image Processing*, Marcel Dekker, 1993, pp. 433–481.
    """
    arr = _as_array(membrane, "membrane")
    if arr.ndim != 2:
        raise ValueError(f"membrane must be an (H, W) membrane probability or mask, got shape {arr.shape}; "
                         "for (H, W, K) probabilities pass proba[..., membrane_class]")
    if np.issubdtype(arr.dtype, np.floating):
        p = _check_proba(arr, "membrane").astype(np.float32, copy=False)
        interior = p < _check_threshold(threshold)
    else:
        p = (arr != 0).astype(np.float32)
        interior = arr == 0
    seeds, _ = ndi.label(interior, structure=_structure(1))
    seeds = _drop_small(seeds, int(min_size))
    if fill and seeds.any():
        seeds = watershed(p, seeds, connectivity=1).astype(np.uint32, copy=False)
    return seeds
