"""The napari plugin's Qt-free parts on real files: the scribble session (feature cache, visible-area prediction,
heads that `volume segment` runs), the NIfTI and OME-Zarr readers, sample data and the stack aligner."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr
from threadpoolctl import threadpool_limits

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.datasets.io import write_nifti
from neuros.plugins.cv.datasets.synthetic import make_image
from neuros.plugins.cv.napari_plugin.align import align_layer_data
from neuros.plugins.cv.napari_plugin.readers import get_reader, read_nifti, read_ome_zarr
from neuros.plugins.cv.napari_plugin.sample_data import SAMPLE_SIZE, em_sample, histology_sample, mri_sample
from neuros.plugins.cv.napari_plugin.session import (
    LayerError,
    Session,
    check_layers,
    check_scribbles,
    crop_map,
    visible_box,
)
from neuros.plugins.cv.scribbles import simulate_scribbles


@pytest.fixture(autouse=True)
def _one_thread():
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def stack():
    """Three synthetic EM sections (uint8) with scribbles painted on the first only."""
    pairs = [make_image("em", 96, seed=4, index=i) for i in range(3)]
    vol = np.stack([(p[0] * 255).round().astype(np.uint8) for p in pairs])
    masks = np.stack([p[1] for p in pairs])
    labels = np.zeros(vol.shape, np.uint8)
    labels[0] = simulate_scribbles(masks[0], seed=0)
    return vol, masks, labels


def test_features_are_computed_once_per_slice_and_backbone(stack):
    vol, _masks, labels = stack
    s = Session("filterbank[stride=1]")
    s.train("vol", vol, labels, kind="logistic")
    assert s.cache.misses == 1  # only the painted slice
    s.train("vol", vol, labels, kind="rf")
    s.predict_slice("vol", 0, vol[0])
    assert s.cache.misses == 1 and s.cache.hits == 2
    s.predict_slice("vol", 2, vol[2])
    assert s.cache.misses == 2
    s.set_backbone("filterbank[stride=4]")  # another spec: other features
    s.train("vol", vol, labels)
    assert s.cache.misses == 3


@pytest.mark.parametrize("spec", ["filterbank[stride=1]", "filterbank[stride=4]"])
def test_visible_area_prediction_is_the_crop_of_the_whole_slice(stack, spec):
    vol, _, labels = stack
    s = Session(spec)
    s.train("vol", vol, labels, kind="logistic")
    whole, proba, window = s.predict_slice("vol", 1, vol[1])
    assert window == (slice(0, 96), slice(0, 96)) and proba.shape == (96, 96, 2)
    part, _, (rows, cols) = s.predict_slice("vol", 1, vol[1], box=(slice(13, 50), slice(30, 95)))
    assert rows.start <= 13 and rows.stop >= 50 and cols.start <= 30 and cols.stop >= 95
    assert part.shape == (rows.stop - rows.start, cols.stop - cols.start)
    if spec.endswith("stride=1]"):  # per-pixel features: the crop predicts exactly what the whole slice does
        np.testing.assert_array_equal(part, whole[rows, cols])
    else:  # bilinear upsampling of a cropped grid differs only at the crop's border cells
        inner = (slice(4, -4), slice(4, -4))
        np.testing.assert_array_equal(part[inner], whole[rows, cols][inner])


def test_visible_box_follows_the_camera():
    # 100² canvas at zoom 2 shows 50² world units around the centre (60, 40): rows 35..85, cols 15..65 (+ margin)
    rows, cols = visible_box((512, 512), (60.0, 40.0), 2.0, (100, 100), margin=0)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (35, 86, 15, 66)
    rows, cols = visible_box((512, 512), (60.0, 40.0), 2.0, (100, 100), scale=(2.0, 2.0), margin=0)
    assert (rows.start, rows.stop) == (17, 44)  # a layer scaled 2×: half as many pixels
    rows, cols = visible_box((64, 64), (32.0, 32.0), 0.1, (100, 100))
    assert (rows, cols) == (slice(0, 64), slice(0, 64))  # zoomed out: everything, clipped


def test_crop_map_covers_whole_cells():
    from neuros.plugins.cv.backbones import get_backbone

    fm = get_backbone("filterbank[stride=4]").extract(np.zeros((30, 30), np.float32))
    sub, (rows, cols) = crop_map(fm, slice(5, 11), slice(0, 30))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (4, 12, 0, 30)
    assert sub.grid_shape == (2, 8) and sub.image_shape == (8, 30)


def test_layer_checks_are_one_line():
    with pytest.raises(LayerError, match="4-D") as e:
        check_layers((2, 3, 32, 32), (2, 3, 32, 32))
    assert "\n" not in str(e.value)
    with pytest.raises(LayerError, match="no labels layer"):
        check_layers((32, 32), None)
    with pytest.raises(LayerError, match=r"has shape \(32, 31\)"):
        check_layers((32, 32), (32, 31))
    assert check_layers((32, 32, 3), (32, 32)) == (32, 32)  # RGB: colour axis is not spatial
    assert check_layers((5, 32, 32), (5, 32, 32)) == (5, 32, 32)
    with pytest.raises(LayerError, match="no painted pixel"):
        check_scribbles(np.zeros((8, 8), np.uint8))
    with pytest.raises(LayerError, match="one class only"):
        check_scribbles(np.eye(8, dtype=np.uint8))
    with pytest.raises(LayerError, match="float"):
        check_scribbles(np.eye(8))
    with pytest.raises(LayerError, match="no head yet"):
        Session().predict_slice("x", 0, np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="unknown backbone"):
        Session("no-such-backbone")
    with pytest.raises(ValueError, match="has none"):
        Session("filterbank[stride=4]", weights="random")
    assert str(Session("vit-small+filterbank[stride=4]", weights="random").spec).startswith("vit-small@random")


@pytest.fixture(scope="module")
def scheduler():
    """An in-process LocalCluster the CLI reaches by --scheduler (no worker processes to import torch)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, host="127.0.0.1", protocol="tcp://",
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_plugin_head_runs_in_volume_segment_and_the_output_opens(stack, scheduler, tmp_path, capsys):
    vol, masks, labels = stack
    s = Session("filterbank[stride=1]")
    s.train("vol", vol, labels, kind="logistic")
    s.save_head(tmp_path / "head")
    tifffile.imwrite(tmp_path / "em.tif", vol)
    assert main(["volume", "convert", str(tmp_path / "em.tif"), "--out", str(tmp_path / "em.zarr"),
                 "--voxel-size", "50", "4", "4", "--voxel-unit", "nm", "--chunks", "1,96,96", "--levels", "2"]) == 0
    (pyramid, kw, kind), = read_ome_zarr(tmp_path / "em.zarr")  # a converted volume: a two-level image
    assert kind == "image" and kw["multiscale"] and [a.shape for a in pyramid] == [vol.shape, (3, 48, 48)]
    assert kw["scale"] == pytest.approx([50.0, 4.0, 4.0]) and kw["metadata"]["units"] == ["nanometer"] * 3
    out = tmp_path / "seg.zarr"
    assert main(["volume", "segment", str(tmp_path / "em.zarr"), "--head", str(tmp_path / "head"), "--out",
                 str(out), "--scheduler", scheduler, "--probabilities"]) == 0
    got = zarr.open_group(str(out), mode="r")["0"][...]
    ours = np.stack([s.predict_slice("vol", k, vol[k])[0] for k in range(3)])
    assert (got == ours).mean() > 0.999  # the same head on the same features (float rounding at ties aside)
    assert ((ours == 2) == (masks > 0)).mean() > 0.9

    layers = read_ome_zarr(out)  # the reader: labels with their metadata, probabilities as an image
    kinds = {kw["name"]: kind for _, kw, kind in layers}
    assert kinds == {"seg": "labels", "seg probabilities": "image"}
    data, kw, _ = layers[0]
    np.testing.assert_array_equal(np.asarray(data), got)
    assert kw["scale"] == pytest.approx([50.0, 4.0, 4.0]) and kw["metadata"]["units"][-1] == "nanometer"
    assert "image-label" in kw["metadata"]["ome"].get("ome", kw["metadata"]["ome"])
    assert np.asarray(layers[1][0]).shape == (2, *vol.shape)
    assert get_reader(str(out)) is not None and get_reader(str(tmp_path / "em.tif")) is None


