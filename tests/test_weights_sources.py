"""Weights from any hub id, by release name, and with Meta's stored RoPE periods (issue 11, "Weights").

Real files on disk only: a fake Hugging Face cache under tmp_path, a ``NEUROS_CV_WEIGHTS`` folder, timm-mirror
folders and Meta-style ``.pth`` files written from random models. Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuros.plugins.cv.backbones import DINOv3Backbone
from neuros.plugins.cv.backbones import weights as W
from neuros.plugins.cv.backbones.base import lookup
from neuros.plugins.cv.backbones.dinov3 import weights_available
from tiny_models import (
    features_of,
    hf_cache_snapshot,
    make_tiny_vit,
    meta_rope_periods,
    meta_state_dict,
    save_timm_folder,
    small_image,
)

VITS_QKVB = "timm/vit_small_patch16_dinov3_qkvb.lvd1689m"
VITS_RELEASE = "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"


@pytest.fixture(scope="module")
def vits():
    """A random ViT-S/16 with the release architecture, and its features: the reference every layout must give."""
    bb = DINOv3Backbone("vit-small", weights="random(seed=5)", device="cpu")
    return bb.model, features_of(bb)


def _qkvb_folder(path, model):
    sd = W.to_timm_state_dict(model.state_dict(), "vit", qkv_bias=True)
    return save_timm_folder(path, sd, "vit_small_patch16_dinov3_qkvb", "lvd1689m", num_features=384)


# ------------------------------------------------------------------- 1. any hub id reads its own architecture
def test_unknown_hub_id_in_hf_cache_reads_its_own_architecture(offline_env, vits):
    model, ref = vits
    snap = _qkvb_folder(hf_cache_snapshot(offline_env, VITS_QKVB), model)
    for weights in ("pretrained", "auto"):
        bb = DINOv3Backbone(VITS_QKVB, weights=weights)
        assert bb.weights == f"pretrained:{snap}" and bb.feature_dim == 384
        np.testing.assert_allclose(features_of(bb), ref, atol=1e-5)
    placeholder = DINOv3Backbone(VITS_QKVB, weights="placeholder")  # the id is known without loading it
    assert placeholder.feature_dim == 384 and placeholder.variant.config["num_register_tokens"] == 4
    entry = lookup(VITS_QKVB)
    assert entry.info["feature_dim"] == 384 and entry.info["params_m"] == 21.6
    np.testing.assert_allclose(features_of(DINOv3Backbone(str(snap), weights="pretrained")), ref, atol=1e-5)


@pytest.mark.parametrize("with_model_args", [True, False])
def test_unknown_timm_architecture_from_model_args_or_shapes(offline_env, tmp_path, with_model_args):
    """A timm folder whose architecture no table names: timm's model_args, else the tensor shapes (head dim 64)."""
    from transformers import DINOv3ViTModel

    size = dict(hidden_size=32, num_attention_heads=2) if with_model_args else \
        dict(hidden_size=128, num_attention_heads=2, intermediate_size=96)
    src = make_tiny_vit(tmp_path / "src", seed=3, patch_size=8, num_register_tokens=2, **size)
    sd = W.to_timm_state_dict(DINOv3ViTModel.from_pretrained(src).state_dict(), "vit")
    extra = {"model_args": {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_reg_tokens": 2,
                            "patch_size": 8}} if with_model_args else {}
    repo = "someone/vit_tiny_patch8_dinov3.test"
    snap = save_timm_folder(hf_cache_snapshot(offline_env, repo), sd, "vit_tiny_patch8_dinov3", "test", **extra)
    bb = DINOv3Backbone(repo, weights="pretrained")
    fm = bb.extract(small_image())
    assert bb.weights == f"pretrained:{snap}" and fm.features.shape == (4, 6, size["hidden_size"])
    assert fm.stride == 8 and bb.model.config.num_attention_heads == 2
    np.testing.assert_allclose(fm.features, features_of(DINOv3Backbone(str(src), weights="pretrained")), atol=1e-5)


