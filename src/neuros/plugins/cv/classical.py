"""The classical pixel classifier that ilastik made popular, as a library estimator: the named baseline.

Per-pixel features are scikit-image's :func:`skimage.feature.multiscale_basic_features` — Gaussian-smoothed
intensity, gradient magnitude (Sobel) and the two Hessian eigenvalues at σ = 1, 2, 4, 8, 16 (20 channels
per image channel): the ilastik feature set as scikit-image provides it. A 100-tree random forest is fit on
a seeded sample of ~200 k labelled pixels and predicts every pixel.

References
----------
C. Sommer, C. Straehle, U. Köthe, F. A. Hamprecht. *ilastik: Interactive learning and segmentation toolkit.*
IEEE ISBI 2011, 230–233. doi:10.1109/ISBI.2011.5872394.
scikit-image gallery, "Trainable segmentation using local features and random forests"
(``plot_trainable_segmentation``), which pairs ``multiscale_basic_features`` with a random forest.

Memory is bounded by one tile: features are computed tile by tile with a halo that covers the filters'
support (Gaussian truncated at 4 σ, plus 2 px for the Sobel and finite-difference Hessian), so tiled
features — and therefore predictions — equal whole-image ones exactly. The features of a whole 4096² image
(20 float32 channels, 1.3 GB) are never built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ._validation import as_image, check_mask, check_positive_int

__all__ = ["SAMPLING", "IlastikRecipe"]

SAMPLING = ("uniform", "balanced")


class IlastikRecipe(BaseEstimator):
    """ilastik-style pixel classifier: multiscale basic features + random forest (Sommer et al. 2011).

    Parameters
    ----------
    sigma_min, sigma_max : float
        Smallest and largest Gaussian σ of :func:`skimage.feature.multiscale_basic_features` (1 and 16).
    num_sigma : int, optional
        Number of σ between them; ``None`` takes powers of two (1, 2, 4, 8, 16).
    intensity, edges, texture : bool
        Feature families (smoothed intensity, gradient magnitude, Hessian eigenvalues).
    n_estimators : int
        Trees of the :class:`~sklearn.ensemble.RandomForestClassifier` (100, the ilastik default).
    max_depth : int, optional
        Tree depth limit (``None``: grown to purity, as ilastik's forest).
    max_pixels : int
        Training budget: at most this many labelled pixels are sampled (without replacement) over all
        training images; every labelled pixel is used when there are fewer (typical for scribbles).
    sampling : {"uniform", "balanced"}
        ``"uniform"`` (default) draws uniformly from all labelled pixels, so classes keep their frequency in
        the masks; ``"balanced"`` gives each class an equal share of ``max_pixels`` (a class with fewer
        labelled pixels contributes all it has).
    unlabelled : int, optional
        Mask value that is neither trained on nor a class (e.g. 0 in a scribble mask).
    tile : int
        Core tile side in pixels for feature computation and prediction; memory grows with
        ``(tile + 2·halo)²``, never with the image.
    n_jobs : int
        Threads for the forest (fit and predict) and the feature filters; ``-1`` = all cores.
    seed : int
        Seeds the pixel sample and the forest.

    Attributes
    ----------
    classes_ : ndarray
        The mask values seen in training (sorted; never ``unlabelled``).
    forest_ : RandomForestClassifier
    n_features_ : int
        Feature channels per pixel.
    n_train_pixels_ : int
        Labelled pixels the forest was fit on.
    class_counts_ : dict
        Training pixels per class value.
    """

    def __init__(
        self,
        sigma_min: float = 1.0,
        sigma_max: float = 16.0,
        num_sigma: int | None = None,
        intensity: bool = True,
        edges: bool = True,
        texture: bool = True,
        n_estimators: int = 100,
        max_depth: int | None = None,
        max_pixels: int = 200_000,
        sampling: str = "uniform",
        unlabelled: int | None = None,
        tile: int = 1024,
        n_jobs: int = -1,
        seed: int = 0,
    ) -> None:
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.num_sigma = num_sigma
        self.intensity = intensity
        self.edges = edges
        self.texture = texture
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.max_pixels = max_pixels
        self.sampling = sampling
        self.unlabelled = unlabelled
        self.tile = tile
        self.n_jobs = n_jobs
        self.seed = seed

    # ------------------------------------------------------------------ features
    @property
    def halo(self) -> int:
        """Context pixels a tile needs on each side for exact features: ⌊4 σ_max + 0.5⌋ + 2."""
        return int(4.0 * float(self.sigma_max) + 0.5) + 2

    def _workers(self) -> int:
        return (os.cpu_count() or 1) if self.n_jobs in (None, -1) else max(1, int(self.n_jobs))

    def features(self, image: np.ndarray) -> np.ndarray:
        """The (H, W, F) float32 feature stack of one (small) image, computed at once.

        For large images use :meth:`predict_proba` / :meth:`predict`, which work tile by tile.
        """
        from skimage.feature import multiscale_basic_features

        img = np.asarray(image, dtype=np.float32)
        return multiscale_basic_features(
            img, intensity=self.intensity, edges=self.edges, texture=self.texture,
            sigma_min=self.sigma_min, sigma_max=self.sigma_max, num_sigma=self.num_sigma,
            workers=self._workers(), channel_axis=-1 if img.ndim == 3 else None,
        )

    def _tiles(self, shape: tuple[int, int]) -> Iterator[tuple[slice, slice, slice, slice]]:
        """Core slices of the image and, inside the haloed tile, the core's slices."""
        t, halo = check_positive_int(self.tile, "tile"), self.halo
        h, w = shape
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                ty0, tx0 = max(0, y0 - halo), max(0, x0 - halo)
                ty1, tx1 = min(h, y1 + halo), min(w, x1 + halo)
                yield (slice(ty0, ty1), slice(tx0, tx1),
                       slice(y0 - ty0, y1 - ty0), slice(x0 - tx0, x1 - tx0))

    def _tile_features(self, image: np.ndarray) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
        """Yield ((rows, cols) of the image, (h, w, F) core features) tile by tile."""
        for ty, tx, cy, cx in self._tiles(image.shape[:2]):
            feats = self.features(image[ty, tx])[cy, cx]
            core = (slice(ty.start + cy.start, ty.start + cy.stop), slice(tx.start + cx.start, tx.start + cx.stop))
            yield core, feats

    def _features_at(self, image: np.ndarray, flat: np.ndarray) -> np.ndarray:
        """Features (n, F) at the flat pixel indices ``flat`` (sorted), computing only the tiles they fall in."""
        w = image.shape[1]
        r, c = np.divmod(flat, w)
        out: np.ndarray | None = None
        for (rows, cols), feats in self._tile_features(image):
            sel = (r >= rows.start) & (r < rows.stop) & (c >= cols.start) & (c < cols.stop)
            if not sel.any():
                continue
            if out is None:
                out = np.empty((flat.size, feats.shape[-1]), np.float32)
            out[sel] = feats[r[sel] - rows.start, c[sel] - cols.start]
        assert out is not None
        return out

    # ------------------------------------------------------------------ training
    def _check_images(self, images: Sequence[Any], what: str) -> list[np.ndarray]:
        out = []
        for i, im in enumerate(images):
            arr = as_image(im, f"{what}[{i}]")
            out.append(arr.astype(np.float32, copy=False))
        return out

    def _sample(self, masks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """Sorted flat indices of the sampled training pixels, one array per mask."""
        budget = check_positive_int(self.max_pixels, "max_pixels")
        flats = [np.flatnonzero(m != self.unlabelled) if self.unlabelled is not None else np.arange(m.size)
                 for m in masks]
        values = [m.ravel()[f] for m, f in zip(masks, flats, strict=True)]
        owner = np.repeat(np.arange(len(masks)), [f.size for f in flats])
        flat = np.concatenate(flats)
        value = np.concatenate(values)
        if self.sampling == "uniform":
            pick = rng.choice(flat.size, size=budget, replace=False) if flat.size > budget else None
        else:
            share = max(1, budget // len(np.unique(value)))
            order = np.argsort(value, kind="stable")
            starts = np.flatnonzero(np.r_[True, value[order][1:] != value[order][:-1]])
            sizes = np.diff(np.r_[starts, order.size])
            pick = np.concatenate([
                order[s + (rng.choice(n, size=share, replace=False) if n > share else np.arange(n))]
                for s, n in zip(starts, sizes, strict=True)])
        if pick is not None:
            flat, owner = flat[pick], owner[pick]
        return [np.sort(flat[owner == i]) for i in range(len(masks))]

    def fit(self, images: Sequence[Any], masks: Sequence[Any]) -> IlastikRecipe:
        """Fit the forest on sampled labelled pixels of ``images`` (lists of (H, W[, C]) arrays and masks).

        Raises
        ------
        ValueError
            One-line errors for mismatched lists or shapes, NaN pixels, an invalid ``sampling``, an
            ``unlabelled`` value that leaves no labelled pixel, or fewer than two classes.
        """
        from sklearn.ensemble import RandomForestClassifier

        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling {self.sampling!r} is not one of {', '.join(SAMPLING)}")
        if isinstance(images, np.ndarray) and images.ndim == 2:
            images, masks = [images], [masks]
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks; pass one mask per image")
        if len(images) == 0:
            raise ValueError("no training images; pass at least one image with its mask")
        imgs = self._check_images(images, "images")
        msks = [check_mask(m, im.shape, f"masks[{i}]") for i, (m, im) in enumerate(zip(masks, imgs, strict=True))]
        chans = {im.shape[2] if im.ndim == 3 else 1 for im in imgs}
        if len(chans) > 1:
            raise ValueError(f"training images mix channel counts {sorted(chans)}; pass images of one kind")
        rng = np.random.default_rng(self.seed)
        picks = self._sample(msks, rng)
        n = sum(p.size for p in picks)
        if n == 0:
            raise ValueError(f"the masks have no labelled pixel (every pixel is unlabelled={self.unlabelled}); "
                             "label some pixels of at least two classes")
        X = np.concatenate([self._features_at(im, p) for im, p in zip(imgs, picks, strict=True) if p.size])
        y = np.concatenate([m.ravel()[p] for m, p in zip(msks, picks, strict=True) if p.size])
        classes, counts = np.unique(y, return_counts=True)
        if classes.size < 2:
            raise ValueError(f"the labelled pixels hold one class only ({classes.tolist()}); "
                             "label pixels of at least two classes")
        self.forest_ = RandomForestClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth, n_jobs=self.n_jobs,
            random_state=self.seed)
        self.forest_.fit(X, y)
        self.classes_ = self.forest_.classes_
        self.n_features_ = X.shape[1]
        self.n_channels_ = chans.pop()
        self.n_train_pixels_ = int(n)
        self.class_counts_ = {int(c): int(k) for c, k in zip(classes, counts, strict=True)}
        return self

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self, image: Any) -> np.ndarray:
        if not hasattr(self, "forest_"):
            raise ValueError("this IlastikRecipe is not fitted yet; call fit(images, masks) first")
        img = as_image(image, "image").astype(np.float32, copy=False)
        chans = img.shape[2] if img.ndim == 3 else 1
        if chans != self.n_channels_:
            raise ValueError(f"image has {chans} channel(s) but the recipe was trained on {self.n_channels_}")
        return img

    def _forest_proba(self, X: np.ndarray) -> np.ndarray:
        """Forest probabilities: rows split across threads, each chunk summing the trees in a fixed order, so a
        pixel's probabilities do not depend on how the image is tiled or on thread timing."""
        X = np.ascontiguousarray(X, dtype=np.float32)  # the trees' input type: no per-tree conversion
        trees = self.forest_.estimators_
        out = np.zeros((X.shape[0], self.classes_.size), np.float64)

        def run(idx: np.ndarray) -> None:
            rows = slice(idx[0], idx[-1] + 1)
            for tree in trees:  # a loop over trees, as RandomForestClassifier.predict_proba does
                out[rows] += tree.predict_proba(X[rows], check_input=False)

        chunks = np.array_split(np.arange(X.shape[0]), max(1, min(self._workers(), X.shape[0] // 4096)))
        with ThreadPoolExecutor(max_workers=len(chunks)) as ex:
            list(ex.map(run, [c for c in chunks if c.size]))
        return (out / len(trees)).astype(np.float32)

    def _tile_proba(self, img: np.ndarray) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
        for core, feats in self._tile_features(img):
            h, w, f = feats.shape
            yield core, self._forest_proba(feats.reshape(h * w, f)).reshape(h, w, -1)

    def predict_proba(self, image: Any) -> np.ndarray:
        """Class probabilities (H, W, K) float32, K = ``len(classes_)``, computed tile by tile."""
        img = self._check_fitted(image)
        out = np.empty((*img.shape[:2], self.classes_.size), np.float32)
        for (rows, cols), p in self._tile_proba(img):
            out[rows, cols] = p
        return out

    def predict(self, image: Any) -> np.ndarray:
        """Label map (H, W) of ``classes_`` values (argmax of the probabilities), tile by tile."""
        img = self._check_fitted(image)
        out = np.empty(img.shape[:2], self.classes_.dtype)
        for (rows, cols), p in self._tile_proba(img):
            out[rows, cols] = self.classes_[np.argmax(p, axis=-1)]
        return out