def test_nifti_reader_uses_voxel_spacing_and_label_intent(tmp_path):
    vol = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 3.0, 1.0])), tmp_path / "t1.nii.gz")
    (data, kw, kind), = get_reader(str(tmp_path / "t1.nii.gz"))(str(tmp_path / "t1.nii.gz"))
    assert kind == "image" and kw["scale"] == pytest.approx((0.8, 0.8, 3.0)) and kw["name"] == "t1"
    np.testing.assert_array_equal(data, vol)
    mask = (vol > 0.5).astype(np.uint8)
    write_nifti(tmp_path / "mask.nii.gz", mask, like=tmp_path / "t1.nii.gz", intent="label")
    (data, kw, kind), = read_nifti(tmp_path / "mask.nii.gz")
    assert kind == "labels" and kw["scale"] == pytest.approx((0.8, 0.8, 3.0))
    np.testing.assert_array_equal(data, mask)


def test_sample_data_are_the_synthetic_generators():
    em = em_sample()
    assert [kind for _, _, kind in em] == ["image", "labels", "labels"]
    image, truth, scribbles = (d for d, _, _ in em)
    assert image.shape == truth.shape == scribbles.shape == (SAMPLE_SIZE, SAMPLE_SIZE)
    assert set(np.unique(scribbles)) == {0, 1, 2} and (scribbles > 0).mean() < 0.02
    assert mri_sample()[0][0].shape == (SAMPLE_SIZE, SAMPLE_SIZE)
    hist = histology_sample()[0]
    assert hist[0].shape == (SAMPLE_SIZE, SAMPLE_SIZE, 3) and hist[1]["rgb"] is True


def test_align_translation_and_rigid_record_transforms():
    from scipy import ndimage as ndi

    base = make_image("em", 96, seed=3)[0]
    vol = np.stack([ndi.shift(base, s, order=1, mode="nearest") for s in [(0, 0), (2, -3), (4, -1)]])
    aligned, meta = align_layer_data(vol, "translation")
    assert aligned.shape == vol.shape and meta["model"] == "translation"
    assert np.abs([[r["dy"], r["dx"]] for r in meta["transforms"]]).round().tolist() == [[0, 0], [2, 3], [4, 1]]
    aligned, meta = align_layer_data(vol, "rigid")
    assert meta["model"] == "rigid" and len(meta["transforms"]) == 3
    assert np.allclose(meta["transforms"][0]["matrix"], np.eye(2), atol=1e-3)
    assert np.abs(aligned[2, 12:-12, 12:-12] - aligned[0, 12:-12, 12:-12]).mean() < \
        np.abs(vol[2, 12:-12, 12:-12] - vol[0, 12:-12, 12:-12]).mean() / 2
    with pytest.raises(ValueError, match="3-D"):
        align_layer_data(vol[0])
