"""Labelled real datasets: loaders for the data available here and recipes for public datasets you download.

Every loader returns a :class:`LabelledSet` — 2-D images, integer masks (0 = background, 1..K-1 = the named
classes) and where they came from. Recipes for datasets the user downloads (SNEMI3D, CREMI, OASIS-3 / IXI,
the Allen mouse brain atlas, TCGA tiles) check the folder layout first and fail with one line saying what is
missing and what was expected; :data:`RECIPES` documents each one (``neuros-cv`` docs: ``docs/datasets.md``).

Data available on this machine (no download): the ssTEM sections in ``../shared/data/sstem_drosophila_vnc``
(:func:`load_sstem`), the MNI152 template with grey/white-matter masks inside nilearn (:func:`load_mni152`),
and the labelled nuclei image inside stardist (:func:`load_nuclei`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import decode_binary_mask
from .io import image_slices, read_array

__all__ = [
    "RECIPES",
    "SSTEM_CLASSES",
    "DatasetLayoutError",
    "LabelledSet",
    "Recipe",
    "default_sstem_dir",
    "load_dataset",
    "load_mni152",
    "load_nuclei",
    "load_sstem",
    "read_sstem_mask",
]


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder does not have the expected layout (message says what is missing)."""


@dataclass(frozen=True)
class LabelledSet:
    """Images with integer masks: ``masks[i]`` has ``images[i]``'s height and width; class 0 is background."""

    name: str
    images: list[np.ndarray]
    masks: list[np.ndarray]
    class_names: tuple[str, ...]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int], name: str | None = None) -> LabelledSet:
        """The images/masks at ``indices``."""
        return LabelledSet(name or self.name, [self.images[i] for i in indices], [self.masks[i] for i in indices],
                           self.class_names, self.source, list(self.notes))

    def binary(self) -> LabelledSet:
        """Foreground (any non-background class) vs background."""
        return LabelledSet(self.name, self.images, [(m > 0).astype(np.uint8) for m in self.masks],
                           ("background", "foreground"), self.source, list(self.notes))


def _need(path: Path, what: str, recipe: str) -> Path:
    if not path.exists():
        raise DatasetLayoutError(f"{recipe}: expected {what} at {path} (see docs/datasets.md#{recipe})")
    return path


