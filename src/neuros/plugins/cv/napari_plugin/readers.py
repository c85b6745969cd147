"""napari readers: NIfTI volumes at their voxel spacing, and the project's OME-Zarr outputs with their metadata.

Both return napari "layer data tuples" ``(data, kwargs, layer_type)`` and import no Qt, so they work (and are
tested) without a viewer. NIfTI: the array in its stored axis order, ``scale`` = the header's voxel sizes
(``nibabel`` ``get_zooms``), a labels layer when the file's intent is "label" (the masks ``neuros-cv segment
predict`` writes). OME-Zarr: every multiscale image in the group (the group itself and its direct subgroups,
e.g. ``probabilities``) as a (multiscale) layer, ``scale``/``translate`` from its NGFF coordinate transformations
(``scale.ome.read_geometry``), a labels layer for ``image-label`` groups, the NGFF attributes in ``metadata``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["get_reader", "read_nifti", "read_ome_zarr"]

LayerData = tuple[Any, dict[str, Any], str]
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ZARR_SUFFIXES = (".zarr", ".ome.zarr")
#: NIfTI intent code of label images (NIFTI_INTENT_LABEL).
INTENT_LABEL = 1002


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".nii.gz", ".zarr", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_nifti(path: str | os.PathLike[str]) -> list[LayerData]:
    """One layer from a NIfTI file: its data, ``scale`` = voxel spacing, labels if its intent is "label".

    Examples
    --------
    >>> data, kwargs, kind = read_nifti("brain.nii.gz")[0]  # doctest: +SKIP
    >>> kwargs["scale"]  # doctest: +SKIP
    (1.0, 1.0, 1.2)
    """
    import nibabel as nib

    p = Path(path)
    img = nib.load(str(p))
    data = np.asarray(img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    zooms = zooms + (1.0,) * (data.ndim - len(zooms))
    intent = int(img.header.get("intent_code", 0)) if hasattr(img.header, "get") else 0
    units = img.header.get_xyzt_units()[0] if hasattr(img.header, "get_xyzt_units") else "unknown"
    meta = {"path": str(p), "affine": np.asarray(img.affine).tolist(), "spacing": zooms, "unit": units}
    if intent == INTENT_LABEL and np.issubdtype(data.dtype, np.integer):
        return [(data, {"name": _stem(p), "scale": zooms, "metadata": meta}, "labels")]
    return [(data, {"name": _stem(p), "scale": zooms, "metadata": meta}, "image")]


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return (attrs.get("ome", {}) or {}).get("multiscales") or attrs.get("multiscales") or []


def _is_label(attrs: dict[str, Any]) -> bool:
    return "image-label" in attrs or "image-label" in (attrs.get("ome", {}) or {})


def _group_layer(root: Path, rel: str, group: Any) -> LayerData | None:
    from ..scale.ome import read_geometry

    attrs = group.attrs.asdict()
    ms = _multiscales(attrs)
    if not ms or not ms[0].get("datasets"):
        return None
    ms = ms[0]
    paths = [d["path"] for d in ms["datasets"] if d.get("path") in group]
    if not paths:
        return None
    arrays = [group[p] for p in paths]
    where = root / rel if rel else root
    geo = read_geometry(where, component=paths[0])
    ndim = arrays[0].ndim
    extra = ndim - 3
    if extra < 0:  # (y, x): the last two of z, y, x
        scale, translate = list(geo.scale[-ndim:]), list(geo.translation[-ndim:])
    else:
        scale, translate = [1.0] * extra + list(geo.scale), [0.0] * extra + list(geo.translation)
    name = ms.get("name") or (f"{_stem(root)} {rel}" if rel else _stem(root))
    label = _is_label(attrs)
    data: Any = arrays if len(arrays) > 1 else arrays[0]
    meta = {"path": str(where), "ome": attrs, "axes": ms.get("axes"), "units": list(geo.units)}
    kwargs: dict[str, Any] = {"name": name, "scale": scale, "translate": translate, "metadata": meta}
    if len(arrays) > 1:
        kwargs["multiscale"] = True
    return (data, kwargs, "labels" if label else "image")


def read_ome_zarr(path: str | os.PathLike[str]) -> list[LayerData]:
    """The multiscale images of an OME-Zarr group and of its direct subgroups, as layers (lazy zarr arrays)."""
    import zarr

    root = Path(path)
    group = zarr.open_group(str(root), mode="r")
    layers: list[LayerData] = []
    top = _group_layer(root, "", group)
    if top is not None:
        layers.append(top)
    for name, sub in sorted(group.groups()):
        found = _group_layer(root, name, sub)
        if found is not None:
            layers.append(found)
    if not layers:
        raise ValueError(f"{root} holds no OME-Zarr multiscale image; open a `neuros-cv volume` output or convert "
                         "the data with `neuros-cv volume convert`")
    return layers


def get_reader(path: str | os.PathLike[str] | list) -> Callable[[Any], list[LayerData]] | None:
    """napari's reader hook: a reader for ``.nii``/``.nii.gz`` files and OME-Zarr groups, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = str(path).rstrip("/\\").lower()
    if p.endswith(NIFTI_SUFFIXES):
        return lambda target: read_nifti(target[0] if isinstance(target, list) else target)
    if p.endswith(ZARR_SUFFIXES) and Path(str(path)).is_dir():
        return lambda target: read_ome_zarr(target[0] if isinstance(target, list) else target)
    return None
