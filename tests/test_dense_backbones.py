"""Feature maps at any stride: the filter bank unpooled or pooled on a finer grid, DINOv3 grids made denser by
shift-and-stitch and upsampling (bilinear or guided), and the guided filter itself (issue 12, contract §1)."""

from __future__ import annotations

import numpy as np
import pytest

from neuros.plugins.cv.backbones import BackboneSpec, DINOv3Backbone, PlaceholderBackbone, get_backbone
from neuros.plugins.cv.backbones.filterbank import pixel_features, pixel_radius
from neuros.plugins.cv.backbones.placeholder import placeholder_features
from neuros.plugins.cv.features import upsample_to_pixels
from neuros.plugins.cv.guided import guided_filter, guided_upsample
from tiny_models import block_vs_whole

SIGMAS = (1.0, 2.0)  # pixel_radius 13: small halos, fast filters


def _image(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w)).astype(np.float32)




# ---------------------------------------------------------------------------------------------- filter bank
def test_filterbank_stride_1_is_the_pixel_stack_unpooled():
    img = _image(37, 41)
    bb = BackboneSpec.parse("filterbank[sigmas=[1,2],stride=1]").build()
    fm = bb.extract(img)
    assert fm.stride == 1.0 and fm.grid_shape == (37, 41) and fm.feature_dim == bb.feature_dim == 1 + 8 * 2
    np.testing.assert_array_equal(fm.features, pixel_features(img, SIGMAS))
    # pool does not apply to one-pixel cells: ignored, and not part of the spec
    assert str(get_backbone("filterbank", sigmas=SIGMAS, stride=1, pool="mean").spec) == str(bb.spec)
    assert str(bb.spec) == "filterbank[sigmas=[1,2],stride=1]"
    np.testing.assert_array_equal(fm.to_pixels(), fm.features)  # stride 1: to_pixels is the identity


