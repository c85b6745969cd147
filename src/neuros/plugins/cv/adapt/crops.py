"""Unlabelled training images read lazily, and the multi-crop views of self-distillation made from them.

:func:`open_images` turns the inputs every command takes (TIFF stacks, PNG/JPEG, NIfTI, HDF5, zarr/OME-Zarr,
``.npy``, folders of these) into :class:`SliceSource` objects that read **windows of one 2-D slice** on demand:
TIFF files are memory-mapped when uncompressed (else one page is decoded at a time), zarr/HDF5 arrays and NIfTI
proxies are sliced, ``.npy`` files are memory-mapped. A whole volume is never loaded. 3-D arrays follow the rule
of every command (:func:`~neuros.plugins.cv.datasets.io.image_slices`): an (H, W, 3|4) array is one colour image
(made grey), any other 3-D array is a stack of slices along ``axis`` (default 0).

:class:`MultiCropSampler` draws, for every step, a batch of regions and from each region two *global* and
``n_local`` *local* crops, the multi-crop strategy of SwAV/DINO (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021), with augmentations that suit grey-level microscopy and MRI:
flips, 90° rotations, contrast/brightness and gamma jitter, Gaussian blur, Gaussian noise and solarisation — no
colour jitter. Everything a step draws comes from generators seeded by ``(seed, step)``, so the views of step
``k`` are the same whether or not the run was interrupted before it (exact resume needs no sampler state).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.io import expand_paths, file_format, open_tiff

__all__ = ["MultiCropSampler", "SliceSource", "Views", "augment", "open_images"]

#: Smallest image side (pixels) a crop is taken from.
MIN_SIDE = 16


@dataclass
class SliceSource:
    """The 2-D slices of one input file, read window by window.

    Attributes
    ----------
    path : Path
        The file.
    array : array-like
        A lazily sliced array (memmap, zarr/HDF5 dataset, NIfTI proxy, or an in-memory 2-D image).
    axis : int or None
        The slicing axis of a 3-D stack; None for a 2-D or colour image.
    colour : bool
        Whether the array is one (H, W, C) colour image (read as the mean of its channels).
    lo, hi : float
        The intensity range mapped to [0, 1].
    """

    path: Path
    array: Any
    axis: int | None
    colour: bool
    lo: float
    hi: float

    @property
    def n_slices(self) -> int:
        return 1 if self.axis is None else int(self.array.shape[self.axis])

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of every slice."""
        s = tuple(int(v) for v in self.array.shape)
        if self.axis is None:
            return s[0], s[1]
        rest = [v for i, v in enumerate(s) if i != self.axis]
        return rest[0], rest[1]

    def read(self, index: int, ys: slice, xs: slice) -> np.ndarray:
        """The window ``[ys, xs]`` of slice ``index``, float32 in [0, 1]."""
        if self.axis is None:
            win = np.asarray(self.array[ys, xs])
        else:
            idx: list[Any] = [ys, xs]
            idx.insert(self.axis, int(index))
            win = np.asarray(self.array[tuple(idx)])
        win = win.astype(np.float32)
        if self.colour:
            win = win[..., :3].mean(axis=-1)
        scale = self.hi - self.lo
        return np.clip((win - self.lo) / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(win)


def _tiff_array(p: Path) -> Any:
    """A memmap of an uncompressed TIFF, else a page-by-page reader of its first series."""
    import tifffile

    with open_tiff(p) as tf:
        shape, dtype = tuple(tf.series[0].shape), tf.series[0].dtype
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        return tifffile.memmap(p, mode="r")
    except Exception:  # compressed or tiled: read one page at a time
        return _PagedTiff(p, shape, dtype)
    finally:
        log.setLevel(level)


class _PagedTiff:
    """Index ``[z, ys, xs]`` (or ``[ys, xs]`` of a one-page file) decoding one page at a time."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.ndim = len(shape)

    def __getitem__(self, key: tuple[Any, ...]) -> np.ndarray:
        import tifffile

        if self.ndim == 2 or (self.ndim == 3 and self.shape[-1] in (3, 4) and not isinstance(key[0], int)):
            return np.asarray(tifffile.imread(self.path, key=0))[key]
        if not isinstance(key[0], int):
            raise ValueError(f"{self.path}: a compressed TIFF stack is read page by page; slice it along axis 0 "
                             "(--axis 0) or convert it with `neuros-cv volume convert`")
        page = np.asarray(tifffile.imread(self.path, key=int(key[0])))
        return page[key[1:]]


def _lazy_array(p: Path, key: str | None) -> Any:
    fmt = file_format(p)
    if fmt == "tiff":
        return _tiff_array(p)
    if fmt == "npy":
        return np.load(p, mmap_mode="r", allow_pickle=False)
    if fmt == "nifti":
        import nibabel as nib

        return nib.load(str(p)).dataobj
    if fmt == "zarr":
        import zarr

        node = zarr.open(str(p), mode="r")
        if isinstance(node, zarr.Array):
            return node
        keys = [k for k, _ in node.arrays()]
        if key is None and not keys:  # OME-Zarr: the multiscale levels are arrays of sub-groups? take level 0
            raise KeyError(f"{p} holds no array; give the dataset with --key")
        return node[_pick(keys, key, p)]
    if fmt == "hdf5":
        import h5py

        f = h5py.File(p, "r")
        keys: list[str] = []
        f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
        return f[_pick(keys, key, p)]
    from ..datasets.io import read_array

    return read_array(p)


def _pick(keys: list[str], key: str | None, p: Path) -> str:
    if key is not None:
        if key not in keys:
            raise KeyError(f"{p} has no dataset {key!r}; available: {', '.join(keys) or '(none)'}")
        return key
    if "0" in keys:  # OME-Zarr multiscales: the full-resolution level
        return "0"
    if len(keys) != 1:
        raise KeyError(f"{p} holds {len(keys)} datasets ({', '.join(keys)}); choose one with --key")
    return keys[0]


def _range(src: SliceSource, dtype: np.dtype) -> tuple[float, float]:
    """The intensity range of a source, as :func:`~neuros.plugins.cv.preprocess.to_float01` ("auto") would
    choose it: uint8 and bool by their dtype, anything else by the 0.5/99.5 percentiles of up to three slices
    (read at every 4th pixel), floats already in [0, 1] kept."""
    if dtype == np.bool_:
        return 0.0, 1.0
    if dtype == np.uint8:
        return 0.0, 255.0
    h, w = src.shape
    picks = np.unique(np.linspace(0, src.n_slices - 1, min(3, src.n_slices)).round().astype(int))
    step = max(1, min(h, w) // 256)
    raw = []
    for i in picks:
        idx: list[Any] = [slice(0, h, step), slice(0, w, step)]
        if src.axis is not None:
            idx.insert(src.axis, int(i))
        a = np.asarray(src.array[tuple(idx)], dtype=np.float64)
        raw.append(a[..., :3].mean(-1).ravel() if src.colour else a.ravel())
    vals = np.concatenate(raw)
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"{src.path}: image contains NaN/inf pixels; clean it before adapting")
    if not np.issubdtype(dtype, np.integer) and vals.min() >= 0.0 and vals.max() <= 1.0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(vals.min()), float(vals.max())
    return lo, hi


def open_source(path: str | Path, axis: int | None = None, key: str | None = None) -> SliceSource:
    """Open one input file as a :class:`SliceSource` (nothing but its header and a few sampled pixels read).

    Raises a one-line ``ValueError`` (naming the file) for anything that is not a 2-D image or 3-D stack.
    """
    p = Path(path)
    arr = _lazy_array(p, key)
    shape = tuple(int(v) for v in arr.shape)
    colour = len(shape) == 3 and axis is None and shape[2] in (3, 4)
    if len(shape) == 2 or colour:
        ax = None
    elif len(shape) == 3:
        ax = 0 if axis is None else int(axis)
        if not -3 <= ax < 3:
            raise ValueError(f"{p}: axis {ax} is out of range for a 3-D array of shape {shape}")
        ax %= 3
    else:
        raise ValueError(f"{p}: cannot cut a {len(shape)}-D array of shape {shape} into 2-D images")
    src = SliceSource(p, arr, ax, colour, 0.0, 1.0)
    if min(src.shape) < MIN_SIDE or src.n_slices < 1:
        raise ValueError(f"{p}: slices of {src.shape[0]}×{src.shape[1]} px are too small to crop "
                         f"(at least {MIN_SIDE}×{MIN_SIDE})")
    src.lo, src.hi = _range(src, np.dtype(getattr(arr, "dtype", np.float32)))
    return src


def open_images(items: Sequence[str | Path], axis: int | None = None, key: str | None = None,
                on_error: Callable[[Path, Exception], None] | None = None) -> list[SliceSource]:
    """Open every input (files, or folders expanded to their images) lazily.

    Parameters
    ----------
    items : sequence of paths
        Files and folders, as every command takes them.
    axis : int, optional
        Slicing axis of 3-D stacks (default 0; an (H, W, 3|4) array is one colour image unless given).
    key : str, optional
        Dataset inside HDF5/zarr containers (an OME-Zarr's level ``0`` is taken by default).
    on_error : callable, optional
        Called with (path, error) for a bad file instead of raising (``--skip-errors``).

    Returns
    -------
    list of SliceSource
    """
    out = []
    for p in expand_paths(items):
        try:
            out.append(open_source(p, axis, key))
        except (ValueError, TypeError, OSError, RuntimeError, KeyError, MemoryError) as e:
            if on_error is None:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(msg if str(p) in msg else f"{p}: {msg}") from None
            on_error(p, e)
    if not out:
        raise ValueError("no readable image among the inputs; nothing to adapt on")
    return out


@dataclass
class Views:
    """One step's crops: ``globals_`` (2·B, 1, G, G) — view 0 of every region, then view 1 — and ``locals_``
    (n_local·B, 1, L, L), float32 in [0, 1]; ``where`` names (file, slice, y, x, side) of each region."""

    globals_: Any
    locals_: Any
    where: list[tuple[str, int, int, int, int]]


def _resize(win: Any, boxes: np.ndarray, size: int) -> Any:
    """Crop ``boxes`` (n, 3: y, x, side) out of the (1, 1, R, R) tensor ``win`` and resize each to ``size``."""
    import torch
    import torch.nn.functional as F

    crops = [F.interpolate(win[:, :, y:y + s, x:x + s], size=(size, size), mode="bilinear",
                           antialias=s > size, align_corners=False) for y, x, s in boxes.tolist()]
    return torch.cat(crops, dim=0)


def _gauss_blur(x: Any, sigma: Any) -> Any:
    """Per-sample Gaussian blur of (N, 1, S, S) with standard deviations ``sigma`` (N,), separable, reflect pad."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    radius = math.ceil(3 * float(sigma.max())) if n else 0
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].clamp_min(1e-3)) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (N, K)
    xp = F.pad(x.transpose(0, 1), (radius, radius, 0, 0), mode="reflect")  # (1, N, S, S+2r)
    x = F.conv2d(xp, k[:, None, None, :], groups=n)
    xp = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(xp, k[:, None, :, None], groups=n).transpose(0, 1)