def test_meta_file_as_model_id_or_source_reads_its_shapes(offline_env, tmp_path):
    """A Meta .pth of no released size: embed dim, depth, registers, patch from shapes, heads from its periods."""
    from transformers import DINOv3ViTModel

    src = make_tiny_vit(tmp_path / "src", seed=4, patch_size=8, num_register_tokens=3, use_gated_mlp=True,
                        hidden_act="silu")
    pth = tmp_path / "dinov3_tiny_pretrain.pth"
    torch.save(meta_state_dict(DINOv3ViTModel.from_pretrained(src)), pth)
    ref = features_of(DINOv3Backbone(str(src), weights="pretrained"))
    bb = DINOv3Backbone(str(pth), weights="auto")
    cfg = bb.model.config
    assert bb.weights == f"pretrained:{pth}" and (cfg.num_attention_heads, cfg.num_register_tokens) == (2, 3)
    assert cfg.use_gated_mlp and cfg.patch_size == 8 and lookup(str(pth)).info["patch_size"] == 8
    np.testing.assert_allclose(features_of(bb), ref, atol=1e-5)
    # an id no table names and no cache holds takes its architecture from the explicit source
    other = DINOv3Backbone("someone/dinov3-custom", weights=f"pretrained:{pth}")
    np.testing.assert_allclose(features_of(other), ref, atol=1e-5)


def test_unknown_timm_convnext_from_shapes(offline_env, tmp_path, tiny_convnext_dir):
    """A timm ConvNeXt of no released size: depths and widths from the tensors."""
    from transformers import DINOv3ConvNextModel

    sd = W.to_timm_state_dict(DINOv3ConvNextModel.from_pretrained(tiny_convnext_dir).state_dict(), "convnext")
    repo = "someone/convnext_femto.dinov3_test"
    snap = save_timm_folder(hf_cache_snapshot(offline_env, repo), sd, "convnext_femto", "dinov3_test")
    bb = DINOv3Backbone(repo, weights="pretrained")
    assert bb.weights == f"pretrained:{snap}" and bb.model.config.hidden_sizes == [8, 16, 24, 32]
    assert bb.feature_dim == 24 and lookup(repo).info["feature_dim"] == 24
    ref = DINOv3Backbone(str(tiny_convnext_dir), weights="pretrained")
    np.testing.assert_allclose(features_of(bb), features_of(ref), atol=1e-5)