def _downsample(image: np.ndarray, mask: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Block-mean the image and take each block's top-left label (keeps thin membranes) by ``factor``."""
    if factor == 1:
        return image, mask
    from skimage.transform import downscale_local_mean

    img = downscale_local_mean(image.astype(np.float32), (factor, factor) + (1,) * (image.ndim - 2))
    h, w = img.shape[:2]
    return img.astype(np.float32), mask[::factor, ::factor][:h, :w]


# --------------------------------------------------------------------------- data available here
def default_sstem_dir() -> Path:
    """``$NEUROS_SSTEM_DIR`` or ``../shared/data/sstem_drosophila_vnc`` beside the working directory's project."""
    env = os.environ.get("NEUROS_SSTEM_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data" / "sstem_drosophila_vnc"
        if cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data" / "sstem_drosophila_vnc"


SSTEM_CLASSES = ("membranes", "mitochondria", "synapses")


def read_sstem_mask(root: str | os.PathLike[str] | None, kind: str, section: int) -> np.ndarray:
    """One full-resolution ssTEM class mask (bool, 1024²): ``kind`` is membranes, mitochondria or synapses.

    The published per-class PNGs mix encodings — some are 1-bit (read as bool), others 8-bit with
    anti-aliased edges — so each file is decoded by its dtype (:func:`labels.decode_binary_mask`: bool as it
    is, 8-bit ``> 127``). One threshold for all files would empty the 1-bit mitochondria of sections 01 and 07.
    """
    if kind not in SSTEM_CLASSES:
        raise ValueError(f"unknown ssTEM class {kind!r}; choose from {', '.join(SSTEM_CLASSES)}")
    base = Path(root) if root is not None else default_sstem_dir()
    path = _need(base / kind / f"{section:02d}.png", f"section {section:02d} ({kind}/NN.png)", "sstem")
    mask = decode_binary_mask(read_array(path), name=str(path))
    if mask.ndim != 2:
        raise DatasetLayoutError(f"sstem: {path} is not a single-channel mask (shape {mask.shape})")
    return mask


def load_sstem(
    root: str | os.PathLike[str] | None = None,
    sections: Sequence[int] = tuple(range(14)),
    downsample: int = 2,
) -> LabelledSet:
    """Real ssTEM EM sections with three classes: 0 other, 1 membrane, 2 mitochondria.

    Layout (``../shared/data/sstem_drosophila_vnc``): ``raw/NN.tif``, ``membranes/NN.png`` and
    ``mitochondria/NN.png``, each mask decoded by its dtype (:func:`read_sstem_mask`: 1-bit PNGs as they are,
    8-bit PNGs ``> 127``). Mitochondria take precedence where both are set.
    ``downsample`` block-averages the 1024² sections (2 → 512², 9.2 nm/pixel) to fit time budgets.
    """
    base = Path(root) if root is not None else default_sstem_dir()
    images, masks = [], []
    for s in sections:
        raw = read_array(_need(base / "raw" / f"{s:02d}.tif", f"section {s:02d} (raw/NN.tif)", "sstem"))
        mem = read_sstem_mask(base, "membranes", s)
        mito = read_sstem_mask(base, "mitochondria", s)
        mask = np.where(mito, 2, np.where(mem, 1, 0)).astype(np.uint8)
        img, mask = _downsample(raw.astype(np.float32) / 255.0, mask, int(downsample))
        images.append(img)
        masks.append(mask)
    note = f"sections {list(sections)}, downsampled ×{downsample} (block mean)" if downsample > 1 else ""
    return LabelledSet("em", images, masks, ("other", "membrane", "mitochondria"),
                       "ssTEM Drosophila VNC (Gerhard et al. 2013, doi:10.6084/m9.figshare.856713)",
                       [note] if note else [])


@lru_cache(maxsize=1)
def _mni152_volumes() -> tuple[np.ndarray, np.ndarray]:
    """(T1, labels) of the 1 mm MNI152 template, loaded once per process (nilearn takes seconds)."""
    try:
        from nilearn import datasets as nd
    except ImportError as e:  # optional extra
        raise ImportError(f"the MNI152 set needs nilearn (pip install 'neuros-cv[data]'): {e}") from None
    t1 = np.asarray(nd.load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    gm = np.asarray(nd.load_mni152_gm_mask(resolution=1).get_fdata()) > 0
    wm = np.asarray(nd.load_mni152_wm_mask(resolution=1).get_fdata()) > 0
    lab = np.where(wm, 2, np.where(gm, 1, 0)).astype(np.uint8)
    t1.setflags(write=False)
    lab.setflags(write=False)
    return t1, lab


def load_mni152(slices: Sequence[int] = tuple(range(40, 140, 6)), axis: int = 2, scale: int = 2) -> LabelledSet:
    """Slices of nilearn's MNI152 1 mm template with classes 0 other, 1 grey matter, 2 white matter.

    The masks are nilearn's ``load_mni152_gm_mask``/``load_mni152_wm_mask`` (white matter wins where both
    are set). ``scale`` upsamples slices (linear image, nearest mask) so a 16-pixel patch covers
    ``16 / scale`` mm — at 1 mm a patch is wider than the cortex.
    """
    from scipy import ndimage

    t1, lab = _mni152_volumes()
    bad = [s for s in slices if not 0 <= s < t1.shape[axis]]
    if bad:
        raise ValueError(f"MNI152 slices {bad} outside 0..{t1.shape[axis] - 1} along axis {axis}")
    images, masks = [], []
    for s in slices:
        img, m = np.take(t1, s, axis=axis), np.take(lab, s, axis=axis)
        if scale > 1:
            img = ndimage.zoom(img, scale, order=1)
            m = ndimage.zoom(m, scale, order=0)
        images.append(img.astype(np.float32))
        masks.append(m)
    return LabelledSet("mri", images, masks, ("other", "grey matter", "white matter"),
                       "MNI152 2009 template and tissue masks shipped with nilearn",
                       [f"slices {list(slices)} along axis {axis}, upsampled ×{scale}"])


def load_nuclei(tile: int = 128) -> LabelledSet:
    """stardist's labelled fluorescence nuclei image (512², 2018 DSB) cut into ``tile``² tiles, binary masks."""
    try:
        from stardist.data import test_image_nuclei_2d
    except ImportError as e:
        raise ImportError(f"the nuclei set needs stardist (pip install 'neuros-cv[data]'): {e}") from None
    img, inst = test_image_nuclei_2d(return_mask=True)
    img = np.asarray(img, dtype=np.float32)
    img = (img - img.min()) / max(float(np.ptp(img)), 1e-6)
    fg = (np.asarray(inst) > 0).astype(np.uint8)
    h, w = (img.shape[0] // tile) * tile, (img.shape[1] // tile) * tile
    def cut(a: np.ndarray) -> list[np.ndarray]:
        return list(a[:h, :w].reshape(h // tile, tile, w // tile, tile).swapaxes(1, 2).reshape(-1, tile, tile))
    return LabelledSet("nuclei", cut(img), cut(fg), ("background", "nucleus"),
                       "stardist test_image_nuclei_2d (2018 Data Science Bowl, Caicedo et al. 2019)",
                       [f"one 512² image cut into {tile}² tiles in row-major order"])


# --------------------------------------------------------------------------- recipes for downloaded data
def _boundaries(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner").astype(np.uint8)


def load_snemi3d(root: str | os.PathLike[str], max_slices: int | None = None) -> LabelledSet:
    """SNEMI3D training volume: membranes (1) = boundaries between the neuron labels."""
    base = Path(root)
    raw = read_array(_need(base / "train-input.tif", "the raw stack train-input.tif", "snemi3d"))
    lab = read_array(_need(base / "train-labels.tif", "the label stack train-labels.tif", "snemi3d"))
    if raw.shape != lab.shape or raw.ndim != 3:
        raise DatasetLayoutError(f"snemi3d: raw {raw.shape} and labels {lab.shape} must be equal (Z, H, W) stacks")
    n = raw.shape[0] if max_slices is None else min(max_slices, raw.shape[0])
    return LabelledSet("snemi3d", [raw[i].astype(np.float32) / 255 for i in range(n)],
                       [_boundaries(lab[i]) for i in range(n)], ("other", "membrane"),
                       "SNEMI3D (Kasthuri et al. 2015), https://snemi3d.grand-challenge.org/")


def load_cremi(root: str | os.PathLike[str], samples: Sequence[str] = ("A", "B", "C"),
               max_slices: int | None = None) -> LabelledSet:
    """CREMI training samples: ``volumes/raw`` and ``volumes/labels/neuron_ids`` → membranes (1)."""
    base = Path(root)
    images, masks = [], []
    for s in samples:
        found = sorted(base.glob(f"sample_{s}*.hdf")) + sorted(base.glob(f"sample_{s}*.h5"))
        if not found:
            raise DatasetLayoutError(f"cremi: expected sample_{s}_*.hdf in {base} (see docs/datasets.md#cremi)")
        raw = read_array(found[0], key="volumes/raw")
        ids = read_array(found[0], key="volumes/labels/neuron_ids")
        if raw.shape != ids.shape:
            raise DatasetLayoutError(f"cremi: {found[0].name}: raw {raw.shape} and neuron_ids {ids.shape} differ")
        n = raw.shape[0] if max_slices is None else min(max_slices, raw.shape[0])
        images += [raw[i].astype(np.float32) / 255 for i in range(n)]
        masks += [_boundaries(ids[i]) for i in range(n)]
    return LabelledSet("cremi", images, masks, ("other", "membrane"), "CREMI (https://cremi.org/data/)")


def _pairs(base: Path, recipe: str) -> list[tuple[Path, Path]]:
    imgs = _need(base / "images", "a folder images/ with *.nii.gz volumes", recipe)
    labs = _need(base / "labels", "a folder labels/ with one tissue label volume per image", recipe)
    pairs = []
    for f in sorted(imgs.glob("*.nii*")):
        lab = labs / f.name
        if not lab.exists():
            raise DatasetLayoutError(f"{recipe}: image {f.name} has no label volume {lab}")
        pairs.append((f, lab))
    if not pairs:
        raise DatasetLayoutError(f"{recipe}: {imgs} holds no .nii/.nii.gz volume")
    return pairs


def load_nifti_tissue(root: str | os.PathLike[str], recipe: str = "oasis3", axis: int = 2,
                      slices: Sequence[int] | None = None,
                      classes: Sequence[str] = ("csf", "grey matter", "white matter")) -> LabelledSet:
    """T1 volumes with tissue labels (OASIS-3 FreeSurfer/FAST output, or IXI segmented with FSL FAST).

    Label volumes hold 0 background and 1..K-1 the ``classes`` (FAST's order: CSF, GM, WM).
    """
    images, masks = [], []
    for img_f, lab_f in _pairs(Path(root), recipe):
        vol, lab = read_array(img_f), read_array(lab_f)
        if vol.shape[:3] != lab.shape[:3]:
            raise DatasetLayoutError(f"{recipe}: {img_f.name} {vol.shape} and its labels {lab.shape} differ")
        idx = range(vol.shape[axis]) if slices is None else slices
        images += [np.take(vol, i, axis=axis).astype(np.float32) for i in idx]
        masks += [np.take(lab, i, axis=axis).astype(np.int64) for i in idx]
    return LabelledSet(recipe, images, masks, ("background", *classes), f"{recipe} (user's local copy)")


def load_allen(root: str | os.PathLike[str], resolution: int = 25, structures: Sequence[int] = (),
               axis: int = 0, step: int = 10) -> LabelledSet:
    """Allen mouse brain CCFv3: ``average_template_{res}`` and ``annotation_{res}`` (.nrrd via pynrrd, or
    .nii.gz). ``structures`` lists annotation ids that become classes 1..n; empty means brain vs background."""
    base = Path(root)
    def find(stem: str) -> Path:
        for ext in (".nii.gz", ".nii", ".nrrd"):
            if (base / f"{stem}{ext}").exists():
                return base / f"{stem}{ext}"
        raise DatasetLayoutError(f"allen: expected {stem}.nrrd (or .nii.gz) in {base} (see docs/datasets.md#allen)")
    def read(p: Path) -> np.ndarray:
        if p.suffix == ".nrrd":
            try:
                import nrrd
            except ImportError:
                raise ImportError("reading Allen .nrrd volumes needs pynrrd (pip install pynrrd)") from None
            return np.asarray(nrrd.read(str(p))[0])
        return read_array(p)
    tpl, ann = read(find(f"average_template_{resolution}")), read(find(f"annotation_{resolution}"))
    if tpl.shape != ann.shape:
        raise DatasetLayoutError(f"allen: template {tpl.shape} and annotation {ann.shape} differ")
    if structures:
        lab = np.zeros(ann.shape, np.uint8)
        for k, sid in enumerate(structures, start=1):
            lab[ann == sid] = k
        names: tuple[str, ...] = ("background", *(f"structure {s}" for s in structures))
    else:
        lab, names = (ann > 0).astype(np.uint8), ("background", "brain")
    idx = range(0, tpl.shape[axis], step)
    return LabelledSet("allen", [np.take(tpl, i, axis=axis).astype(np.float32) for i in idx],
                       [np.take(lab, i, axis=axis) for i in idx], names, "Allen CCFv3 (user's local copy)")


def load_tcga(root: str | os.PathLike[str]) -> LabelledSet:
    """TCGA H&E tiles: ``tiles/*.png|jpg`` with binary or integer masks ``masks/<same stem>.png``."""
    base = Path(root)
    tiles = sorted(p for p in _need(base / "tiles", "a folder tiles/ of .png/.jpg tiles", "tcga").iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not tiles:
        raise DatasetLayoutError(f"tcga: {base / 'tiles'} holds no .png/.jpg tile")
    images, masks = [], []
    for t in tiles:
        m = _need(base / "masks" / f"{t.stem}.png", f"the mask of tile {t.name}", "tcga")
        img = image_slices(read_array(t))[0][:, :, :3]
        mask = read_array(m)
        if mask.shape != img.shape[:2]:
            raise DatasetLayoutError(f"tcga: mask {m.name} {mask.shape} does not match tile {img.shape[:2]}")
        images.append(img)
        binary = mask.dtype == bool or mask.max() == 255  # 1-bit, or 0/255 (anti-aliased edges: > 127)
        masks.append(decode_binary_mask(mask, name=str(m)).astype(np.uint8) if binary else mask.astype(np.int64))
    return LabelledSet("tcga", images, masks, ("background", "foreground"), "TCGA tiles (user's local copy)")


@dataclass(frozen=True)
class Recipe:
    """How to obtain a dataset and what folder layout its loader expects."""

    name: str
    loader: Callable[..., LabelledSet]
    source: str
    layout: str
    needs_root: bool = True


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("sstem", load_sstem, "figshare doi:10.6084/m9.figshare.856713 (stack 1; shipped in ../shared/data)",
           "raw/NN.tif, membranes/NN.png, mitochondria/NN.png", needs_root=False),
    Recipe("mni152", load_mni152, "ships inside nilearn", "(none: installed package)", needs_root=False),
    Recipe("nuclei", load_nuclei, "ships inside stardist", "(none: installed package)", needs_root=False),
    Recipe("snemi3d", load_snemi3d, "https://snemi3d.grand-challenge.org/ (training data)",
           "train-input.tif (Z,H,W uint8), train-labels.tif (Z,H,W neuron ids)"),
    Recipe("cremi", load_cremi, "https://cremi.org/data/ (training volumes A, B, C)",
           "sample_A_20160501.hdf … with volumes/raw and volumes/labels/neuron_ids"),
    Recipe("oasis3", load_nifti_tissue, "https://sites.wustl.edu/oasisbrains/ (data use agreement)",
           "images/<id>.nii.gz (T1w), labels/<id>.nii.gz (0 bg, 1 CSF, 2 GM, 3 WM)"),
    Recipe("ixi", lambda root, **kw: load_nifti_tissue(root, recipe="ixi", **kw),
           "https://brain-development.org/ixi-dataset/ (T1; segment with FSL FAST)",
           "images/<id>.nii.gz (T1), labels/<id>.nii.gz (FAST seg: 0 bg, 1 CSF, 2 GM, 3 WM)"),
    Recipe("allen", load_allen, "https://download.alleninstitute.org/informatics-archive/current-release/"
           "mouse_ccf/ (average_template, annotation/ccf_2017)",
           "average_template_25.nrrd and annotation_25.nrrd (or .nii.gz)"),
    Recipe("tcga", load_tcga, "https://portal.gdc.cancer.gov/ (tiles you cut from slides, with your masks)",
           "tiles/<name>.png|jpg, masks/<name>.png"),
)}


def load_dataset(name: str, root: str | os.PathLike[str] | None = None, **kw: Any) -> LabelledSet:
    """Load a catalogued dataset by name (``sstem``, ``mni152``, ``nuclei``, ``snemi3d``, ``cremi``,
    ``oasis3``, ``ixi``, ``allen``, ``tcga``) from ``root`` (the user's local copy)."""
    if name not in RECIPES:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(RECIPES)}")
    r = RECIPES[name]
    if r.needs_root:
        if root is None:
            raise ValueError(f"dataset {name!r} needs root= (your local copy; layout: {r.layout}; get it: {r.source})")
        if not Path(root).is_dir():
            raise DatasetLayoutError(f"{name}: {root} is not a folder (layout: {r.layout})")
        return r.loader(root, **kw)
    return r.loader(root, **kw) if name == "sstem" else r.loader(**kw)