def augment(x: Any, g: Any, blur_p: float, solarize_p: float, noise_p: float = 0.5) -> Any:
    """Grey-level augmentations of a batch (N, 1, S, S) in [0, 1], drawn from the torch generator ``g``.

    Per sample: horizontal flip (p 0.5), a 90° rotation k ∈ {0..3}, contrast × U(0.6, 1.4) about the mean and
    brightness + U(−0.15, 0.15) (p 0.8), gamma x^γ with log γ ~ U(log 0.7, log 1.4) (p 0.8), Gaussian blur with
    σ ~ U(0.1, 2) px (p ``blur_p``), Gaussian noise with σ ~ U(0, 0.05) (p ``noise_p``) and solarisation of
    values above 0.5 (p ``solarize_p``), as DINO's recipe with colour jitter and grey-scale conversion taken out.
    """
    import torch

    n = x.shape[0]
    u = torch.rand(n, 10, generator=g)
    x = torch.where((u[:, 0] < 0.5).view(n, 1, 1, 1), x.flip(-1), x)
    k = (u[:, 1] * 4).long().clamp(max=3)
    rots = torch.stack([torch.rot90(x, r, dims=(-2, -1)) for r in range(4)])  # (4, N, 1, S, S)
    x = rots[k, torch.arange(n)]
    on = (u[:, 2] < 0.8).view(n, 1, 1, 1)
    c = (0.6 + 0.8 * u[:, 3]).view(n, 1, 1, 1)
    b = (-0.15 + 0.3 * u[:, 4]).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.where(on, ((x - mean) * c + mean + b).clamp(0, 1), x)
    gamma = torch.exp(math.log(0.7) + (math.log(1.4) - math.log(0.7)) * u[:, 5]).view(n, 1, 1, 1)
    x = torch.where((u[:, 6] < 0.8).view(n, 1, 1, 1), x.clamp_min(1e-6) ** gamma, x)
    sigma = 0.1 + 1.9 * torch.rand(n, generator=g)
    blurred = _gauss_blur(x, sigma)
    x = torch.where((u[:, 7] < blur_p).view(n, 1, 1, 1), blurred, x)
    noise = torch.randn(x.shape, generator=g) * (0.05 * torch.rand(n, generator=g)).view(n, 1, 1, 1)
    x = torch.where((u[:, 8] < noise_p).view(n, 1, 1, 1), (x + noise).clamp(0, 1), x)
    x = torch.where((u[:, 9] < solarize_p).view(n, 1, 1, 1), torch.where(x > 0.5, 1 - x, x), x)
    return x.contiguous()


