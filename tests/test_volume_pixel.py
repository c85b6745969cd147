"""``neuros-cv volume segment`` with a pixel head (filter bank at stride 1) on real ssTEM sections: blockwise
labels, probabilities and instance labels equal the whole-array result ``head.predict_proba(TiledFeatures(...))``
exactly; instance ids are unique over the volume (objects are not merged across block borders)."""

from __future__ import annotations

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


def test_pixel_head_blockwise_equals_whole_array(em, scheduler, tmp_path, capsys):
    d, vol, bb = em
    out = tmp_path / "seg.zarr"
    assert main(["volume", "segment", str(d / "em.zarr"), "--head", str(d / "head"), "--out", str(out),
                 "--scheduler", scheduler, "--block", "64,64", "--probabilities", "--instances", "2",
                 "--min-size", "4"]) == 0
    assert '"computed": 12' in capsys.readouterr().out  # 3 sections × 2 × 2 blocks of 64² (ragged last ones)
    head = load_head(d / "head")
    ref = np.stack([head.predict_proba(TiledFeatures(bb, scale_intensity(s, 0.0, 255.0), tile=40)) for s in vol])
    g = zarr.open_group(str(out), mode="r")
    attrs = g.attrs["neuros_cv"]
    assert attrs["complete"] is True and attrs["run"]["halo"] == bb.halo + 1  # receptive field + one cell
    np.testing.assert_array_equal(np.moveaxis(g["probabilities/0"][...], 0, -1), ref)
    np.testing.assert_array_equal(g["0"][...], head.classes_[ref.argmax(axis=-1)])
    inst = g["instances/0"][...]
    assert inst.dtype == np.uint32 and inst.shape == vol.shape
    # Per block: the objects of the whole-array probabilities inside that block's core, shifted by the block's
    # number × block pixels — unique ids over the volume, cut objects not merged.
    blocks = list(iter_blocks(vol.shape, (64, 64), 0, 1))
    ids = []
    for n, b in enumerate(blocks):
        sl = (slice(*b.core_y), slice(*b.core_x))
        local = label_instances(ref[b.z][sl], cls=2, min_size=4)
        got = inst[b.z][sl]
        np.testing.assert_array_equal(got, np.where(local > 0, local + n * 64 * 64, 0))
        ids.append(np.unique(got[got > 0]))
    every = np.concatenate(ids)
    assert every.size > 3 and np.unique(every).size == every.size
    # A re-run resumes (nothing to compute); other instance settings are refused, nothing changed.
    assert main(["volume", "segment", str(d / "em.zarr"), "--head", str(d / "head"), "--out", str(out),
                 "--scheduler", scheduler, "--block", "64,64", "--probabilities", "--instances", "2",
                 "--min-size", "4"]) == 0
    assert '"computed": 0' in capsys.readouterr().out


def test_volume_instances_of_an_unknown_class_is_one_line(em, scheduler, tmp_path, capsys):
    d, _, _ = em
    out = tmp_path / "seg.zarr"
    assert main(["volume", "segment", str(d / "em.zarr"), "--head", str(d / "head"), "--out", str(out),
                 "--scheduler", scheduler, "--instances", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("neuros-cv volume: error: --instances 7 is not a class of the head (its classes: [0, 1, 2]); "
                   "give one of those values")
    assert not out.exists()
