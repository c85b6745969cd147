"""Fused backbones (``A+B``): one spec string, one registry path, standardised sources at the common stride,
exact blocks on the classical path, and heads that refuse a fused map for a plain one (issue 12, item 2)."""

from __future__ import annotations

import numpy as np
import pytest

from neuros.plugins.cv.backbones import BackboneSpec, FusedBackbone, UnknownBackboneError, get_backbone
from neuros.plugins.cv.backbones.fused import reference_image
from neuros.plugins.cv.backbones.registry import lookup
from neuros.plugins.cv.backbones.spec import option_defaults, takes_weights
from neuros.plugins.cv.heads import make_head

FB = "filterbank[sigmas=[1,2],stride=4]"  # 2·17 channels, halo 16


def _image(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w)).astype(np.float32)


@pytest.mark.parametrize("text", [
    "vit-small@random(seed=3)+filterbank",
    "vit-small@random(seed=3)[stride=4]+filterbank[pool=mean+std,stride=4]",  # '+' inside brackets is a value
    "filterbank[stride=1]+vit-small@placeholder[shifts=2,stride=1,upsample=guided]+cnx-tiny@random",
    'vit-small@pretrained:/data/dinov3 weights+filterbank[sigmas=[1,2]]',
])
def test_fused_spec_strings_round_trip(text):
    spec = BackboneSpec.parse(text)
    assert len(spec.parts) == text.count("+") - text.count("mean+std") + 1
    assert str(spec) == text and BackboneSpec.parse(str(spec)) == spec
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    assert spec.name == "+".join(p.name for p in spec.parts) and spec.weights is None and not spec.options
    # everything that asks the registry about a spec's name gets the fused backbone's answers
    assert lookup(spec.name).family == "fused" and option_defaults(spec.name) == {} and takes_weights(spec.name)


def test_bad_fused_specs_are_one_line_errors():
    with pytest.raises(ValueError, match="empty part"):
        BackboneSpec.parse("vit-small++filterbank")
    with pytest.raises(ValueError, match="may not contain '\\+'"):
        BackboneSpec("vit-small+filterbank")  # a plain spec cannot be named like a fused one
    with pytest.raises(UnknownBackboneError, match=r"filterbnak.*did you mean 'filterbank'"):
        get_backbone("vit-small@placeholder+filterbnak")
    with pytest.raises(ValueError, match="no options of its own"):
        BackboneSpec.parse("vit-small+filterbank").with_options(scale=2)
    with pytest.raises(ValueError, match=r"no part of .* takes tile"):
        get_backbone("filterbank+" + FB, tile=512)
    with pytest.raises(ValueError, match=r"no part of .* takes weights"):
        get_backbone("filterbank+" + FB, weights="random(seed=1)")


def test_get_backbone_brings_the_parts_to_the_finest_stride():
    bb = get_backbone("vit-small@placeholder+filterbank[stride=4]", batch_size=2)  # batch_size: the ViT's only
    assert isinstance(bb, FusedBackbone) and bb.stride == 4.0 and bb.feature_dim == 384 + 66
    assert str(bb.spec) == "vit-small@placeholder[stride=4]+filterbank[stride=4]"  # what ran, canonical
    assert bb.weights == "placeholder+none (classical filters)" and bb.name == "vit-small+filterbank"
    fm = bb.extract(_image(50, 70))
    assert fm.grid_shape == (13, 18) and fm.stride == 4.0 and fm.feature_dim == 450
    assert fm.spec == bb.spec and fm.weights == bb.weights and fm.backbone == "vit-small+filterbank"
    assert [p["channels"] for p in fm.meta["parts"]] == [[0, 384], [384, 450]]
    assert bb.receptive_field == max(p.receptive_field for p in bb.parts) and bb.halo_exact


def test_fused_tiny_vit_with_random_weights(tiny_vit_dir):
    bb = get_backbone(f"{tiny_vit_dir}@random(seed=3)+filterbank[stride=4]")
    assert bb.stride == 4.0 and bb.feature_dim == 32 + 66 and not bb.halo_exact
    assert bb.weights == "random(seed=3)+none (classical filters)"
    assert str(bb.spec) == f"{tiny_vit_dir}@random(seed=3)[stride=4]+filterbank[stride=4]"
    assert BackboneSpec.parse(str(bb.spec)).build().spec == bb.spec  # the spec rebuilds the same backbone
    assert bb.extract(_image()).feature_dim == 98


