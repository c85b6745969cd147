"""Zarr at the edges: open input volumes (plain arrays, groups, OME-Zarr multiscales) and convert TIFF stacks
and NIfTI images to OME-Zarr, one section at a time so memory stays bounded by a section.

OME-Zarr groups are written as zarr v3 with OME-NGFF 0.5 metadata (``attrs["ome"]["multiscales"]``); 0.4
groups (``attrs["multiscales"]``) are read too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..output import atomic_output_dir
from .ome import VoxelGeometry, ome_name, write_image_metadata

__all__ = [
    "convert_to_zarr",
    "multiscale_datasets",
    "nifti_to_zarr",
    "open_volume",
    "tiff_to_zarr",
    "write_ome_zarr",
]

TIFF_SUFFIXES = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def multiscale_datasets(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``datasets`` list of the first OME-Zarr multiscale in group attributes (0.5 or 0.4), or []."""
    ms = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales") or []
    return list(ms[0].get("datasets", [])) if ms else []


def open_volume(path: str | os.PathLike[str], level: int = 0, component: str | None = None):
    """Open a (z, y, x) volume stored in zarr, read-only.

    Parameters
    ----------
    path : path-like
        A zarr array, an OME-Zarr multiscale group, or a group holding exactly one array.
    level : int
        Resolution level of an OME-Zarr multiscale group (0: full resolution).
    component : str, optional
        Path of the array inside a group (overrides ``level``).

    Returns
    -------
    zarr.Array
        The 3-D array. Raises ``FileNotFoundError``/``ValueError`` with one line naming the problem.
    """
    import zarr

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"input zarr {p} does not exist")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as e:  # zarr raises several types for a folder that is not zarr
        raise ValueError(f"input {p} is not a zarr array or group ({type(e).__name__}: {e})") from None
    if isinstance(node, zarr.Group):
        if component is not None:
            if component not in node:
                raise ValueError(f"input {p} has no array {component!r}; it holds {sorted(node.array_keys())}")
            node = node[component]
        else:
            datasets = multiscale_datasets(node.attrs.asdict())
            arrays = sorted(node.array_keys())
            if datasets:
                if not 0 <= level < len(datasets):
                    raise ValueError(f"input {p} has {len(datasets)} resolution levels; "
                                     f"level={level} is out of range")
                node = node[datasets[level]["path"]]
            elif len(arrays) == 1:
                node = node[arrays[0]]
            else:
                raise ValueError(
                    f"input {p} is a zarr group with {len(arrays)} arrays {arrays} and no OME-Zarr multiscales; "
                    "name one with component="
                )
    if node.ndim != 3:
        raise ValueError(f"input {p} has shape {node.shape}; expected a (z, y, x) volume")
    return node


def write_ome_zarr(
    path: str | os.PathLike[str],
    sections: Iterator[np.ndarray],
    shape: tuple[int, int, int],
    dtype: Any,
    chunks: tuple[int, int, int] = (1, 512, 512),
    levels: int = 1,
    geometry: VoxelGeometry | None = None,
    attrs: dict[str, Any] | None = None,
    name: str | None = None,
) -> None:
    """Write sections (each (y, x)) as an OME-Zarr multiscale group at ``path`` (which must not exist).

    Level 0 is written section by section; each further level halves y and x (mean of 2×2, via dask's
    ``coarsen``) and is computed from the level before it. ``geometry`` is level 0's voxel size, origin and
    unit (default: 1 voxel, no unit); level ``k`` gets a 2**k larger y/x scale, centred on its 2×2 means.
    ``name`` is the multiscale's name (default: the folder's).
    """
    geometry = geometry or VoxelGeometry()
    import dask.array as da
    import zarr

    z, h, w = (int(s) for s in shape)
    chunks = (min(chunks[0], z), min(chunks[1], h), min(chunks[2], w))
    root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    dims = ("z", "y", "x")
    a0 = root.create_array("0", shape=(z, h, w), chunks=chunks, dtype=dtype, dimension_names=dims)
    slab: list[np.ndarray] = []
    start = 0
    for sec in sections:
        slab.append(np.asarray(sec))
        if len(slab) == chunks[0]:
            a0[start : start + len(slab)] = np.stack(slab)
            start += len(slab)
            slab = []
    if slab:
        a0[start : start + len(slab)] = np.stack(slab)
        start += len(slab)
    if start != z:
        raise ValueError(f"expected {z} sections, got {start}")
    datasets = [("0", geometry)]
    prev = a0
    for lv in range(1, int(levels)):
        src = da.from_zarr(prev)
        ph, pw = src.shape[1] - src.shape[1] % 2, src.shape[2] - src.shape[2] % 2
        if ph < 2 or pw < 2:
            break
        down = da.coarsen(np.mean, src[:, :ph, :pw], {1: 2, 2: 2}).astype(dtype)
        lchunks = (chunks[0], min(chunks[1], down.shape[1]), min(chunks[2], down.shape[2]))
        arr = root.create_array(str(lv), shape=down.shape, chunks=lchunks, dtype=dtype, dimension_names=dims)
        da.store(down.rechunk(arr.chunks), arr, lock=False)
        datasets.append((str(lv), geometry.strided(2**lv, 2**lv)))
        prev = arr
    root.attrs.update(attrs or {})
    write_image_metadata(root, name or ome_name(path), datasets)


