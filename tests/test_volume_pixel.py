"""``neuros-cv volume segment`` with a pixel head (filter bank at stride 1) on real ssTEM sections: blockwise
labels, probabilities and instance labels equal the whole-array result ``head.predict_proba(TiledFeatures(...))``
exactly — instances merged across block borders, connected components equal to those of whole sections (ids
numbered on through the sections in raster order); watershed objects are never cut by a border, also when the
run was interrupted and resumed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from threadpoolctl import threadpool_limits

from neuros.plugins.cv.backbones.spec import BackboneSpec
from neuros.plugins.cv.cli import main
from neuros.plugins.cv.datasets.catalog import load_sstem
from neuros.plugins.cv.dense import TiledFeatures
from neuros.plugins.cv.heads import load_head, make_head
from neuros.plugins.cv.instances import label_instances
from neuros.plugins.cv.scale.blocks import iter_blocks
from neuros.plugins.cv.scale.features import scale_intensity
from neuros.plugins.cv.scale.merge_instances import merge_blocks


@pytest.fixture(autouse=True)
def _one_thread():
    """One BLAS/OpenMP thread: the test machine is shared, and oversubscribed OpenMP pools stall."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def scheduler():
    """An in-process LocalCluster the CLI reaches by --scheduler (no worker processes to import torch)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, threads_per_worker=2, host="127.0.0.1", protocol="tcp://",
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def em(sstem_dir, tmp_path_factory):
    """Three real ssTEM sections (crops of 96 × 112 px, uint8) as a zarr volume, and a stride-1 rf head."""
    d = tmp_path_factory.mktemp("vol")
    data = load_sstem(sstem_dir, sections=(0, 1, 8), downsample=1)
    vol = np.stack([(im[272:368, 384:496] * 255).round().astype(np.uint8) for im in data.images])
    src = zarr.create_array(str(d / "em.zarr"), shape=vol.shape, chunks=(1, 48, 48), dtype=vol.dtype)
    src[...] = vol
    bb = BackboneSpec.parse("filterbank[stride=1,sigmas=[1,2]]").build()
    train = [TiledFeatures(bb, im[:192, :192]) for im in data.images[:2]]
    head = make_head("rf", n_estimators=10, max_depth=8, class_weight="balanced", max_samples_per_class=400)
    head.fit(train, [m[:192, :192] for m in data.masks[:2]]).save(d / "head")
    return d, vol, bb


@pytest.fixture(scope="module")
def whole_proba(em):
    """The whole-array probabilities (z, y, x, K) of the volume."""
    d, vol, bb = em
    head = load_head(d / "head")
    return np.stack([head.predict_proba(TiledFeatures(bb, scale_intensity(s, 0.0, 255.0), tile=40)) for s in vol])


def whole_components(ref: np.ndarray, min_size: int) -> np.ndarray:
    """Connected components of class 2 in every whole section, ids numbered on through the sections."""
    out, offset = np.zeros(ref.shape[:3], np.uint32), 0
    for z, section in enumerate(ref):
        lab = label_instances(section, cls=2, method="components", min_size=min_size)
        out[z] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
    return out


def crossing(inst: np.ndarray, at: int = 64) -> np.ndarray:
    """Ids of objects that lie on both sides of the border y = at or x = at."""
    return np.union1d(np.intersect1d(inst[:, at - 1, :], inst[:, at, :]),
                      np.intersect1d(inst[:, :, at - 1], inst[:, :, at]))[1:]


def test_pixel_head_blockwise_equals_whole_array(em, whole_proba, scheduler, tmp_path, capsys):
    d, vol, bb = em
    out = tmp_path / "seg.zarr"
    cmd = ["volume", "segment", str(d / "em.zarr"), "--head", str(d / "head"), "--out", str(out), "--scheduler",
           scheduler, "--block", "64,64", "--probabilities", "--instances", "2", "--instance-method", "components",
           "--min-size", "4"]
    assert main(cmd) == 0
    assert '"computed": 12' in capsys.readouterr().out  # 3 sections × 2 × 2 blocks of 64² (ragged last ones)
    head = load_head(d / "head")
    ref = whole_proba
    g = zarr.open_group(str(out), mode="r")
    attrs = g.attrs["neuros_cv"]
    assert attrs["complete"] is True and attrs["run"]["halo"] == bb.halo + 1  # receptive field + one cell
    np.testing.assert_array_equal(np.moveaxis(g["probabilities/0"][...], 0, -1), ref)
    np.testing.assert_array_equal(g["0"][...], head.classes_[ref.argmax(axis=-1)])
    inst = g["instances/0"][...]
    assert inst.dtype == np.uint32 and inst.shape == vol.shape
    # Merged across block borders: the connected components of each whole section, same ids.
    expected = whole_components(ref, min_size=4)
    np.testing.assert_array_equal(inst, expected)
    assert crossing(expected).size >= 2 and expected.max() > 10  # objects the 64² blocks cut do exist
    assert attrs["instance_merge"] == {"merged": "across block borders", "connectivity": 1,
                                       "pieces": attrs["instance_merge"]["pieces"], "objects": int(expected.max())}
    assert attrs["instance_merge"]["pieces"] > expected.max()  # pieces of cut (and of small) objects
    assert attrs["run"]["instances"]["merged"] == "across block borders" and "instance_pieces" not in g
    # A re-run resumes (nothing to compute, nothing merged again); other instance settings are refused.
    assert main(cmd) == 0
    assert '"computed": 0' in capsys.readouterr().out
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["instances/0"][...], expected)
    assert main([*cmd[:-2], "--min-size", "5"]) != 0
    assert "different settings (instances)" in capsys.readouterr().err


def test_watershed_objects_are_not_cut_by_borders_after_a_resumed_run(em, whole_proba, scheduler, tmp_path,
                                                                     capsys):
    d, vol, _ = em
    src = tmp_path / "em.zarr"
    shutil.copytree(d / "em.zarr", src)
    chunk = src / "c" / "2" / "1" / "1"  # section 2, rows and columns 48..96: every block of section 2 reads it
    good = chunk.read_bytes()
    chunk.write_bytes(b"not a zstd frame" * 4)
    out = tmp_path / "seg.zarr"
    cmd = ["volume", "segment", str(src), "--head", str(d / "head"), "--out", str(out), "--scheduler", scheduler,
           "--block", "64,64", "--instances", "2", "--min-size", "6", "--retries", "0"]
    assert main(cmd) != 0  # section 2 failed: its pieces are missing, so nothing is merged yet
    assert "4 of 12 blocks failed" in capsys.readouterr().err
    g = zarr.open_group(str(out), mode="r")
    assert "instance_merge" not in g.attrs["neuros_cv"] and not g["instances/0"][...].any()
    chunk.write_bytes(good)
    assert main(cmd) == 0
    assert '"computed": 4' in capsys.readouterr().out
    inst = zarr.open_group(str(out), mode="r")["instances/0"][...]
    # Equal to per-block watersheds of the whole-array probabilities, merged in memory.
    pieces = np.zeros(vol.shape, np.uint32)
    for n, b in enumerate(iter_blocks(vol.shape, (64, 64), 0, 1)):
        sl = (b.z, slice(*b.core_y), slice(*b.core_x))
        local = label_instances(whole_proba[sl], cls=2, method="watershed")
        pieces[sl] = np.where(local > 0, local + n * 64 * 64, 0)
    np.testing.assert_array_equal(inst, merge_blocks(pieces, (64, 64), min_size=6))
    # No object is cut by a border: 4-neighbours on either side of every border that are both objects agree.
    for a, b in ((inst[:, 63, :], inst[:, 64, :]), (inst[:, :, 63], inst[:, :, 64])):
        both = (a > 0) & (b > 0)
        assert both.any()
        np.testing.assert_array_equal(a[both], b[both])
    sizes = np.bincount(inst.ravel())[1:]
    assert sizes.size == inst.max() and sizes.min() >= 6  # ids 1..n, min_size applied to whole objects
    assert crossing(inst).size >= 2
    # Every object lies inside the class-2 foreground.
    assert (whole_proba[..., 2][inst > 0] >= 0.5).all()


def test_volume_instances_of_an_unknown_class_is_one_line(em, scheduler, tmp_path, capsys):
    d, _, _ = em
    out = tmp_path / "seg.zarr"
    assert main(["volume", "segment", str(d / "em.zarr"), "--head", str(d / "head"), "--out", str(out),
                 "--scheduler", scheduler, "--instances", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("neuros-cv volume: error: --instances 7 is not a class of the head (its classes: [0, 1, 2]); "
                   "give one of those values")
    assert not out.exists()
