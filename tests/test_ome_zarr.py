"""``neuros-cv volume`` outputs are OME-Zarr that ``ome-zarr``'s reader opens with axes, units and voxel sizes.

Each output is written for real (TIFF / NIfTI → convert → features / segment / align on a threaded
LocalCluster) and read back with ``ome_zarr.io.parse_url`` + ``ome_zarr.reader.Reader``, and validated with
``ome-zarr-models`` (the NGFF 0.5 schema). napari's reader is not installed here, so it is not tried.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.datasets.synthetic import make_dataset
from neuros.plugins.cv.heads import make_head
from neuros.plugins.cv.scale import convert_to_zarr, volume_align, volume_features, volume_segment
from neuros.plugins.cv.scale.models import worker_backbone

NM = {"name": "z", "type": "space", "unit": "nanometer"}
SSTEM = [50.0, 4.6, 4.6]  # z, y, x in nm


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, threads_per_worker=2, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


def _read(path: Path) -> list:
    """The nodes ``ome-zarr``'s reader finds in ``path`` (first: the group itself)."""
    return list(Reader(parse_url(str(path)))())


def _transforms(node, level: int = 0) -> dict[str, list[float]]:
    return {t["type"]: t[t["type"]] for t in node.metadata["coordinateTransformations"][level]}


def _validate_image(path: Path) -> None:
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(zarr.open_group(str(path), mode="r"))


@pytest.fixture
def em_tiff(tmp_path) -> tuple[Path, np.ndarray]:
    """A 3 × 96 × 80 uint8 EM-like stack saved as an ImageJ TIFF with ssTEM's voxel size (4.6 nm, 50 nm)."""
    images, _ = make_dataset("em", 3, size=96, seed=1)
    vol = (np.stack([np.asarray(im, dtype=np.float32) for im in images])[:, :, :80] * 255).astype(np.uint8)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / 4.6, 1 / 4.6),
                     metadata={"spacing": 50.0, "unit": "nm", "axes": "ZYX"})
    return path, vol


def test_convert_carries_the_tiff_voxel_size_into_ome_metadata(em_tiff, tmp_path):
    convert_to_zarr(em_tiff[0], tmp_path / "em.ome.zarr", chunks=(1, 32, 32), levels=2)
    node = _read(tmp_path / "em.ome.zarr")[0]
    assert node.metadata["name"] == "em"  # follows --out
    assert node.metadata["axes"] == [NM, {**NM, "name": "y"}, {**NM, "name": "x"}]
    assert _transforms(node, 0) == {"scale": pytest.approx(SSTEM)}
    # level 1: 2 × 2 means, twice the pixel size, first pixel centred half an input pixel in
    assert _transforms(node, 1) == {"scale": pytest.approx([50.0, 9.2, 9.2]),
                                    "translation": pytest.approx([0.0, 2.3, 2.3])}
    assert [d.shape for d in node.data] == [(3, 96, 80), (3, 48, 40)]
    np.testing.assert_array_equal(np.asarray(node.data[0]), em_tiff[1])
    _validate_image(tmp_path / "em.ome.zarr")


def test_convert_cli_voxel_size_option_and_honest_default(tmp_path, capsys):
    vol = np.zeros((2, 32, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", vol, photometric="minisblack")
    assert main(["volume", "convert", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "p.zarr")]) == 0
    out = capsys.readouterr().out
    assert "no physical size known: pass --voxel-size" in out
    node = _read(tmp_path / "p.zarr")[0]
    assert all("unit" not in a for a in node.metadata["axes"]) and _transforms(node) == {"scale": [1.0, 1.0, 1.0]}
    assert main(["volume", "convert", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "q.zarr"),
                 "--voxel-size", "50", "4.6", "4.6", "--voxel-unit", "nm"]) == 0
    node = _read(tmp_path / "q.zarr")[0]
    assert node.metadata["axes"][0] == NM and _transforms(node) == {"scale": pytest.approx(SSTEM)}
    assert "50 × 4.6 × 4.6 nanometer" in capsys.readouterr().out
    rc = main(["volume", "convert", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "r.zarr"),
               "--voxel-size", "50", "4.6", "4.6"])
    err = capsys.readouterr().err
    assert rc == 2 and "--voxel-size needs --voxel-unit" in err and err.count("\n") == 1
    assert not (tmp_path / "r.zarr").exists()


