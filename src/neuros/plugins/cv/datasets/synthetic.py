"""The report's synthetic datasets: EM, MRI and histology proxies with binary masks, generated on the fly.

- ``"em"``: bright circles (neurite cross-sections) on a noisy grey background.
- ``"mri"``: a smooth intensity gradient with a round lesion. Under ``protocol="report"`` the lesion is
  centred on the image centre — a patch *corner* for 128² images on a 16-pixel grid — with a radius of at most
  12 px, so no 16×16 patch is majority-lesion: patch-level training sets then have no positive patch and F1 is
  0, exactly the report's MRI artefact. ``protocol="random"`` places and sizes the lesion at random.
- ``"histology"``: a pinkish H&E-like texture (RGB) with darker purple nuclei.

Everything is seeded: the same ``(modality, n_images, size, seed, protocol)`` gives identical arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .._validation import check_positive_int

__all__ = ["MODALITIES", "PROTOCOLS", "make_dataset", "make_image"]

MODALITIES = ("em", "mri", "histology")
PROTOCOLS = ("report", "random")
_MODALITY_KEY = {m: i for i, m in enumerate(MODALITIES)}


def _disks(shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean union of disks, vectorised over all disks at once."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    return (d2 <= (radii[:, None, None] ** 2)).any(axis=0)


def _em(rng: np.random.Generator, size: int, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(3, 9))
    radii = rng.uniform(size / 20, size / 7, n)
    centres = rng.uniform(0, size, (n, 2))
    mask = _disks((size, size), centres, radii)
    img = 0.35 + 0.1 * rng.standard_normal((size, size))
    img = ndimage.gaussian_filter(img, 1.0) + 0.05 * rng.standard_normal((size, size))
    img[mask] += 0.45
    return np.clip(img, 0, 1).astype(np.float32), mask.astype(np.uint8)


def _mri(rng: np.random.Generator, size: int, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size] / max(size - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    grad = 0.25 + 0.35 * (np.cos(angle) * yy + np.sin(angle) * xx + 1) / 2
    if protocol == "report":
        # Centred on the image centre (a patch corner when size is a multiple of 32), radius <= 12 px.
        centre = np.array([[size / 2 - 0.5, size / 2 - 0.5]])
        radius = np.array([rng.uniform(size / 20, size * 12 / 128)])
    else:
        radius = np.array([rng.uniform(size / 12, size / 5)])
        centre = rng.uniform(radius[0], size - radius[0], (1, 2))
    mask = _disks((size, size), centre, radius)
    img = grad + 0.03 * rng.standard_normal((size, size))
    img[mask] += 0.35
    return np.clip(img, 0, 1).astype(np.float32), mask.astype(np.uint8)


def _histology(rng: np.random.Generator, size: int, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(6, 16))
    radii = rng.uniform(size / 32, size / 14, n)
    centres = rng.uniform(0, size, (n, 2))
    mask = _disks((size, size), centres, radii)
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0)
    texture /= np.abs(texture).max() + 1e-8
    pink = np.array([0.92, 0.62, 0.78])
    purple = np.array([0.38, 0.22, 0.55])
    img = pink[None, None] + 0.08 * texture[:, :, None]
    img[mask] = purple + 0.06 * texture[mask][:, None]
    img = img + 0.02 * rng.standard_normal(img.shape)
    return np.clip(img, 0, 1).astype(np.float32), mask.astype(np.uint8)


_MAKERS = {"em": _em, "mri": _mri, "histology": _histology}


def _check(modality: str, protocol: str) -> None:
    if modality not in _MAKERS:
        raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def make_image(
    modality: str, size: int = 128, seed: int = 0, protocol: str = "report", index: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its binary mask; ``index`` selects an independent draw for the same seed."""
    _check(modality, protocol)
    size = check_positive_int(size, "size", minimum=16)
    rng = np.random.default_rng([int(seed), _MODALITY_KEY[modality], int(index)])
    return _MAKERS[modality](rng, size, protocol)


def make_dataset(
    modality: str, n_images: int, size: int = 128, seed: int = 0, protocol: str = "report"
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a seeded synthetic dataset.

    Parameters
    ----------
    modality : {"em", "mri", "histology"}
        Which proxy to draw.
    n_images : int
        Number of images (>= 1).
    size : int
        Side length in pixels (>= 16); the report uses 128.
    seed : int
        Random seed; different seeds give different data.
    protocol : {"report", "random"}
        ``"report"`` reproduces the report's designs, including its centred MRI lesion; ``"random"``
        randomises lesion placement and size.

    Returns
    -------
    images : ndarray
        (n, size, size) float32 in [0, 1] for EM and MRI; (n, size, size, 3) for histology.
    masks : ndarray
        (n, size, size) uint8, 1 on foreground.

    Examples
    --------
    >>> images, masks = make_dataset("em", 2, size=64, seed=1)
    >>> images.shape, masks.shape
    ((2, 64, 64), (2, 64, 64))
    """
    _check(modality, protocol)
    n_images = check_positive_int(n_images, "n_images")
    pairs = [make_image(modality, size, seed, protocol, i) for i in range(n_images)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
