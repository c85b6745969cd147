"""DINOv3Backbone on real (tiny) transformers models: token layout, grids, batching, dtypes, channels, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuros.plugins.cv.backbones import DINOv3Backbone, get_backbone
from neuros.plugins.cv.backbones.dinov3 import VARIANTS, count_params, parse_weights
from neuros.plugins.cv.backbones.placeholder import placeholder_features
from neuros.plugins.cv.preprocess import IMAGENET_MEAN, IMAGENET_STD, SAT493M_MEAN, prepare


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def vit(tiny_vit_dir):
    return DINOv3Backbone(str(tiny_vit_dir), weights="pretrained")


@pytest.fixture(scope="module")
def cnx(tiny_convnext_dir):
    return DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained")


# ------------------------------------------------------------------------------------------ variants
@pytest.mark.parametrize("model_id", [m for m in VARIANTS if "7b" not in m])
def test_variant_configs_have_the_released_parameter_counts(model_id):
    v = VARIANTS[model_id]
    assert round(count_params(v) / 1e6, 1) == pytest.approx(v.params_m, abs=0.05)
    cfg = v.hf_config()
    if v.arch == "vit":
        assert cfg.num_register_tokens == 4 and cfg.hidden_size == v.feature_dim and cfg.patch_size == 16
    else:
        assert cfg.hidden_sizes[2] == v.feature_dim and cfg.hidden_sizes[-1] == v.embed_dim


def test_anchor_sizes_from_the_design_notes():
    assert round(count_params(VARIANTS["vit-small"]) / 1e6, 1) == 21.6
    assert round(count_params(VARIANTS["cnx-tiny"]) / 1e6, 1) == 27.8
    assert VARIANTS["vit-small-plus"].config["use_gated_mlp"] and VARIANTS["vit-huge-plus"].config["use_gated_mlp"]
    assert VARIANTS["vit-large-sat"].mean_std[0] == SAT493M_MEAN


def test_parse_weights():
    assert parse_weights("random(seed=7)") == ("random", 7, None)
    assert parse_weights("pretrained:/w/x") == ("pretrained", None, "/w/x")
    assert parse_weights("auto") == ("auto", None, None)
    for bad in ("pretrained:", "randomly", "fp16"):
        with pytest.raises(ValueError):
            parse_weights(bad)


# ------------------------------------------------------------------------------------- placeholder
def test_placeholder_is_unchanged():
    img = _rng().random((64, 48)).astype(np.float32)
    bb = DINOv3Backbone("vit-small", weights="placeholder")
    expected = placeholder_features(prepare(img, 16), "vit-small", 384, 16)
    np.testing.assert_array_equal(bb.extract(img).features, expected)
    assert bb.embed(np.stack([img, img])).shape == (2, 12, 384) and bb.grid_shape == (4, 3)
    assert bb.weights == "placeholder" and "note" not in bb.describe()


def test_auto_without_weights_is_the_placeholder_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("NEUROS_CV_WEIGHTS", raising=False)
    bb = get_backbone("cnx-tiny")
    assert bb.weights == "placeholder"
    assert "placeholder" in bb.describe()["note"] and "no pretrained weights" in bb.describe()["note"]


# ---------------------------------------------------------------------------------- token layout
def test_vit_drops_cls_and_registers_and_keeps_row_major_order(vit, tiny_vit_dir):
    from transformers import DINOv3ViTModel

    img = _rng(1).random((48, 64, 3)).astype(np.float32)
    fm = vit.extract(img)
    assert fm.grid_shape == (3, 4) and fm.feature_dim == 32 and fm.stride == 16.0
    model = DINOv3ViTModel.from_pretrained(tiny_vit_dir).eval()
    assert model.config.num_register_tokens == 4
    x = torch.from_numpy(((img - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        tokens = model(pixel_values=x).last_hidden_state[0].numpy()
    assert tokens.shape == (1 + 4 + 12, 32)
    np.testing.assert_allclose(fm.flat(), tokens[5:], atol=1e-5)
    assert fm.weights == f"pretrained:{tiny_vit_dir}"


def test_registers_count_comes_from_the_config(tmp_path):
    from tiny_models import make_tiny_vit

    bb = DINOv3Backbone(str(make_tiny_vit(tmp_path / "noreg", num_register_tokens=0)), weights="pretrained")
    assert bb.extract(np.zeros((32, 32))).grid_shape == (2, 2)


@pytest.mark.parametrize(("shape", "grid"), [((17, 33), (2, 3)), ((16, 16), (1, 1)), ((5, 7), (1, 1)),
                                            ((31, 1), (2, 1)), ((47, 49, 3), (3, 4))])
def test_odd_sizes_are_padded_not_cropped(vit, shape, grid):
    fm = vit.extract(_rng().random(shape))
    assert fm.grid_shape == grid and fm.image_shape == shape[:2]
    assert fm.to_pixels().shape[:2] == shape[:2]


def test_scale_factor_changes_the_grid_and_stride(vit):
    img = _rng().random((40, 24))
    up = vit.__class__(vit.model_id, weights=vit.weights, scale=2.0).extract(img)
    down = vit.__class__(vit.model_id, weights=vit.weights, scale=0.5).extract(img)
    assert up.grid_shape == (5, 3) and up.stride == 8.0 and up.image_shape == (40, 24)
    assert down.grid_shape == (2, 1) and down.stride == 32.0


def test_batch_invariance_and_mixed_sizes(vit):
    r = _rng(2)
    imgs = [r.random((32, 48)), r.random((32, 48)), r.random((40, 16)), r.random((32, 48))]
    batched = vit.extract_batch(imgs)
    for im, fm in zip(imgs, batched, strict=True):
        np.testing.assert_allclose(fm.features, vit.extract(im).features, atol=1e-5)
    small = vit.__class__(vit.model_id, weights=vit.weights, batch_size=1).extract_batch(imgs)
    np.testing.assert_allclose(small[3].features, batched[3].features, atol=1e-5)
    assert vit.embed(np.stack(imgs[:2])).shape == (2, 6, 32)


# ---------------------------------------------------------------------------------- dtypes/channels
def test_uint8_uint16_float_and_channel_rules(vit):
    r = _rng(3)
    u8 = r.integers(0, 256, (32, 32), dtype=np.uint8)
    f = vit.extract(u8.astype(np.float32) / 255).features
    np.testing.assert_allclose(vit.extract(u8).features, f, atol=1e-5)
    np.testing.assert_allclose(vit.extract(np.repeat(u8[:, :, None], 3, 2)).features, f, atol=1e-5)
    rgb = r.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, r.integers(0, 256, (32, 32, 1), dtype=np.uint8)], axis=2)
    np.testing.assert_allclose(vit.extract(rgba).features, vit.extract(rgb).features, atol=1e-5)
    assert vit.extract(r.integers(0, 256, (32, 32, 2), dtype=np.uint8)).grid_shape == (2, 2)
    assert vit.extract(r.random((32, 32, 7))).grid_shape == (2, 2)
    # 16-bit EM: a robust percentile stretch, so an intensity offset and gain do not change the features
    u16 = r.integers(1000, 3000, (32, 32), dtype=np.uint16)
    np.testing.assert_allclose(vit.extract(u16).features, vit.extract((u16 * 3 + 500).astype(np.uint16)).features,
                               atol=1e-4)
    assert vit.extract(r.random((32, 32)) > 0.5).grid_shape == (2, 2)  # bool


def test_bfloat16_is_close_to_float32_and_float16_is_refused(tiny_vit_dir):
    img = _rng(4).random((32, 48))
    f32 = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained").extract(img).features
    bf = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", dtype="bfloat16").extract(img)
    assert bf.features.dtype == np.float32 and bf.meta["dtype"] == "bfloat16"
    assert _cos(bf.features, f32).min() > 0.98
    with pytest.raises(ValueError, match=r"float16 is refused.*bfloat16"):
        DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", dtype="float16")
    with pytest.raises(ValueError, match="device must be"):
        DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", device="tpu")


# ------------------------------------------------------------------------------------------- options
def test_intermediate_layers_norm_and_l2(vit, tiny_vit_dir):
    img = _rng(5).random((32, 48))
    last = vit.extract(img).features
    mk = lambda **kw: DINOv3Backbone(str(tiny_vit_dir), weights="pretrained", **kw)  # noqa: E731
    np.testing.assert_allclose(mk(layers=[-1]).extract(img).features, last, atol=1e-5)
    both = mk(layers=[0, -1])
    f = both.extract(img).features
    assert both.feature_dim == 64 and f.shape == (2, 3, 64)
    np.testing.assert_allclose(f[..., 32:], last, atol=1e-5)
    mean = mk(layers=[0, 1], layer_reduce="mean").extract(img).features
    np.testing.assert_allclose(mean, (f[..., :32] + f[..., 32:]) / 2, atol=1e-5)
    raw = mk(norm=False).extract(img).features
    assert not np.allclose(raw, last, atol=1e-3)
    unit = mk(l2=True).extract(img).features
    np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        mk(layers=[5]).extract(img)
    with pytest.raises(ValueError, match="layers applies to ViT"):
        DINOv3Backbone("cnx-tiny", weights="placeholder", layers=[1])


def test_convnext_stages_and_default_grid_matches_vit(cnx, vit, tiny_convnext_dir):
    from transformers import DINOv3ConvNextModel

    img = _rng(6).random((48, 80, 3)).astype(np.float32)
    fm = cnx.extract(img)
    assert fm.grid_shape == vit.extract(img).grid_shape == (3, 5) and fm.feature_dim == 24
    model = DINOv3ConvNextModel.from_pretrained(tiny_convnext_dir).eval()
    x = torch.from_numpy(((img - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        hs = model(pixel_values=x, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(fm.features, hs[3][0].permute(1, 2, 0).numpy(), atol=1e-5)
    s1 = DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained", stage=1).extract(img)
    assert s1.grid_shape == (6, 10) and s1.stride == 8.0 and s1.feature_dim == 16
    s3 = DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained", stage=3).extract(img[:40, :70])
    assert s3.grid_shape == (2, 3) and s3.stride == 32.0 and s3.feature_dim == 32
    with pytest.raises(ValueError, match="stage must be"):
        DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained", stage=4)


def test_random_weights_are_seeded(tiny_vit_dir):
    img = _rng(7).random((32, 32))
    a = DINOv3Backbone(str(tiny_vit_dir), weights="random(seed=1)")
    b = DINOv3Backbone(str(tiny_vit_dir), weights="random", seed=1)
    c = DINOv3Backbone(str(tiny_vit_dir), weights="random(seed=2)")
    assert a.weights == b.weights == "random(seed=1)"
    np.testing.assert_array_equal(a.extract(img).features, b.extract(img).features)
    assert not np.allclose(a.extract(img).features, c.extract(img).features)


@pytest.mark.slow  # the random path runs fast on tiny folders above; this builds the real 21.6 M network
def test_real_size_vit_small_random_runs():
    bb = DINOv3Backbone("vit-small", weights="random(seed=0)")
    assert sum(p.numel() for p in bb.model.parameters()) == count_params(VARIANTS["vit-small"])
    fm = bb.extract(_rng().random((32, 48)))
    assert fm.grid_shape == (2, 3) and fm.feature_dim == 384 and fm.weights == "random(seed=0)"


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_one_line_errors(vit):
    cases = [
        (lambda: vit.extract(np.zeros((2, 32, 32, 3))), ValueError, "4-D"),
        (lambda: vit.extract_batch(np.zeros((1, 2, 3, 32, 32))), ValueError, "5-D"),
        (lambda: vit.extract(np.full((32, 32), np.nan)), ValueError, "NaN"),
        (lambda: vit.extract(np.zeros((0, 32))), ValueError, "empty"),
        (lambda: vit.extract(np.array([["a"]])), TypeError, "numeric"),
        (lambda: vit.extract_batch([]), ValueError, "empty"),
        (lambda: DINOv3Backbone("vit-smal"), ValueError, "did you mean 'vit-small'"),
        (lambda: DINOv3Backbone("vit-small", weights="fp16"), ValueError, "weights must be"),
        (lambda: DINOv3Backbone("vit-small", weights="placeholder", scale=0), ValueError, "scale"),
        (lambda: DINOv3Backbone("vit-small", weights="placeholder", tile=100), ValueError, "multiple of 16"),
    ]
    for call, exc, text in cases:
        with pytest.raises(exc, match=text) as info:
            call()
        assert "\n" not in str(info.value)
