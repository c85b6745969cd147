"""Reading and writing real image files: TIFF stacks, PNG/JPEG, NIfTI, HDF5 (CREMI-style) and zarr.

Every reader returns a NumPy array and turns a missing, corrupt or truncated file into a one-line
``ValueError``/``FileNotFoundError`` naming the file; the CLI shows that line. Writers go through a temporary
file renamed into place, so a failed write leaves nothing half-written.

Outputs are written so that the tools a lab already has open them as they are:

- label masks as palette PNG/TIFF (:func:`write_mask`): the pixel values are the class values, the palette
  shows 0 black and every other class in a bright colour (Fiji, napari, any image viewer); palette PNGs are
  read back as their indices (PIL, :func:`read_array`; ``imageio.v3.imread(path, mode="P")``);
- NIfTI inputs give NIfTI outputs with the input's affine and header (:func:`write_nifti`), so FSLeyes,
  ITK-SNAP and 3D Slicer overlay them on the input;
- slices cut from a volume go back into the volume's axis order (:func:`stack_slices`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..output import honour_umask

__all__ = [
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "expand_paths",
    "file_format",
    "image_slices",
    "is_single_image",
    "label_palette",
    "nifti_suffix",
    "open_tiff",
    "output_name",
    "overlay_preview",
    "read_array",
    "read_mask",
    "stack_slices",
    "write_image",
    "write_mask",
    "write_nifti",
    "write_probabilities",
]

_FORMATS = {
    ".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
    ".nii": "nifti", ".nii.gz": "nifti", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".zarr": "zarr",
    ".npy": "npy",
}
IMAGE_SUFFIXES = tuple(_FORMATS)
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def file_format(path: str | os.PathLike[str]) -> str:
    """``"tiff"``, ``"png"``, ``"jpeg"``, ``"nifti"``, ``"hdf5"``, ``"zarr"`` or ``"npy"`` from the file name."""
    name = Path(path).name.lower()
    for suffix in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return _FORMATS[suffix]
    raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)}")


def _fail(path: Path, e: BaseException) -> ValueError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if file_format(path) == "tiff":
        return ValueError(f"cannot read {path}: corrupt or truncated tiff file, not a valid TIFF ({msg})")
    return ValueError(f"cannot read {path}: corrupt or truncated {file_format(path)} file ({msg})")


@contextlib.contextmanager
def open_tiff(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Open a TIFF file that holds at least one image, as a ``tifffile.TiffFile``.

    Random bytes, a header with no readable page and any decoder error become one ``ValueError`` naming the
    file ("not a valid TIFF file"); tifffile's own log warnings about the broken structure are silenced.
    Every reader of TIFF files here (:func:`read_array`, ``volume convert``) opens them through this.
    """
    import tifffile

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # "invalid offset to first page" etc.: we raise our own line instead
    try:
        try:
            tf = tifffile.TiffFile(p)
        except Exception as e:
            raise _fail(p, e) from None
        try:
            if not tf.pages or not tf.series or 0 in tf.series[0].shape:
                raise ValueError(f"cannot read {p}: not a valid TIFF file (no image in it)")
            yield tf
        finally:
            tf.close()
    finally:
        log.setLevel(level)