def _tiff_header(path: Path) -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of a TIFF's first series; a one-line ``ValueError`` naming the file if it is damaged."""
    from ..datasets.io import open_tiff

    with open_tiff(path) as tf:
        return tuple(int(v) for v in tf.series[0].shape), tf.series[0].dtype


def _tiff_sections(src: Path) -> tuple[tuple[int, int, int], Any, Callable[[], Iterator[np.ndarray]]]:
    import tifffile


    if src.is_dir():
        files = sorted(f for f in src.iterdir() if f.suffix.lower() in TIFF_SUFFIXES)
        if not files:
            raise ValueError(f"folder {src} holds no TIFF files")
        first, dtype = _tiff_header(files[0])
        h, w = first[-2:]

        def it() -> Iterator[np.ndarray]:
            for f in files:
                _tiff_header(f)  # a damaged file is named, not a traceback
                sec = tifffile.imread(f)
                if sec.shape != (h, w):
                    raise ValueError(f"TIFF {f.name} has shape {sec.shape}, expected ({h}, {w}) like {files[0].name}")
                yield sec

        return (len(files), h, w), dtype, it
    shape, dtype = _tiff_header(src)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"TIFF {src} has shape {shape}; expected a greyscale (z, y, x) stack")

    def it_pages() -> Iterator[np.ndarray]:
        with tifffile.TiffFile(src) as tf:
            pages = tf.series[0].pages
            if len(pages) == shape[0]:
                for page in pages:  # one section in memory at a time
                    yield page.asarray()
            else:  # sections stored as planes of one page: read the series once
                yield from tf.series[0].asarray().reshape(shape)

    return tuple(int(s) for s in shape), dtype, it_pages


_IJ_UNITS = {"micron": "micrometer", "microns": "micrometer", "\\u00b5m": "micrometer", "nanometer": "nanometer",
             "nanometers": "nanometer"}


def tiff_geometry(path: str | os.PathLike[str]) -> VoxelGeometry | None:
    """Voxel size from a TIFF header: ImageJ ``unit``/``spacing`` with X/YResolution, or a centimetre
    ResolutionUnit; None if the file states no physical size (inch resolutions are usually a screen's dpi).

    Without an ImageJ ``spacing`` the z size is unknown and set to the y size's unit, 1.0.
    """
    import tifffile

    from .ome import parse_unit

    with tifffile.TiffFile(path) as tf:
        tags = tf.pages[0].tags
        ij = tf.imagej_metadata or {}
        xr, yr, ru = tags.get("XResolution"), tags.get("YResolution"), tags.get("ResolutionUnit")
        if xr is None or yr is None:
            return None
        try:
            px, py = (float(t.value[0]) / float(t.value[1]) for t in (xr, yr))
        except (TypeError, ZeroDivisionError, IndexError):
            return None
        unit_code = int(getattr(ru.value, "value", ru.value)) if ru is not None else 2
    if not (px > 0 and py > 0):
        return None
    factor, unit = 1.0, None
    if ij.get("unit"):
        raw = str(ij["unit"]).strip()
        try:
            unit = parse_unit(_IJ_UNITS.get(raw.lower(), raw))
        except ValueError:
            return None
    elif unit_code == 3:  # centimetre → micrometre
        factor, unit = 1e4, "micrometer"
    if unit is None:
        return None
    sz = float(ij["spacing"]) if ij.get("spacing") else 1.0
    sizes = (sz, factor / py, factor / px)  # TIFF stores pixels per unit as a rational: undo its rounding
    return VoxelGeometry(scale=tuple(float(f"{v:.10g}") for v in sizes), units=(unit, unit, unit))