def test_nifti_units_come_from_its_header(tmp_path):
    img = nib.Nifti1Image(np.zeros((5, 6, 7), dtype=np.int16), np.diag([0.5, 0.6, 2.0, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / "v.nii.gz")
    convert_to_zarr(tmp_path / "v.nii.gz", tmp_path / "v.zarr")
    node = _read(tmp_path / "v.zarr")[0]
    assert [a.get("unit") for a in node.metadata["axes"]] == ["millimeter"] * 3
    assert _transforms(node) == {"scale": pytest.approx([2.0, 0.6, 0.5])}


def test_features_are_an_ome_image_at_sixteen_times_the_voxel_size(em_tiff, client, tmp_path):
    convert_to_zarr(em_tiff[0], tmp_path / "em.zarr", chunks=(1, 32, 32))
    rec = volume_features(tmp_path / "em.zarr", tmp_path / "feats.zarr", client, backbone="vit-small",
                          weights="placeholder")
    nodes = _read(tmp_path / "feats.zarr")
    assert len(nodes) == 1 and any(isinstance(s, Multiscales) for s in nodes[0].specs)
    meta = nodes[0].metadata
    assert meta["name"] == "feats"
    assert meta["axes"] == [{"name": "c", "type": "channel"}, NM, {**NM, "name": "y"}, {**NM, "name": "x"}]
    # one cell per 16 × 16 px: 73.6 nm, centred 7.5 px = 34.5 nm in
    assert _transforms(nodes[0]) == {"scale": pytest.approx([1.0, 50.0, 73.6, 73.6]),
                                     "translation": pytest.approx([0.0, 0.0, 34.5, 34.5])}
    dim = worker_backbone("vit-small", "placeholder").feature_dim
    assert nodes[0].data[0].shape == (dim, 3, 6, 5) and rec["voxel_size"] == pytest.approx([50.0, 73.6, 73.6])
    _validate_image(tmp_path / "feats.zarr")
    # --voxel-size overrides the input's (and the unit may stay the input's)
    volume_features(tmp_path / "em.zarr", tmp_path / "f2.zarr", client, backbone="vit-small", weights="placeholder",
                    voxel_size=(40, 4, 4))
    assert _transforms(_read(tmp_path / "f2.zarr")[0])["scale"] == pytest.approx([1, 40, 64, 64])


def test_segment_output_is_an_ome_label_image_linked_to_its_source(em_tiff, client, tmp_path):
    bb = worker_backbone("vit-small", "placeholder")
    images, masks = make_dataset("em", 2, size=64, seed=3)
    make_head("logistic").fit([bb.extract(im) for im in images], masks).save(tmp_path / "head")
    convert_to_zarr(em_tiff[0], tmp_path / "em.zarr", chunks=(1, 48, 48))
    volume_segment(tmp_path / "em.zarr", tmp_path / "seg.zarr", client, tmp_path / "head", save_proba=True)
    nodes = _read(tmp_path / "seg.zarr")
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(labels) == 1
    lab = labels[0]
    assert lab.metadata["name"] == "seg" and lab.metadata["axes"][0] == NM
    assert _transforms(lab) == {"scale": pytest.approx(SSTEM)}
    assert lab.data[0].shape == (3, 96, 80) and np.issubdtype(lab.data[0].dtype, np.integer)
    # the label image names its source, which the reader opens as the parent image
    assert any(Path(str(n.zarr.path)).resolve() == (tmp_path / "em.zarr").resolve() for n in nodes)
    g = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")
    assert g.attrs["ome"]["image-label"]["source"] == {"image": "../em.zarr"}
    assert [p["label-value"] for p in g.attrs["ome"]["image-label"]["properties"]] == [0, 1]
    prob = _read(tmp_path / "seg.zarr" / "probabilities")[0]
    assert [a["name"] for a in prob.metadata["axes"]] == ["c", "z", "y", "x"]
    assert prob.data[0].shape == (2, 3, 96, 80)
    from ome_zarr_models.v05.image_label import ImageLabel

    ImageLabel.from_zarr(g)
    _validate_image(tmp_path / "seg.zarr" / "probabilities")


def test_aligned_stack_keeps_the_voxel_size_and_cli_takes_voxel_size(client, tmp_path, capsys):
    vol = (np.random.default_rng(0).random((3, 64, 64)) * 255).astype(np.uint8)
    a = zarr.create_array(str(tmp_path / "plain.zarr"), shape=vol.shape, chunks=(1, 32, 32), dtype=vol.dtype)
    a[...] = vol
    volume_align(tmp_path / "plain.zarr", tmp_path / "al.zarr", client, voxel_size=SSTEM, voxel_unit="nanometer",
                 max_shift=4)
    node = _read(tmp_path / "al.zarr")[0]
    assert node.metadata["name"] == "al" and node.metadata["axes"][2] == {**NM, "name": "x"}
    assert _transforms(node) == {"scale": pytest.approx(SSTEM)}
    _validate_image(tmp_path / "al.zarr")
    # A plain zarr input has no unit to fall back on: --voxel-size alone is a one-line error, before any work.
    rc = main(["volume", "features", str(tmp_path / "plain.zarr"), "--out", str(tmp_path / "f.zarr"),
               "--weights", "placeholder", "--voxel-size", "50", "4.6", "4.6"])
    err = capsys.readouterr().err
    assert rc == 2 and "--voxel-size needs --voxel-unit" in err and not (tmp_path / "f.zarr").exists()
    rc = main(["volume", "features", str(tmp_path / "plain.zarr"), "--out", str(tmp_path / "f.zarr"),
               "--weights", "placeholder", "--voxel-size", "50", "4.6", "4.6", "--voxel-unit", "furlong"])
    assert rc == 2 and "not an OME-NGFF spatial unit" in capsys.readouterr().err