def read_array(path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:
    """Read a whole image or volume into memory.

    Parameters
    ----------
    path : path
        A ``.tif/.tiff`` (pages stacked as (Z, H, W)), ``.png/.jpg``, ``.nii/.nii.gz``, ``.h5/.hdf5/.hdf`` or
        ``.zarr`` file/folder, or a NumPy ``.npy`` file.
    key : str, optional
        Dataset inside an HDF5 file or zarr group (e.g. ``"volumes/raw"`` in CREMI files). Required when the
        container holds more than one array.
    """
    p = Path(path)
    fmt = file_format(p)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        if fmt == "tiff":
            with open_tiff(p) as tf:
                return np.asarray(tf.asarray())
        if fmt == "png":
            return _read_png(p)
        if fmt == "jpeg":
            import imageio.v3 as iio

            return np.asarray(iio.imread(p))
        if fmt == "nifti":
            import nibabel as nib

            img = nib.load(str(p))
            return np.asarray(img.dataobj)  # reads every byte now, so truncation fails here
        if fmt == "npy":
            return np.asarray(np.load(p, allow_pickle=False))
        if fmt == "hdf5":
            return _read_container_h5(p, key)
        return _read_container_zarr(p, key)
    except (FileNotFoundError, KeyError) as e:
        raise type(e)(str(e).strip("'\"")) from None
    except ValueError as e:
        if str(p) in str(e):  # already one line naming the file (open_tiff)
            raise
        raise _fail(p, e) from None
    except Exception as e:  # any decoder error is a bad file; re-raised as one line naming it
        raise _fail(p, e) from None


def _read_png(p: Path) -> np.ndarray:
    """A PNG as an array; a palette ("P") PNG gives its indices, the label values of a mask."""
    from PIL import Image

    with Image.open(p) as im:
        if im.mode == "P":
            im.load()
            return np.asarray(im)
    import imageio.v3 as iio

    return np.asarray(iio.imread(p))


def _pick(keys: list[str], key: str | None, p: Path) -> str:
    if key is not None:
        if key not in keys:
            raise KeyError(f"{p} has no dataset {key!r}; available: {', '.join(keys) or '(none)'}")
        return key
    if len(keys) != 1:
        raise KeyError(f"{p} holds {len(keys)} datasets ({', '.join(keys)}); choose one with key=")
    return keys[0]


def _read_container_h5(p: Path, key: str | None) -> np.ndarray:
    import h5py

    with h5py.File(p, "r") as f:
        keys: list[str] = []
        f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
        return np.asarray(f[_pick(keys, key, p)][()])


def _read_container_zarr(p: Path, key: str | None) -> np.ndarray:
    import zarr

    node = zarr.open(str(p), mode="r")
    if isinstance(node, zarr.Array):
        return np.asarray(node[...])
    keys = [k for k, _ in node.arrays()]
    return np.asarray(node[_pick(keys, key, p)][...])


def image_slices(array: np.ndarray, axis: int | None = None) -> list[np.ndarray]:
    """2-D images from an array: an (H, W) image, an (H, W, 3|4) colour image, or slices of a volume.

    With ``axis=None`` a 3-D array whose last axis has 3 or 4 entries is one colour image and any other 3-D
    array is a stack cut along axis 0; with an explicit ``axis`` every 3-D array is a volume cut along it
    (so a 3-slice NIfTI volume is not mistaken for RGB). 4-D and larger arrays are refused.
    """
    a = np.asarray(array)
    if a.ndim == 2 or (a.ndim == 3 and axis is None and a.shape[2] in (3, 4)):
        return [a]
    if a.ndim == 3:
        ax = 0 if axis is None else int(axis)
        if not -3 <= ax < 3:
            raise ValueError(f"axis {ax} is out of range for a 3-D array of shape {a.shape}")
        return list(np.moveaxis(a, ax, 0))
    raise ValueError(f"cannot cut {a.ndim}-D array of shape {a.shape} into 2-D images")


def expand_paths(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files from arguments: files as given, folders expanded to their readable images (sorted by name)."""
    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir() and file_format_or_none(p) != "zarr":
            found = sorted(c for c in p.iterdir() if file_format_or_none(c) is not None and not c.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no image file ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif p.exists():
            file_format(p)
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder (it does not exist)")
    if not out:
        raise ValueError("no input files given")
    return out


def file_format_or_none(path: Path) -> str | None:
    """:func:`file_format`, or None for an unsupported name."""
    try:
        return file_format(path)
    except ValueError:
        return None


def is_single_image(shape: tuple[int, ...], axis: int | None = None) -> bool:
    """Whether :func:`image_slices` treats an array of ``shape`` as one image rather than a volume."""
    return len(shape) == 2 or (len(shape) == 3 and axis is None and shape[2] in (3, 4))


def stack_slices(slices: list[np.ndarray], axis: int | None, shape: tuple[int, ...]) -> np.ndarray:
    """Put per-slice results of :func:`image_slices` back into the input's axis order (its inverse).

    Parameters
    ----------
    slices : list of (H, W) or (H, W, K) arrays
        One result per slice, in slice order (e.g. label maps, or class probabilities with K last).
    axis : int or None
        The ``axis`` given to :func:`image_slices`.
    shape : tuple of int
        Shape of the array that was cut.

    Returns
    -------
    ndarray
        ``slices[0]`` for a single image; for a volume, the slices stacked along the axis they were cut
        from, so that ``result.shape[:3] == shape`` (a trailing per-pixel axis such as K stays last).
    """
    if is_single_image(tuple(shape), axis):
        return slices[0]
    ax = 0 if axis is None else int(axis) % 3
    return np.moveaxis(np.stack(slices), 0, ax)


def output_name(path: str | os.PathLike[str]) -> str:
    """The stem outputs of an input are named after: ``brain.nii.gz`` → ``brain``, ``a.b.tif`` → ``a``."""
    return Path(path).name.split(".")[0] or "image"


def nifti_suffix(path: str | os.PathLike[str]) -> str:
    """``.nii.gz`` or ``.nii``, as the NIfTI file ``path`` ends."""
    return ".nii.gz" if Path(path).name.lower().endswith(".nii.gz") else ".nii"


def label_palette() -> np.ndarray:
    """(256, 3) uint8 colours of label values: 0 black, 255 white, 1…254 bright, well-separated hues.

    Value k (1…254) gets hue ``(k - 1) · 0.618…`` (golden-ratio steps), full saturation and brightness, so
    class 1 is red and neighbouring values differ clearly.
    """
    from matplotlib.colors import hsv_to_rgb

    k = np.arange(1, 255, dtype=np.float64)
    hsv = np.stack([np.mod((k - 1) * 0.6180339887, 1.0), np.ones_like(k), np.ones_like(k)], axis=1)
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[1:255] = np.round(hsv_to_rgb(hsv) * 255).astype(np.uint8)
    pal[255] = 255
    return pal


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` (same suffix) renamed onto it on success, removed on failure."""
    suffix = nifti_suffix(path) if file_format_or_none(path) == "nifti" else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        honour_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _label_dtype(m: np.ndarray) -> type[np.unsignedinteger]:
    if not np.issubdtype(m.dtype, np.integer) and m.dtype != bool:
        raise TypeError(f"mask must hold integer labels, got dtype {m.dtype}")
    if m.size and int(m.min()) < 0:
        raise ValueError(f"mask holds negative labels (min {int(m.min())}); labels must be >= 0")
    top = int(m.max()) if m.size else 0
    return np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.uint32)


def write_mask(path: str | os.PathLike[str], mask: np.ndarray, like: str | os.PathLike[str] | None = None,
               **meta: Any) -> Path:
    """Write a label mask atomically so that viewers show its classes and readers get the class values.

    Parameters
    ----------
    path : path
        ``.png`` (2-D, labels < 256), ``.tif/.tiff`` (2-D or a stack) or ``.nii/.nii.gz``.
    mask : ndarray of int or bool
        Label values (>= 0), stored unchanged: uint8 / uint16 / uint32 by range.
    like : path, optional
        For NIfTI: the input NIfTI whose affine and header the mask takes (see :func:`write_nifti`).
    **meta
        TIFF metadata (JSON in the ImageDescription tag).

    Notes
    -----
    8-bit PNG and TIFF masks are palette images (:func:`label_palette`): the stored values are the labels and
    the palette shows 0 black, 1 red, 255 white and other classes in distinct bright colours — a 0/1 mask is
    no longer black in every viewer. PIL, tifffile and :func:`read_array` read the labels back.
    """
    p = Path(path)
    m = np.asarray(mask)
    dtype = _label_dtype(m)
    fmt = file_format(p)
    if fmt == "png" and dtype != np.uint8:
        raise ValueError(f"{p}: labels up to {int(m.max())} do not fit an 8-bit PNG; write .tif instead")
    if fmt == "png" and m.ndim != 2:
        raise ValueError(f"{p}: a PNG holds one 2-D mask, got shape {m.shape}; write .tif instead")
    if fmt == "nifti":
        return write_nifti(p, m.astype(dtype), like=like, intent="label")
    if fmt not in ("png", "tiff"):
        raise ValueError(f"{p}: masks are written as .png, .tif or .nii(.gz), not {fmt}")
    m = m.astype(dtype)
    with _atomic_file(p) as tmp:
        if fmt == "png":
            from PIL import Image

            im = Image.frombytes("P", (m.shape[1], m.shape[0]), np.ascontiguousarray(m).tobytes())
            im.putpalette(label_palette().ravel().tolist())
            im.save(tmp, format="PNG")
        else:
            import tifffile

            kw: dict[str, Any] = {"photometric": "minisblack"}
            if dtype == np.uint8:  # TIFF colormaps are 16-bit per channel
                kw = {"photometric": "palette", "colormap": label_palette().T.astype(np.uint16) * 257}
            tifffile.imwrite(tmp, m, metadata=dict(meta) or None, **kw)
    return p


def write_nifti(path: str | os.PathLike[str], data: np.ndarray, like: str | os.PathLike[str] | None = None,
                intent: str = "none", description: str = "neuros-cv") -> Path:
    """Write ``data`` as NIfTI, atomically, with the affine and header of the NIfTI file ``like``.

    Parameters
    ----------
    path : path
        ``.nii`` or ``.nii.gz``.
    data : ndarray
        In the array order of ``like`` (its first axes must match ``like``'s shape; extra trailing axes,
        e.g. one per class, are allowed). Stored in its own dtype, unscaled.
    like : path, optional
        The input image: its class (NIfTI-1/2), affine, sform/qform codes, voxel sizes and units are kept.
        Without it the affine is the identity.
    intent : str
        NIfTI intent: ``"label"`` for masks (viewers pick a label colour map), ``"none"`` otherwise.
    description : str
        The header's ``descrip`` field (80 bytes at most).
    """
    import nibabel as nib

    p = Path(path)
    if file_format(p) != "nifti":
        raise ValueError(f"{p}: a NIfTI file name ends in .nii or .nii.gz")
    arr = np.asarray(data)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if like is None:
        img = nib.Nifti1Image(arr, np.eye(4))
    else:
        ref = nib.load(str(like))
        if ref.shape[: min(arr.ndim, len(ref.shape), 3)] != arr.shape[: min(arr.ndim, len(ref.shape), 3)]:
            raise ValueError(f"{p}: data of shape {arr.shape} does not fit {like} of shape {ref.shape}")
        cls = type(ref) if isinstance(ref, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
        img = cls(arr, ref.affine, header=ref.header.copy())
    hdr = img.header
    hdr.set_data_dtype(arr.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_intent(intent)
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
    hdr["cal_min"], hdr["cal_max"] = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    hdr["descrip"] = description.encode("ascii", "replace")[:79]
    with _atomic_file(p) as tmp:
        nib.save(img, str(tmp))
    return p


def write_probabilities(path: str | os.PathLike[str], proba: np.ndarray, like: str | os.PathLike[str] | None = None,
                        classes: list[int] | None = None) -> Path:
    """Write class probabilities (…spatial…, K) float32: NIfTI (class last) or an ImageJ TIFF (class = C).

    A ``.tif`` of a 2-D image holds (K, H, W) with axes ``CYX``; of a stack (Z, K, H, W) with ``ZCYX`` —
    Fiji opens it as a hyperstack with one channel per class. A NIfTI keeps the spatial axes of ``like`` and
    adds the classes as the 4th axis (one volume per class in FSLeyes).
    """
    p = Path(path)
    a = np.asarray(proba, dtype=np.float32)
    if file_format(p) == "nifti":
        return write_nifti(p, a, like=like, description="neuros-cv class probabilities")
    if file_format(p) != "tiff":
        raise ValueError(f"{p}: probabilities are written as .tif or .nii(.gz)")
    if a.ndim == 3:
        data, axes = np.moveaxis(a, -1, 0), "CYX"
    elif a.ndim == 4:
        data, axes = np.moveaxis(a, -1, 1), "ZCYX"
    else:
        raise ValueError(f"{p}: probabilities must be (H, W, K) or (Z, H, W, K), got shape {a.shape}")
    import tifffile

    meta: dict[str, Any] = {"axes": axes}
    if classes is not None:
        meta["Labels"] = [f"class {c}" for c in classes] * (a.shape[0] if a.ndim == 4 else 1)
    with _atomic_file(p) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(data), imagej=True, metadata=meta)
    return p


def overlay_preview(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An (H, W, 3) uint8 picture of ``image`` (grey, robustly scaled) with the mask's classes tinted.

    Class 0 is left untinted; other classes take their :func:`label_palette` colour at ``alpha``.
    """
    from ..preprocess import to_float01

    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2) if img.shape[2] >= 3 else img[..., 0]
    grey = to_float01(img, "percentile")
    rgb = np.repeat(grey[..., None], 3, axis=2) * 255.0
    m = np.asarray(mask)
    if m.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image shape {rgb.shape[:2]}")
    colours = label_palette().astype(np.float64)[np.clip(m, 0, 255).astype(np.intp)]
    fg = (m != 0)[..., None]
    out = np.where(fg, (1 - alpha) * rgb + alpha * colours, rgb)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_image(path: str | os.PathLike[str], image: np.ndarray, like: str | os.PathLike[str] | None = None,
                description: str = "neuros-cv") -> Path:
    """Write an image or volume atomically in the format its name says: NIfTI, TIFF, PNG or ``.npy``.

    NIfTI takes the affine and header of ``like`` (a NIfTI input) — a warped or aligned image keeps the
    fixed image's place in scanner space. TIFF stores ``description`` in its ImageDescription tag.
    """
    p = Path(path)
    fmt = file_format(p)
    a = np.asarray(image)
    if fmt == "nifti":
        return write_nifti(p, a, like=like, description=description)
    with _atomic_file(p) as tmp:
        if fmt == "tiff":
            import tifffile

            photometric = "rgb" if a.ndim in (3, 4) and a.shape[-1] in (3, 4) and a.dtype == np.uint8 \
                else "minisblack"
            tifffile.imwrite(tmp, a, photometric=photometric, description=description, metadata=None)
        elif fmt == "npy":
            np.save(tmp, a)
        elif fmt == "png":
            import imageio.v3 as iio

            iio.imwrite(tmp, a, extension=".png")
        else:
            raise ValueError(f"{p}: write images as .tif, .nii(.gz), .png or .npy, not {fmt}")
    return p


def read_mask(path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:
    """Read a label mask. The same as :func:`read_array` (which already gives a palette PNG's indices, the
    labels, rather than the colours they are shown in); named for what it is used for.

    A 1-bit PNG reads as bool and an 8-bit one as uint8; decode binary masks by dtype with
    :func:`neuros.plugins.cv.labels.decode_binary_mask`.
    """
    return read_array(path, key=key)