def test_each_source_is_standardised_with_fixed_statistics():
    bb = get_backbone("vit-small@placeholder+" + FB)
    vit, fb = bb.parts
    img = _image(48, 48, seed=1)
    fm = bb.extract(img)
    (m0, s0), (m1, s1) = bb.channel_statistics()
    np.testing.assert_allclose(fm.features[..., :384], (vit.extract(img).features - m0) / s0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fm.features[..., 384:], (fb.extract(img).features - m1) / s1, rtol=1e-5, atol=1e-5)
    # the statistics are those of the fixed reference image, not of the image at hand: there, z-scores are exact
    ref = bb.extract(reference_image()).features.reshape(-1, bb.feature_dim)
    np.testing.assert_allclose(ref.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(ref.std(0), 1, atol=1e-3)
    # no channel (so no source) dominates by its units: raw spreads span 3–4 decades, fused ones about one
    raw = np.concatenate([vit.extract(img).features, fb.extract(img).features], -1).reshape(-1, bb.feature_dim)
    spread_raw, spread_fused = raw.std(0), fm.features.reshape(-1, bb.feature_dim).std(0)
    assert spread_raw.max() / spread_raw.min() > 1000 and spread_fused.max() / spread_fused.min() < 50


def test_blocks_with_the_fused_halo_equal_the_whole_image():
    bb = get_backbone("vit-small@placeholder+" + FB)
    assert bb.halo_exact and bb.halo == max(p.halo for p in bb.parts) == 32
    img = _image(160, 144, seed=2)
    whole = bb.extract(img).features
    y0, y1, x0, x1, h = 64, 96, 48, 96, bb.halo
    part = bb.extract(img[y0 - h : y1 + h, x0 - h : x1 + h]).features
    s = 4
    got = part[h // s : h // s + (y1 - y0) // s, h // s : h // s + (x1 - x0) // s]
    np.testing.assert_array_equal(got, whole[y0 // s : y1 // s, x0 // s : x1 // s])


def test_a_head_refuses_plain_maps_and_other_parts_naming_the_field():
    rng = np.random.default_rng(3)
    imgs = [rng.random((32, 32)).astype(np.float32) for _ in range(2)]
    masks = [(im > 0.5).astype(np.uint8) for im in imgs]
    fused = get_backbone("vit-small@placeholder+" + FB)
    head = make_head("logistic", max_iter=200).fit(fused.extract_batch(imgs), masks)
    assert str(head.backbone_spec_) == str(fused.spec)
    assert head.predict(fused.extract(imgs[0])).shape == (32, 32)
    with pytest.raises(ValueError, match="backbone 'filterbank' but the head was trained on 'vit-small\\+filterbank'"):
        head.predict(BackboneSpec.parse(FB).build().extract(imgs[0]))
    other = get_backbone("vit-small@placeholder+filterbank[sigmas=[1,3],stride=4]")
    with pytest.raises(ValueError, match=r"filterbank\.sigmas=\[1,3\] but the head was trained with filterbank\."):
        head.predict(other.extract(imgs[0]))


def test_weights_given_to_a_fused_spec_fill_the_parts_that_take_weights():
    spec = BackboneSpec.parse("vit-small+cnx-tiny@random(seed=1)+filterbank")
    filled = spec.with_weights("placeholder")
    assert str(filled) == "vit-small@placeholder+cnx-tiny@random(seed=1)+filterbank"  # a part's own weights win
    fused = BackboneSpec.fuse("vit-small@placeholder", "filterbank")
    assert fused == BackboneSpec.parse("vit-small@placeholder+filterbank")
    bb = get_backbone("vit-small+" + FB, weights="placeholder")
    assert bb.weights == "placeholder+none (classical filters)"


def test_features_cli_takes_a_fused_backbone_with_weights(tmp_path, capsys):
    import tifffile

    from neuros.plugins.cv.cli import main

    tifffile.imwrite(tmp_path / "a.tif", (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8))
    assert main(["features", str(tmp_path / "a.tif"), "--backbone", "vit-small+filterbank[stride=4]",
                 "--weights", "random(seed=2)", "--out", str(tmp_path / "out")]) == 0
    assert "random(seed=2)+none (classical filters)" in capsys.readouterr().out
    assert main(["features", str(tmp_path / "a.tif"), "--backbone", "vit-small+filterbank[stride=4]", "--l2",
                 "--out", str(tmp_path / "out2")]) != 0
    assert "put them on a part, e.g. vit-small[l2=...]" in capsys.readouterr().err