# ------------------------------------------------------------ 2. NEUROS_CV_WEIGHTS by release names
def test_env_folder_finds_meta_release_file(offline_env, monkeypatch, tmp_path, vits):
    model, ref = vits
    root = tmp_path / "weights"
    root.mkdir()
    pth = root / VITS_RELEASE
    torch.save(meta_state_dict(model), pth)
    for other in ("dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth", "dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth",
                  "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth"):
        (root / other).write_bytes(b"")  # found by name only; never loaded here
    monkeypatch.setenv(W.WEIGHTS_ENV, str(root))
    for weights in ("pretrained", "auto"):
        bb = DINOv3Backbone("vit-small", weights=weights)
        fm = bb.extract(small_image())
        assert bb.weights == fm.weights == bb.describe()["weights"] == f"pretrained:{pth}"
        assert "note" not in bb.describe()
        np.testing.assert_allclose(fm.features, ref, atol=1e-5)
    assert weights_available("vit-large-sat") == str(root / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth")
    assert weights_available("cnx-tiny") == str(root / "dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth")
    assert weights_available("vit-small-plus").endswith("-4057cbaa.pth")
    assert weights_available("vit-large") is None and weights_available("vit-base") is None
    # as the model id, a file named as a release is that release
    assert lookup(str(pth)).info["params_m"] == 21.6
    np.testing.assert_allclose(features_of(DINOv3Backbone(str(pth), weights="pretrained")), ref, atol=1e-5)
    # the release file also counts inside a sub-folder named for the model
    sub = root / "vit-small"
    sub.mkdir()
    pth.rename(sub / VITS_RELEASE)
    assert DINOv3Backbone("vit-small", weights="pretrained").weights == f"pretrained:{sub / VITS_RELEASE}"


def test_env_folder_and_hf_cache_find_qkvb_mirror(offline_env, monkeypatch, tmp_path, vits):
    model, ref = vits
    root = tmp_path / "weights"
    folder = _qkvb_folder(root / "vit_small_patch16_dinov3_qkvb.lvd1689m", model)
    monkeypatch.setenv(W.WEIGHTS_ENV, str(root))
    for weights in ("pretrained", "auto"):
        bb = DINOv3Backbone("vit-small", weights=weights)
        assert bb.weights == f"pretrained:{folder}" and "note" not in bb.describe()
        np.testing.assert_allclose(features_of(bb), ref, atol=1e-5)
    # the same mirror in the HF cache, with no NEUROS_CV_WEIGHTS
    monkeypatch.delenv(W.WEIGHTS_ENV)
    snap = hf_cache_snapshot(offline_env, VITS_QKVB)
    snap.rmdir()
    folder.rename(snap)
    for weights in ("pretrained", "auto"):
        assert DINOv3Backbone("vit-small", weights=weights).weights == f"pretrained:{snap}"


def test_missing_weights_message_names_the_release_file(offline_env):
    with pytest.raises(W.WeightsNotFoundError) as info:
        DINOv3Backbone("vit-small", weights="pretrained")
    assert "dinov3_vits16_pretrain_lvd1689m-<hash>.pth" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------- 3. stored RoPE periods
@pytest.mark.parametrize("factor", [None, (1.0, 1.3, 0.8, 1.1)], ids=["bf16-rounded", "perturbed"])
def test_stored_rope_periods_are_used(tmp_path, factor):
    """Meta's releases store their periods rounded to bfloat16: the features follow the stored values."""
    from transformers import DINOv3ViTModel

    # attention weights large enough for positions to matter (at the default 0.02 init, RoPE barely does)
    src = make_tiny_vit(tmp_path / "src", seed=2, initializer_range=0.3)
    model = DINOv3ViTModel.from_pretrained(src)
    periods = meta_rope_periods(16) * (torch.tensor(factor) if factor else 1.0)
    stored = periods.to(torch.bfloat16)
    pth = tmp_path / "tiny_meta.pth"
    torch.save(meta_state_dict(model, periods=stored), pth)
    loaded = W.load_model(W.inspect_checkpoint(pth), lambda: DINOv3ViTModel(model.config))
    torch.testing.assert_close(loaded.rope_embeddings.inv_freq, (1 / stored.double()).float())
    assert loaded.rope_embeddings.inv_freq.dtype == torch.float32

    img = np.random.default_rng(1).random((64, 96)).astype(np.float32)
    bb = DINOv3Backbone(str(src), weights=f"pretrained:{pth}")
    ref = DINOv3Backbone(str(src), weights="pretrained")
    recomputed = ref.extract(img).features
    with torch.no_grad():
        ref.model.rope_embeddings.inv_freq.copy_(1 / stored.double())
    expected = ref.extract(img).features
    assert np.abs(expected - recomputed).max() > (1e-1 if factor else 1e-4)  # the stored values matter ...
    np.testing.assert_allclose(bb.extract(img).features, expected, atol=1e-6)  # ... and are the ones used


def test_stored_rope_periods_of_the_wrong_shape_are_refused(tmp_path):
    from transformers import DINOv3ViTModel

    src = make_tiny_vit(tmp_path / "src", seed=2)
    model = DINOv3ViTModel.from_pretrained(src)
    pth = tmp_path / "tiny_meta.pth"
    torch.save(meta_state_dict(model, periods=torch.ones(5)), pth)
    with pytest.raises(W.NotACheckpointError, match=r"RoPE periods have shape \(5,\)") as info:
        DINOv3Backbone(str(src), weights=f"pretrained:{pth}")
    assert str(pth) in str(info.value) and "\n" not in str(info.value)
