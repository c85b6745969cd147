"""Reading and writing real image files: TIFF stacks, PNG/JPEG, NIfTI, HDF5 (CREMI-style) and zarr.

Every reader returns a NumPy array and turns a missing, corrupt or truncated file into a one-line
``ValueError``/``FileNotFoundError`` naming the file; the CLI shows that line. Writers go through a temporary
file renamed into place, so a failed write leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "expand_paths",
    "file_format",
    "image_slices",
    "read_array",
    "read_mask",
    "write_mask",
]

_FORMATS = {
    ".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
    ".nii": "nifti", ".nii.gz": "nifti", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".zarr": "zarr",
    ".npy": "npy",
}
IMAGE_SUFFIXES = tuple(_FORMATS)


def file_format(path: str | os.PathLike[str]) -> str:
    """``"tiff"``, ``"png"``, ``"jpeg"``, ``"nifti"``, ``"hdf5"``, ``"zarr"`` or ``"npy"`` from the file name."""
    name = Path(path).name.lower()
    for suffix in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return _FORMATS[suffix]
    raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)}")


def _fail(path: Path, e: BaseException) -> ValueError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ValueError(f"cannot read {path}: corrupt or truncated {file_format(path)} file ({msg})")


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
            import tifffile

            return np.asarray(tifffile.imread(p))
        if fmt in ("png", "jpeg"):
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
    except Exception as e:  # any decoder error is a bad file; re-raised as one line naming it
        raise _fail(p, e) from None


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
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise ValueError("no input files given")
    return out


def file_format_or_none(path: Path) -> str | None:
    """:func:`file_format`, or None for an unsupported name."""
    try:
        return file_format(path)
    except ValueError:
        return None


def write_mask(path: str | os.PathLike[str], mask: np.ndarray, **meta: Any) -> Path:
    """Write a label mask as PNG (labels < 256, uint8) or TIFF (uint8/uint16/uint32 by range), atomically."""
    p = Path(path)
    m = np.asarray(mask)
    if not np.issubdtype(m.dtype, np.integer) and m.dtype != bool:
        raise TypeError(f"mask must hold integer labels, got dtype {m.dtype}")
    top = int(m.max()) if m.size else 0
    dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.uint32)
    fmt = file_format(p)
    if fmt == "png" and dtype != np.uint8:
        raise ValueError(f"{p}: labels up to {top} do not fit an 8-bit PNG; write .tif instead")
    if fmt not in ("png", "tiff"):
        raise ValueError(f"{p}: masks are written as .png or .tif, not {fmt}")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=p.suffix, dir=p.parent)
    os.close(fd)
    try:
        if fmt == "png":
            import imageio.v3 as iio

            iio.imwrite(tmp, m.astype(dtype), extension=".png")
        else:
            import tifffile

            tifffile.imwrite(tmp, m.astype(dtype), metadata=dict(meta) or None)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def read_mask(path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:
    """Read a label mask: :func:`read_array`, except that a palette (indexed-colour) PNG gives its palette
    indices — the labels — rather than the RGB colours they are shown in.

    A 1-bit PNG reads as bool and an 8-bit one as uint8; decode binary masks by dtype with
    :func:`neuros.plugins.cv.labels.decode_binary_mask`.
    """
    p = Path(path)
    if p.exists() and file_format(p) == "png":
        try:
            from PIL import Image

            with Image.open(p) as im:
                if im.mode == "P":
                    return np.asarray(im)
        except Exception as e:  # a corrupt PNG fails in one line, like read_array
            raise _fail(p, e) from None
    return read_array(p, key=key)