def test_filterbank_stride_4_pools_the_stack_on_a_4px_grid():
    img = _image(30, 26)  # not multiples of 4: the grid is ceil(H / 4) × ceil(W / 4)
    fm = get_backbone("filterbank", sigmas=SIGMAS, stride=4).extract(img)
    assert fm.stride == 4.0 and fm.grid_shape == (8, 7) and fm.feature_dim == 2 * 17
    px = pixel_features(np.pad(img, ((0, 2), (0, 2)), mode="reflect"), SIGMAS).reshape(8, 4, 7, 4, 17)
    np.testing.assert_allclose(fm.features[..., :17], px.mean(axis=(1, 3)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fm.features[..., 17:], px.std(axis=(1, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 4])
def test_filterbank_tiles_with_the_halo_equal_the_whole_image(stride):
    bb = get_backbone("filterbank", sigmas=SIGMAS, stride=stride)
    r = pixel_radius(SIGMAS)
    assert bb.halo == -(-r // stride) * stride and bb.halo_exact
    assert bb.receptive_field == stride + 2 * r
    img = _image(112, 104, seed=1)
    core = (40, 72, 32, 64)
    assert block_vs_whole(bb, img, core, bb.halo) == 0.0
    assert block_vs_whole(bb, img, core, bb.halo - stride) > 0  # one cell less is not enough (tight)


def test_default_filterbank_is_unchanged_and_patch_size_is_the_old_name_of_stride():
    img = _image(50, 70)
    default = get_backbone("filterbank")
    assert str(default.spec) == "filterbank" and default.stride == 16.0 and default.feature_dim == 66
    np.testing.assert_array_equal(get_backbone("filterbank", stride=16).extract(img).features,
                                  default.extract(img).features)
    old = BackboneSpec.parse("filterbank[patch_size=8]")  # how specs and heads said it before strides
    assert old == BackboneSpec.parse("filterbank[stride=8]") and str(old) == "filterbank[stride=8]"
    record = {"name": "filterbank", "weights": None, "options": {"patch_size": 8}, "string": "filterbank[patch_size=8]"}
    assert BackboneSpec.from_dict(record) == old
    np.testing.assert_array_equal(old.build().extract(img).features,
                                  get_backbone("filterbank", patch_size=8).extract(img).features)
    with pytest.raises(ValueError, match="disagree"):
        BackboneSpec.parse("filterbank[patch_size=8,stride=4]")


# ---------------------------------------------------------------------------------------------- DINOv3 denser
@pytest.mark.parametrize(("options", "stride", "spec"), [
    ({"shifts": 2}, 8.0, "vit-small@placeholder[shifts=2]"),
    ({"shifts": 4}, 4.0, "vit-small@placeholder[shifts=4]"),
    ({"stride": 4}, 4.0, "vit-small@placeholder[stride=4]"),
    ({"stride": 4, "shifts": 2, "upsample": "guided"}, 4.0, "vit-small@placeholder[shifts=2,stride=4,upsample=guided]"),
    ({"scale": 2, "stride": 4}, 4.0, "vit-small@placeholder[scale=2,stride=4]"),
    ({"shifts": 2, "stride": 8, "upsample": "guided"}, 8.0, "vit-small@placeholder[shifts=2]"),  # nothing upsampled
])
def test_placeholder_takes_the_dense_options_and_records_them_canonically(options, stride, spec):
    bb = BackboneSpec.parse("vit-small@placeholder").with_options(**options).build()
    assert type(bb) is PlaceholderBackbone and str(bb.spec) == spec and BackboneSpec.parse(spec) == bb.spec
    fm = bb.extract(_image(50, 70))
    assert fm.stride == stride and fm.grid_shape == (-(-50 // int(stride)), -(-70 // int(stride)))
    assert fm.feature_dim == 384 and fm.spec == bb.spec


def test_shift_and_stitch_centres_each_cell_on_its_patch():
    img = _image(64, 64, seed=2)
    fm = get_backbone("vit-small", weights="placeholder", shifts=4).extract(img)  # stride 4: 16 passes
    assert fm.grid_shape == (16, 16)
    rgb = np.repeat(img[:, :, None], 3, axis=2)
    for i, j in [(2, 3), (5, 10), (9, 4), (12, 13)]:  # interior cells: their 16-px patch is inside the image
        y, x = 4 * i - 6, 4 * j - 6  # cell [4i, 4i+4) is the centre of patch [4i-6, 4i+10)
        want = placeholder_features(rgb[y : y + 16, x : x + 16], "vit-small", 384)[0, 0]
        np.testing.assert_allclose(fm.features[i, j], want, rtol=1e-5, atol=1e-5)


def test_shift_and_stitch_interleaves_the_model_grids_of_shifted_inputs(tiny_vit_dir):
    img = _image(64, 64, seed=3)
    plain = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained")
    dense = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", shifts=2)
    fm = dense.extract(img)
    assert (fm.stride, fm.grid_shape, dense.stride, dense.halo) == (8.0, (8, 8), 8.0, 64)
    assert str(dense.spec).endswith("[shifts=2]")
    padded = np.pad(img, 4, mode="reflect")  # centred offsets -4 and +4 (half of 16 - 8)
    for a in range(2):
        for b in range(2):
            shifted = padded[8 * a : 8 * a + 64, 8 * b : 8 * b + 64]
            np.testing.assert_allclose(fm.features[a::2, b::2], plain.extract(shifted).features, atol=1e-5)
    # with no upsampling left, stride=8 reached by shifts is the same map
    again = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", shifts=2, stride=8).extract(img)
    np.testing.assert_array_equal(again.features, fm.features)


def test_upsampled_grids_bilinear_and_guided(tiny_vit_dir):
    img = np.zeros((64, 64), np.float32)
    img[:, 29:] = 1.0  # a vertical edge inside a patch
    native = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained").extract(img)
    bil = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", stride=4).extract(img)
    gui = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", stride=4, upsample="guided").extract(img)
    assert bil.grid_shape == gui.grid_shape == (16, 16) and bil.stride == gui.stride == 4.0
    np.testing.assert_allclose(bil.features, upsample_to_pixels(native.features, 4, (16, 16)), atol=1e-6)
    # the guided map changes across the image's edge (between cells 6 and 7 of 4 px) more than bilinear does
    jump = [np.linalg.norm(m.features[:, 7] - m.features[:, 6], axis=-1).mean() for m in (bil, gui)]
    assert jump[1] > 1.5 * jump[0]
    assert gui.meta["dense"]["upsample"] == "guided" and gui.meta["dense"]["passes"] == 1


def test_placeholder_dense_blocks_with_the_halo_equal_the_whole_image():
    img = _image(112, 112, seed=4)
    for options in ({"stride": 4}, {"shifts": 2, "stride": 4, "upsample": "guided"}):
        bb = get_backbone("vit-small", weights="placeholder", **options)
        assert bb.halo_exact and bb.halo % 16 == 0
        assert block_vs_whole(bb, img, (48, 64, 32, 80), bb.halo) < 1e-5, options
        assert block_vs_whole(bb, img, (48, 64, 32, 80), 0) > 1e-3, options


@pytest.mark.parametrize(("options", "match"), [
    ({"stride": 3}, "stride=3 is not reachable"),
    ({"stride": 32}, "not reachable"),
    ({"shifts": 3}, "shifts=3"),
    ({"stride": 4, "upsample": "nearest"}, "upsample must be"),
])
def test_bad_dense_options_are_one_line_errors(options, match):
    with pytest.raises(ValueError, match=match) as e:
        get_backbone("vit-small", weights="placeholder", **options)
    assert "\n" not in str(e.value)


def test_dense_spec_strings_round_trip(offline_env):
    for text in ("vit-small@random(seed=3)[stride=4]", "vit-small@random(seed=3)[shifts=2,stride=4,upsample=guided]",
                 "filterbank[stride=1]", "vit-small[scale=2,stride=2]"):
        spec = BackboneSpec.parse(text)
        assert str(spec) == text and BackboneSpec.parse(str(spec)) == spec
    # offline defaults: no weights here, so the placeholder runs with the same grid options
    built = BackboneSpec.parse("vit-small[stride=4]").build()
    assert built.spec == BackboneSpec.parse("vit-small@placeholder[stride=4]") and built.stride == 4.0


# ---------------------------------------------------------------------------------------------- guided filter
def _step_probabilities():
    img = np.zeros((64, 64), np.float32)
    img[:, 29:] = 1.0
    g = img[8::16, 8::16]  # the 16-px grid's cell centres: the edge sits inside the second column of cells
    return img, np.stack([1 - g, g], axis=-1)


def test_guided_upsampling_puts_the_class_boundary_on_the_image_edge():
    img, grid = _step_probabilities()
    truth = (img > 0.5).astype(int)
    guided = guided_upsample(grid, 16, img)
    bilinear = upsample_to_pixels(grid, 16, img.shape)
    assert guided.shape == (64, 64, 2)
    np.testing.assert_array_equal(guided.argmax(-1), truth)  # edge-preserving ...
    assert (bilinear.argmax(-1) != truth).sum() >= 64  # ... where bilinear is off by pixels along the edge


def test_guided_probabilities_stay_in_0_1_and_sum_to_1():
    img = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (48, 1))  # a ramp: the local linear fit overshoots
    proba = np.zeros((6, 6, 3), np.float32)
    proba[:, :3, 0], proba[:, 3:, 1], proba[:2] = 1, 1, [0.2, 0.2, 0.6]  # a class step the guide does not have
    raw = guided_filter(upsample_to_pixels(proba, 8, img.shape), img, 8, 1e-3)
    assert raw.min() < -0.01 and raw.max() > 1.01  # the clipping below is needed
    np.testing.assert_allclose(raw.sum(-1), 1, atol=1e-5)  # the filter is linear: sums are kept
    p = guided_upsample(proba, 8, img)
    assert p.dtype == np.float32 and p.min() >= 0 and p.max() <= 1
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)
    logits = np.random.default_rng(5).normal(size=(6, 6, 3)) * 3
    feats = guided_upsample(logits, 8, img)  # not probabilities: left as the filter gives them
    np.testing.assert_allclose(feats, guided_filter(upsample_to_pixels(logits, 8, img.shape), img, 8, 1e-3),
                               atol=1e-6)


def test_guided_filter_keeps_constants_and_refuses_bad_input():
    img = _image(20, 20)
    np.testing.assert_allclose(guided_filter(np.full((20, 20, 2), 3.0), img, 2), 3.0, atol=1e-4)
    with pytest.raises(ValueError, match="radius"):
        guided_filter(np.zeros((20, 20)), img, 0)
    with pytest.raises(ValueError, match="does not cover"):
        guided_upsample(np.zeros((2, 2, 2)), 4, img)
    with pytest.raises(ValueError, match="NaN"):
        guided_upsample(np.full((5, 5, 2), np.nan), 4, img)
