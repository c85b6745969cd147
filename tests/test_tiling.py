"""Tiling and stitching: windows partition the image; tiled features agree with whole-image features."""

from __future__ import annotations

import numpy as np
import pytest

from neuros.plugins.cv.backbones import DINOv3Backbone
from neuros.plugins.cv.tiling import axis_windows, tiles


@pytest.mark.parametrize(("length", "tile", "overlap"), [(64, 64, 16), (80, 64, 16), (512, 160, 32), (496, 96, 0),
                                                         (48, 128, 32), (1008, 256, 96)])
def test_cores_partition_the_axis_and_windows_have_one_size(length, tile, overlap):
    w = axis_windows(length, tile, overlap, 16)
    cover = np.zeros(length, dtype=int)
    for start, stop, c0, c1 in w:
        assert start <= c0 < c1 <= stop and stop - start == min(tile, length)
        assert 0 <= start and stop <= length and all(v % 16 == 0 for v in (start, stop, c0, c1))
        if c0 > 0:
            assert c0 - start >= overlap  # context before an inner core
        if c1 < length:
            assert stop - c1 >= overlap  # and after it
        cover[c0:c1] += 1
    assert (cover == 1).all()


def test_tile_validation():
    for args, text in (((64, 60, 0, 16), "multiple"), ((64, 32, 16, 16), "larger than twice"),
                       ((64, 48, -16, 16), ">= 0")):
        with pytest.raises(ValueError, match=text):
            axis_windows(*args)
    assert len(tiles((100 * 16, 16), 256, 64, 16)) == len(axis_windows(1600, 256, 64, 16))


def test_convnext_tiles_match_the_whole_image_once_overlap_covers_the_receptive_field(tiny_convnext_dir):
    img = np.random.default_rng(0).random((336, 304)).astype(np.float32)
    whole = DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained").extract(img)
    tiled = DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained", tile=320, overlap=128, batch_size=2)
    fm = tiled.extract(img)
    assert fm.meta["tiled"] and fm.grid_shape == whole.grid_shape
    np.testing.assert_allclose(fm.features, whole.features, atol=1e-4)
    # too little overlap is *not* exact: the test above can fail
    short = DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained", tile=96, overlap=16).extract(img)
    assert not np.allclose(short.features, whole.features, atol=1e-4)


def test_vit_tiles_approximate_the_whole_image_away_from_borders(tiny_vit_dir):
    img = np.random.default_rng(1).random((256, 256)).astype(np.float32)
    whole = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained").extract(img).features
    bb = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", tile=192, overlap=48)
    got = bb.extract(img).features
    cos = (got * whole).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(whole, axis=-1))
    # ViT attention is global: tiles only approximate; cosine similarity, not equality
    assert np.median(cos) > 0.9 and cos.min() > 0.7
    assert not np.allclose(got, whole, atol=1e-4)


def test_forward_passes_never_exceed_the_tile(tiny_vit_dir):
    shapes: list[tuple[int, ...]] = []

    class Recording(DINOv3Backbone):
        def _forward(self, batch):
            shapes.append(batch.shape)
            return super()._forward(batch)

    bb = Recording(str(tiny_vit_dir), weights="pretrained", tile=64, overlap=16, batch_size=3)
    fm = bb.extract(np.zeros((200, 150)))
    assert fm.grid_shape == (13, 10)
    assert all(s[0] <= 3 and s[1] <= 64 and s[2] <= 64 for s in shapes) and len(shapes) > 1
