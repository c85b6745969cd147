"""OME-NGFF (OME-Zarr 0.5) metadata for ``volume`` outputs: axes with units, voxel sizes that follow the input.

Every output group of ``neuros-cv volume`` is an OME-Zarr image (features: axes ``c, z, y, x``; aligned
sections: ``z, y, x``) or an OME-Zarr label image (``image-label`` metadata; labels ``z, y, x``), written with
``ome-zarr``'s writer, so napari (napari-ome-zarr), Fiji (MoBIE / BigDataViewer) and ``ome_zarr.reader`` open
them at the right physical size. The voxel size comes from ``--voxel-size``/``--voxel-unit``, else from the
input's OME-Zarr ``coordinateTransformations`` and axis units (or a NIfTI/TIFF header for ``convert``).

Coordinates follow NGFF: index ``i`` of an axis sits at ``translation + i * scale`` (voxel centres). A grid of
stride ``s`` (features: one cell per 16 × 16 pixels; a 2× pyramid level) has an ``s`` times larger scale and
its first cell centred ``(s - 1) / 2`` input voxels in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "VoxelGeometry",
    "ome_name",
    "parse_unit",
    "read_geometry",
    "write_image_metadata",
    "write_label_metadata",
]

SPACE = ("z", "y", "x")
UNIT_ALIASES = {"nm": "nanometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "mm": "millimeter",
                "cm": "centimeter", "m": "meter", "a": "angstrom", "å": "angstrom", "pm": "picometer"}


def _ome_format():
    from ome_zarr.format import FormatV05

    return FormatV05()


def parse_unit(unit: str | None) -> str | None:
    """An OME-NGFF spatial unit from a name or abbreviation (``nm`` → ``nanometer``); ``ValueError`` if unknown."""
    if unit is None or unit == "":
        return None
    from ome_zarr.axes import KNOWN_SPATIAL_UNITS

    name = UNIT_ALIASES.get(unit.strip().lower(), unit.strip().lower())
    if name not in KNOWN_SPATIAL_UNITS:
        raise ValueError(f"voxel_unit={unit!r} is not an OME-NGFF spatial unit; use e.g. nanometer (nm), "
                         "micrometer (um) or millimeter (mm)")
    return name


@dataclass(frozen=True)
class VoxelGeometry:
    """Physical size (``scale``), position of the first voxel's centre (``translation``) and unit per z, y, x."""

    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    units: tuple[str | None, str | None, str | None] = (None, None, None)

    def with_voxel_size(self, voxel_size: Sequence[float] | None, unit: str | None = None) -> VoxelGeometry:
        """Replace the voxel size (and unit) — the translation is rescaled with it.

        Raises ``ValueError`` for sizes that are not three positive numbers, or a size with no unit known.
        """
        unit = parse_unit(unit)
        geo = self
        if voxel_size is not None:
            vs = tuple(float(v) for v in voxel_size)
            if len(vs) != 3 or not all(v > 0 for v in vs):
                raise ValueError(f"voxel_size= takes three positive numbers Z Y X, got {list(voxel_size)}")
            trans = tuple(t / s * v for t, s, v in zip(self.translation, self.scale, vs, strict=True))
            geo = replace(geo, scale=vs, translation=trans)
            if unit is None and not any(self.units):
                raise ValueError("voxel_size= needs voxel_unit= (e.g. nanometer): the input names no unit")
        if unit is not None:
            geo = replace(geo, units=(unit, unit, unit))
        return geo

    def strided(self, sy: int, sx: int) -> VoxelGeometry:
        """The geometry of a grid with one cell per ``sy`` × ``sx`` voxels (cell centres, NGFF convention)."""
        (vz, vy, vx), (tz, ty, tx) = self.scale, self.translation
        return replace(self, scale=(vz, vy * sy, vx * sx),
                       translation=(tz, ty + (sy - 1) / 2 * vy, tx + (sx - 1) / 2 * vx))

    def transforms(self, channels: bool = False) -> list[dict[str, Any]]:
        """NGFF ``coordinateTransformations``: a scale, and a translation if it is not zero."""
        pre = [1.0] if channels else []
        out: list[dict[str, Any]] = [{"type": "scale", "scale": pre + [float(v) for v in self.scale]}]
        if any(self.translation):
            out.append({"type": "translation", "translation": [0.0] * len(pre) + [float(v) for v in self.translation]})
        return out

    def axes(self, channels: bool = False) -> list[dict[str, str]]:
        """NGFF axes: ``c`` (channel) first if asked, then z, y, x (space, with their units if known)."""
        space = [{"name": n, "type": "space", **({"unit": u} if u else {})}
                 for n, u in zip(SPACE, self.units, strict=True)]
        return ([{"name": "c", "type": "channel"}] if channels else []) + space

    def describe(self) -> str:
        """``50 × 4.6 × 4.6 nanometer`` (z × y × x), for messages."""
        unit = self.units[-1] or "(no unit)"
        return " × ".join(f"{v:g}" for v in self.scale) + f" {unit}"


