"""Every backbone says its grid step (``stride``), ``receptive_field`` and ``halo``; where the receptive field is
bounded the halo is exact — a block cut from the image with that much context gives the whole image's features —
and tight — one grid cell less is not enough. Also: the backbone registry is a leaf of the import graph."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

from neuros.plugins.cv.backbones import DINOv3Backbone, PlaceholderBackbone, get_backbone
from neuros.plugins.cv.backbones.filterbank import pixel_features, pixel_radius
from neuros.plugins.cv.scale.features import grid_step
from tiny_models import block_vs_whole

BACKBONES = Path(__file__).resolve().parents[1] / "src" / "neuros" / "plugins" / "cv" / "backbones"




# ---------------------------------------------------------------------------------------------- filter bank
@pytest.mark.parametrize(("sigmas", "patch", "radius", "halo"), [
    ((1.0, 2.0, 4.0, 8.0), 16, 49, 64),  # structure tensor at σ=8: 2·int(3·8 + 0.5) + 1
    ((1.0,), 16, 7, 16),
    ((3.0,), 8, 19, 24),  # 2·int(9.5) + 1 = 19 > the DoG's int(3·4.8 + 0.5) = 14
])
def test_filterbank_halo_comes_from_its_sigmas_and_3_sigma_truncation(sigmas, patch, radius, halo):
    bb = get_backbone("filterbank", sigmas=sigmas, patch_size=patch)
    assert pixel_radius(sigmas) == radius
    assert bb.stride == patch and bb.receptive_field == patch + 2 * radius
    assert bb.halo == halo and bb.halo_exact


def test_filterbank_pixel_radius_is_exact_and_tight():
    img = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    sigmas = (1.0, 2.0)
    r = pixel_radius(sigmas)  # 13
    whole = pixel_features(img, sigmas)
    win = (slice(40, 56), slice(40, 56))

    def crop_features(margin: int) -> np.ndarray:
        part = pixel_features(img[40 - margin : 56 + margin, 40 - margin : 56 + margin], sigmas)
        return part[margin : margin + 16, margin : margin + 16]

    np.testing.assert_array_equal(crop_features(r), whole[win])
    assert not np.array_equal(crop_features(r - 1), whole[win])


def test_filterbank_block_with_its_halo_equals_the_whole_image():
    img = np.random.default_rng(1).random((192, 176)).astype(np.float32)
    bb = get_backbone("filterbank", sigmas=(1.0, 2.0))  # halo 16
    assert bb.halo == 16
    assert block_vs_whole(bb, img, (64, 128, 48, 112), bb.halo) == 0.0
    assert block_vs_whole(bb, img, (64, 128, 48, 112), 0) > 1e-3


# ---------------------------------------------------------------------------------------------- placeholder
def test_placeholder_is_its_own_class_with_one_patch_of_receptive_field():
    bb = DINOv3Backbone("vit-small", weights="placeholder")
    assert type(bb) is PlaceholderBackbone and bb.weights == "placeholder"
    assert (bb.stride, bb.receptive_field, bb.halo, bb.halo_exact) == (16.0, 16.0, 0, True)
    d = bb.describe()
    assert d["spec"] == "vit-small@placeholder" and "stand_in" in d and "placeholder" in d
    img = np.random.default_rng(2).random((128, 112))
    assert block_vs_whole(bb, img, (48, 96, 32, 80), 0) == 0.0


def test_placeholder_at_scale_2_needs_the_resize_margin():
    bb = DINOv3Backbone("vit-small", weights="placeholder", scale=2)
    assert bb.stride == 8 and bb.receptive_field == 8 + 2 and bb.halo == 8  # bilinear: one pixel per side
    img = np.random.default_rng(3).random((96, 96))
    assert block_vs_whole(bb, img, (32, 64, 32, 64), bb.halo) < 1e-5
    assert block_vs_whole(bb, img, (32, 64, 32, 64), 0) > 1e-3


def test_placeholder_grid_is_its_patch_whatever_the_convnext_stage():
    # The placeholder reads 16-px patches; a ConvNeXt stage does not change that (it used to report stride 8).
    fm = DINOv3Backbone("cnx-tiny", weights="placeholder", stage=1).extract(np.zeros((64, 48)))
    assert fm.grid_shape == (4, 3) and fm.stride == 16


def test_grid_step_refuses_a_fractional_stride():
    assert grid_step(get_backbone("filterbank", patch_size=8)) == 8
    with pytest.raises(ValueError, match=r"stride of 5\.33333 px.*whole number"):
        grid_step(DINOv3Backbone("vit-small", weights="placeholder", scale=3))


# ---------------------------------------------------------------------------------------------- networks
def test_tiny_vit_halo_is_the_documented_approximation(tiny_vit_dir):
    bb = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained")
    assert bb.stride == 16 and math.isinf(bb.receptive_field) and not bb.halo_exact and bb.halo == 64
    bb2 = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", scale=2)
    assert bb2.stride == 8 and bb2.halo == 32  # four grid cells of context
    twin = copy.deepcopy(bb)  # copies keep the network; no second weights look-up
    img = np.random.default_rng(4).random((64, 64))
    np.testing.assert_array_equal(twin.extract(img).features, bb.extract(img).features)


def test_tiny_convnext_halo_covers_its_stage_and_is_tight(tiny_convnext_dir):
    bb = DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained")  # one block per stage, stage 2
    # stem 4 + 24 (7×7 at step 4) + 4 (2×2 down) + 48 (step 8) + 8 (down) + 96 (step 16)
    assert bb.stride == 16 and bb.receptive_field == 184 and bb.halo == 96 and bb.halo_exact
    assert DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained", stage=1).stride == 8
    img = np.random.default_rng(5).random((352, 352)).astype(np.float32)
    core = (128, 192, 144, 208)
    assert block_vs_whole(bb, img, core, bb.halo) == 0.0  # measured: exactly equal
    # One cell less lets the zero padding of the block's border reach the core (faintly through random weights:
    # measured 2e-7; 64 px: 2e-4, 0 px: 4e-2).
    assert block_vs_whole(bb, img, core, bb.halo - 16) > 0.0


# ---------------------------------------------------------------------------------------------- import graph
def test_backbone_registry_is_a_leaf_and_base_and_spec_import_no_implementation():
    """The specifics of the backbones package; circles anywhere are tests/test_architecture.py's job."""
    from test_architecture import _imports, _modules

    mods = _modules()
    known = set(mods)
    graph = {m.split(".", 1)[1] if "." in m else "__init__": {d.split(".", 1)[1] for d in _imports(m, p, known)
                                                            if d.startswith("backbones.")}
             for m, p in mods.items() if m == "backbones" or m.startswith("backbones.")}
    implementations = {"dinov3", "placeholder", "filterbank", "grid", "resolve"}
    assert graph["registry"] == set()
    assert not graph["base"] & implementations and not graph["spec"] & implementations
    assert {"dinov3", "filterbank"} <= graph["__init__"]  # the package imports each implementation