class MultiCropSampler:
    """Two global and ``n_local`` local crops of ``batch_size`` random regions per step.

    Parameters
    ----------
    sources : list of SliceSource
        From :func:`open_images`.
    batch_size : int
        Regions per step (each gives 2 global + ``n_local`` local crops).
    global_size, local_size : int
        Side of the global and local crops fed to the network (pixels; multiples of the patch size).
    n_local : int
        Local crops per region.
    region : int
        Side (source pixels) of the square region the crops of one image are cut from (clipped to the slice).
        DINO cuts its crops from a whole photograph; a 1024² EM section holds many "photographs", so crops are
        cut from a random region instead, which keeps them at (or near) the data's own resolution.
    global_scale, local_scale : (float, float)
        Area of a crop as a fraction of the region (DINO: (0.4, 1) and (0.05, 0.4)).
    seed : int
        Base seed; step ``k`` draws from ``(seed, k)`` only.
    """

    def __init__(self, sources: Sequence[SliceSource], batch_size: int = 8, global_size: int = 224,
                 local_size: int = 96, n_local: int = 6, region: int | None = None,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4),
                 seed: int = 0) -> None:
        if not sources:
            raise ValueError("no images to sample crops from")
        if batch_size < 1 or n_local < 0 or global_size < 8 or local_size < 8:
            raise ValueError(f"batch_size must be ≥ 1, n_local ≥ 0 and crop sizes ≥ 8 (got {batch_size}, "
                             f"{n_local}, {global_size}, {local_size})")
        self.sources = list(sources)
        self.batch_size, self.global_size, self.local_size, self.n_local = batch_size, global_size, local_size, n_local
        self.region = int(region or 2 * global_size)
        self.global_scale, self.local_scale, self.seed = global_scale, local_scale, int(seed)
        # every slice of every source, drawn uniformly
        self._index = np.array([(i, z) for i, s in enumerate(self.sources) for z in range(s.n_slices)], np.int64)

    @property
    def n_slices(self) -> int:
        return len(self._index)

    def _boxes(self, rng: np.random.Generator, side: int, scale: tuple[float, float], n: int) -> np.ndarray:
        area = rng.uniform(scale[0], scale[1], n)
        s = np.clip(np.round(side * np.sqrt(area)).astype(np.int64), 4, side)
        y = (rng.random(n) * (side - s + 1)).astype(np.int64)
        x = (rng.random(n) * (side - s + 1)).astype(np.int64)
        return np.stack([y, x, s], axis=1)

    def sample(self, step: int) -> Views:
        """The crops of step ``step`` (deterministic in ``(seed, step)``)."""
        import torch

        rng = np.random.default_rng([self.seed, int(step)])
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        gl: list[list[Any]] = [[], []]
        lo: list[Any] = []
        where = []
        for row in rng.integers(0, len(self._index), self.batch_size):
            si, z = (int(v) for v in self._index[row])
            src = self.sources[si]
            h, w = src.shape
            side = min(self.region, h, w)
            y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            win = torch.from_numpy(np.ascontiguousarray(src.read(z, slice(y0, y0 + side), slice(x0, x0 + side))))
            win = win[None, None]
            where.append((str(src.path), z, y0, x0, side))
            g2 = _resize(win, self._boxes(rng, side, self.global_scale, 2), self.global_size)
            gl[0].append(g2[:1])
            gl[1].append(g2[1:])
            if self.n_local:
                lo.append(_resize(win, self._boxes(rng, side, self.local_scale, self.n_local), self.local_size))
        v0 = augment(torch.cat(gl[0]), g, blur_p=1.0, solarize_p=0.0)
        v1 = augment(torch.cat(gl[1]), g, blur_p=0.1, solarize_p=0.2)
        locs = (augment(torch.stack(lo, 1).flatten(0, 1), g, blur_p=0.5, solarize_p=0.0) if self.n_local
                else torch.zeros(0, 1, self.local_size, self.local_size))
        # locals ordered crop-major: local crop j of every region, then j + 1 (as the global views)
        return Views(torch.cat([v0, v1]), locs, where)