def _combine(transforms: list[dict[str, Any]], n: int) -> tuple[list[float], list[float]]:
    scale, trans = [1.0] * n, [0.0] * n
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            s = [float(v) for v in t["scale"]]
            scale = [a * b for a, b in zip(scale, s, strict=True)]
            trans = [a * b for a, b in zip(trans, s, strict=True)]
        elif t.get("type") == "translation" and "translation" in t:
            trans = [a + float(b) for a, b in zip(trans, t["translation"], strict=True)]
    return scale, trans


def read_geometry(path: str | os.PathLike[str], level: int = 0, component: str | None = None) -> VoxelGeometry:
    """The voxel geometry of one array of an OME-Zarr input (0.5 or 0.4); plain zarr: 1 voxel, no unit.

    Uses the dataset's own and the multiscale's ``coordinateTransformations`` and the spatial axes' units.
    """
    import zarr

    try:
        node = zarr.open(str(Path(path).expanduser()), mode="r")
    except Exception:
        return VoxelGeometry()
    if not isinstance(node, zarr.Group):
        return VoxelGeometry()
    attrs = node.attrs.asdict()
    ms = (attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales") or [None])[0]
    if not ms or not ms.get("datasets"):
        return VoxelGeometry()
    datasets = ms["datasets"]
    if component is not None:
        match = [d for d in datasets if d.get("path") == component]
        if not match:
            return VoxelGeometry()
        ds = match[0]
    elif 0 <= level < len(datasets):
        ds = datasets[level]
    else:
        return VoxelGeometry()
    axes = ms.get("axes") or [{"name": n} for n in SPACE]
    n = len(axes)
    try:
        s1, t1 = _combine(ds.get("coordinateTransformations", []), n)
        s2, t2 = _combine(ms.get("coordinateTransformations", []), n)
    except (TypeError, ValueError):  # malformed transforms: fall back to voxels rather than fail the run
        return VoxelGeometry()
    scale = [a * b for a, b in zip(s1, s2, strict=True)]
    trans = [a * b + c for a, b, c in zip(t1, s2, t2, strict=True)]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    return VoxelGeometry(tuple(scale[-3:]), tuple(trans[-3:]), tuple(units[-3:]))


def ome_name(out: str | os.PathLike[str]) -> str:
    """The multiscale's ``name``: ``--out``'s folder name without ``.ome.zarr`` / ``.zarr``."""
    name = Path(out).expanduser().resolve().name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def write_image_metadata(group, name: str, datasets: Sequence[tuple[str, VoxelGeometry]],
                         channels: bool = False) -> None:
    """Write OME-NGFF 0.5 ``multiscales`` into ``group``'s attributes (other attributes are kept).

    ``datasets`` lists ``(array path, geometry)`` from full to lowest resolution; ``channels`` puts a ``c``
    axis first.
    """
    from ome_zarr.writer import write_multiscales_metadata

    write_multiscales_metadata(
        group,
        [{"path": p, "coordinateTransformations": g.transforms(channels)} for p, g in datasets],
        fmt=_ome_format(),
        axes=datasets[0][1].axes(channels),
        name=name,
    )


def write_label_metadata(group, classes: Sequence[int] | None = None, source: str | None = None) -> None:
    """Mark an OME-Zarr image group as a label image (``image-label``), with its class values and its source."""
    from ome_zarr.writer import add_metadata

    meta: dict[str, Any] = {"version": _ome_format().version}
    if classes is not None:
        meta["properties"] = [{"label-value": int(c), "class": str(c)} for c in classes]
    if source:
        meta["source"] = {"image": source}
    add_metadata(group, {"image-label": meta}, fmt=_ome_format())


def relative_source(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> str | None:
    """``src`` relative to the group ``out`` (NGFF label ``source.image``); None if ``src`` is not an OME-Zarr
    image (a plain zarr array) or lies on another drive."""
    import zarr

    try:
        attrs = zarr.open_group(str(Path(src).expanduser()), mode="r").attrs.asdict()
    except Exception:  # a plain array, or not zarr at all
        return None
    if not (attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")):
        return None
    try:
        return Path(os.path.relpath(Path(src).expanduser().resolve(), Path(out).expanduser().resolve())).as_posix()
    except ValueError:
        return None