def tiff_to_zarr(src: str | os.PathLike[str], out: str | os.PathLike[str], *, chunks=(1, 512, 512), levels=1,
                 overwrite: bool = False, voxel_size: tuple[float, float, float] | None = None,
                 voxel_unit: str | None = None, inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Convert a multi-page TIFF stack or a folder of 2-D TIFFs (sorted by name) to an OME-Zarr group.

    The voxel size is ``voxel_size`` (z, y, x) in ``voxel_unit``, else the TIFF header's (:func:`tiff_geometry`
    of the first file), else 1 voxel with no unit.
    """
    src = Path(src).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    shape, dtype, sections = _tiff_sections(src)
    first = src if src.is_file() else sorted(f for f in src.iterdir() if f.suffix.lower() in TIFF_SUFFIXES)[0]
    geometry = (tiff_geometry(first) or VoxelGeometry()).with_voxel_size(voxel_size, voxel_unit)
    with atomic_output_dir(out, overwrite, inputs=[src, *inputs], command="volume convert") as tmp:
        store = tmp / "volume.zarr"
        write_ome_zarr(store, sections(), shape, dtype, chunks, levels, geometry,
                       attrs={"neuros_cv": {"source": str(src)}}, name=ome_name(out))
        _move_contents(store, tmp)
    return Path(out)


NIFTI_UNITS = {"meter": "meter", "mm": "millimeter", "micron": "micrometer"}


def nifti_to_zarr(src: str | os.PathLike[str], out: str | os.PathLike[str], *, chunks=(1, 512, 512), levels=1,
                  overwrite: bool = False, voxel_size: tuple[float, float, float] | None = None,
                  voxel_unit: str | None = None, inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Convert a 3-D NIfTI image to an OME-Zarr group, z as the first axis, voxel sizes as the OME scale.

    NIfTI stores (i, j, k) = (x, y, z) in array order; we write ``[k, j, i]`` and read one k-slice of the
    image's data proxy at a time. The voxel size is the header's zooms in its spatial unit (``voxel_size`` /
    ``voxel_unit`` override them); the affine is kept in ``attrs["neuros_cv"]["affine"]``.
    """
    import nibabel as nib

    src = Path(src).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    img = nib.load(str(src))
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"NIfTI {src} has shape {img.shape}; expected a 3-D image")
    nx, ny, nz = (int(s) for s in shape)
    dtype = img.get_data_dtype()
    if img.dataobj.slope != 1 or img.dataobj.inter != 0:  # scaled data are floats once read
        dtype = np.float32
    zooms = [float(v) for v in img.header.get_zooms()[:3]]
    unit = NIFTI_UNITS.get(img.header.get_xyzt_units()[0])
    geometry = VoxelGeometry(scale=(zooms[2], zooms[1], zooms[0]), units=(unit, unit, unit))
    geometry = geometry.with_voxel_size(voxel_size, voxel_unit)

    def sections() -> Iterator[np.ndarray]:
        for k in range(nz):
            sl = np.asanyarray(img.dataobj[..., k] if len(img.shape) == 3 else img.dataobj[..., k, 0])
            yield sl.T.astype(dtype)  # (x, y) → (y, x)

    meta = {"neuros_cv": {"source": str(src), "affine": np.asarray(img.affine).tolist(), "axes_from": "nifti k,j,i"}}
    with atomic_output_dir(out, overwrite, inputs=[src, *inputs], command="volume convert") as tmp:
        store = tmp / "volume.zarr"
        write_ome_zarr(store, sections(), (nz, ny, nx), dtype, chunks, levels, geometry, meta, name=ome_name(out))
        _move_contents(store, tmp)
    return Path(out)


def _move_contents(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        item.rename(dst / item.name)
    src.rmdir()


def convert_to_zarr(src: str | os.PathLike[str], out: str | os.PathLike[str], **kw: Any) -> Path:
    """Convert a TIFF stack / folder of TIFFs or a NIfTI image to OME-Zarr, chosen by the input's suffix."""
    p = Path(src).expanduser()
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return nifti_to_zarr(p, out, **kw)
    if p.is_dir() or name.endswith(TIFF_SUFFIXES):
        return tiff_to_zarr(p, out, **kw)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    raise ValueError(
        f"cannot convert {p}: expected a TIFF stack (.tif/.tiff), a folder of TIFFs or NIfTI (.nii/.nii.gz)"
    )
