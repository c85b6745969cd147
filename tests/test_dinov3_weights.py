"""Finding and loading weights offline: explicit folders, NEUROS_CV_WEIGHTS, a HF-cache layout, timm/Meta
state-dict conversion (round trip through our own key tables), registry lookup of folders and hub ids, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from neuros.plugins.cv.backbones import DINOv3Backbone, UnknownBackboneError
from neuros.plugins.cv.backbones import weights as W
from neuros.plugins.cv.backbones.base import lookup
from tiny_models import features_of

HUB = "facebook/dinov3-vits16-pretrain-lvd1689m"


def test_env_var_folder_of_model_subfolders(offline_env, monkeypatch, tmp_path, tiny_vit_dir):
    root = tmp_path / "weights"
    shutil.copytree(tiny_vit_dir, root / "vit-small")
    monkeypatch.setenv(W.WEIGHTS_ENV, str(root))
    bb = DINOv3Backbone("vit-small", weights="auto")
    assert bb.weights == f"pretrained:{root / 'vit-small'}" and "note" not in bb.describe()
    ref = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained")
    np.testing.assert_allclose(features_of(bb), features_of(ref), atol=1e-6)
    # the hub name works as a sub-folder name too
    (root / "vit-small").rename(root / "dinov3-vits16-pretrain-lvd1689m")
    assert DINOv3Backbone("vit-small", weights="pretrained").weights.endswith("dinov3-vits16-pretrain-lvd1689m")


def test_hf_cache_layout(offline_env, tiny_vit_dir):
    snap = offline_env / "models--facebook--dinov3-vits16-pretrain-lvd1689m" / "snapshots" / "abc123"
    shutil.copytree(tiny_vit_dir, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    bb = DINOv3Backbone("vit-small", weights="pretrained")
    assert bb.weights == f"pretrained:{snap}"
    assert DINOv3Backbone(HUB, weights="auto").weights == f"pretrained:{snap}"  # hub id as the model id
    assert DINOv3Backbone("vit-small", weights=f"pretrained:{HUB}").weights == f"pretrained:{snap}"


def test_missing_weights_say_what_to_do(offline_env):
    with pytest.raises(W.WeightsNotFoundError) as info:
        DINOv3Backbone("vit-small", weights="pretrained")
    msg = str(info.value)
    assert "\n" not in msg
    for text in ("gated", "accept the DINOv3 licence", "hf auth login", HUB, "pretrained:/path/to/folder",
                 W.WEIGHTS_ENV, "timm/vit_small_patch16_dinov3.lvd1689m"):
        assert text in msg
    with pytest.raises(W.WeightsNotFoundError, match="gated"):
        DINOv3Backbone("vit-small", weights="pretrained:someone/dinov3-elsewhere")


def test_folders_that_are_not_checkpoints(tmp_path, tiny_convnext_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "model.safetensors").write_bytes(b"")
    for path, text in ((empty, "no config.json"), (other, "describes 'bert'"), (tmp_path / "nope", "does not exist")):
        with pytest.raises(ValueError, match=text) as info:
            DINOv3Backbone("vit-small", weights=f"pretrained:{path}")
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not a DINOv3 checkpoint"):
        lookup(str(other))
    with pytest.raises(ValueError, match=r"no config\.json"):
        lookup(str(empty))
    with pytest.raises(ValueError, match="holds a DINOv3 convnext"):
        DINOv3Backbone("vit-small", weights=f"pretrained:{tiny_convnext_dir}")


def test_registry_accepts_folders_and_hub_ids(tiny_vit_dir):
    e = lookup(str(tiny_vit_dir))
    assert e.family == "dinov3" and e.info["feature_dim"] == 32
    assert lookup(HUB).info["feature_dim"] == 384
    with pytest.raises(UnknownBackboneError):
        lookup("someone/not-a-vision-model")


# ------------------------------------------------------------------------------- timm / Meta conversion
def _timm_folder(path, sd, arch_name, tag):
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    cfg = {"architecture": arch_name, "num_classes": 0, "pretrained_cfg": {"tag": tag, "num_classes": 0}}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("gated", [False, True])
def test_timm_round_trip_vit(tmp_path, gated):
    from transformers import DINOv3ViTModel

    from tiny_models import make_tiny_vit

    src = make_tiny_vit(tmp_path / "src", use_gated_mlp=gated, hidden_act="silu" if gated else "gelu")
    model = DINOv3ViTModel.from_pretrained(src).eval()
    timm_sd = W.to_timm_state_dict(model.state_dict(), "vit")
    # timm's eva.py names for DINOv3 ViTs
    for k in ("cls_token", "reg_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias",
              "blocks.0.attn.v_bias", "blocks.0.attn.proj.weight", "blocks.0.gamma_1", "blocks.1.gamma_2",
              "blocks.0.norm1.weight", "norm.bias", "blocks.0.mlp.fc2.weight"):
        assert k in timm_sd, k
    assert ("blocks.0.mlp.fc1_g.weight" in timm_sd) == gated and ("blocks.0.mlp.fc1.weight" in timm_sd) != gated
    assert timm_sd["blocks.0.attn.qkv.weight"].shape == (96, 32)
    folder = _timm_folder(tmp_path / "timm", timm_sd, "vit_small_patch16_dinov3", "lvd1689m")
    info = W.inspect_checkpoint(folder)
    assert info.kind == "timm" and info.arch == "vit"
    fresh = lambda: DINOv3ViTModel(model.config)  # noqa: E731 - a new, differently initialised model
    loaded = W.load_model(info, fresh)
    for k, v in model.state_dict().items():
        if not k.endswith("mask_token"):
            torch.testing.assert_close(loaded.state_dict()[k], v, msg=k)
    # timm's default mirrors have no q/v biases (the released ones are zero): they load as zeros
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.bias", "v_proj.bias")):
                p.zero_()
    no_bias = W.to_timm_state_dict(model.state_dict(), "vit", qkv_bias=False)
    assert not any(k.endswith(("q_bias", "v_bias")) for k in no_bias)
    nb_folder = _timm_folder(tmp_path / "timm-nobias", no_bias, "vit_small_patch16_dinov3", "lvd1689m")
    loaded = W.load_model(W.inspect_checkpoint(nb_folder), fresh)
    for k, v in model.state_dict().items():
        if not k.endswith("mask_token"):
            torch.testing.assert_close(loaded.state_dict()[k], v, msg=k)
    if gated:
        return
    # the real vit_small architecture refuses these tiny tensors with a one-line error
    with pytest.raises(ValueError, match="does not match the DINOv3 vit architecture") as e:
        DINOv3Backbone(str(folder), weights="pretrained")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("gated", [True, False])
def test_meta_original_names_convert(tmp_path, gated):
    """Original Meta checkpoints (storage_tokens, fused qkv with a bias, ls1.gamma, mlp.fc1/fc2 or SwiGLU w1/w2/w3)."""
    from transformers import DINOv3ViTModel

    from tiny_models import make_tiny_vit, meta_state_dict

    act = dict(use_gated_mlp=True, hidden_act="silu") if gated else {}
    model = DINOv3ViTModel.from_pretrained(make_tiny_vit(tmp_path / "g", **act))
    path = tmp_path / "dinov3_tiny_pretrain.pth"
    torch.save(meta_state_dict(model), path)
    loaded = W.load_model(W.inspect_checkpoint(path), lambda: DINOv3ViTModel(model.config))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, msg=k)


def test_timm_round_trip_convnext(tmp_path, tiny_convnext_dir):
    from transformers import DINOv3ConvNextModel

    model = DINOv3ConvNextModel.from_pretrained(tiny_convnext_dir).eval()
    timm_sd = W.to_timm_state_dict(model.state_dict(), "convnext")
    for k in ("stem.0.weight", "stem.1.bias", "stages.1.downsample.0.weight", "stages.1.downsample.1.weight",
              "stages.2.blocks.0.conv_dw.weight", "stages.2.blocks.0.mlp.fc1.weight", "stages.0.blocks.0.gamma",
              "head.norm.weight"):
        assert k in timm_sd, k
    folder = _timm_folder(tmp_path / "timm", timm_sd, "convnext_tiny", "dinov3_lvd1689m")
    assert W.inspect_checkpoint(folder).arch == "convnext"
    loaded = W.load_model(W.inspect_checkpoint(folder), lambda: DINOv3ConvNextModel(model.config))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, msg=k)
