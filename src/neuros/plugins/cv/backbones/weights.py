"""Finding and loading DINOv3 weights, offline first.

Where pretrained weights come from, in order:

1. an explicit source: ``weights="pretrained:/path/to/folder"`` (a ``save_pretrained`` folder, a timm-mirror
   folder, or the original ``.pth`` file) or ``weights="pretrained:org/name"`` (a hub id);
2. the folder(s) named by the environment variable ``NEUROS_CV_WEIGHTS`` (``os.pathsep``-separated). In each,
   in this order: a sub-folder named by the short id (``vit-small``), the hub name
   (``dinov3-vits16-pretrain-lvd1689m``), ``org--name``, the timm-mirror name
   (``vit_small_patch16_dinov3.lvd1689m``) or its ``_qkvb`` twin (``vit_small_patch16_dinov3_qkvb.lvd1689m``);
   then Meta's original release file by its release name (``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``,
   any hash), in the root or in one of those sub-folders;
3. the Hugging Face cache (``HF_HUB_CACHE``), for the official hub id, then its timm mirror, then the mirror's
   ``_qkvb`` twin, through ``huggingface_hub.snapshot_download(local_files_only=True)`` — never the network;
4. the network only when the caller allows it (``download=True``).

The official ``facebook/dinov3-*`` repos are gated; the timm mirrors (``timm/…dinov3…``) are not. A timm
mirror or an original Meta checkpoint is loaded by converting its state dict into the transformers model
(:func:`convert_state_dict`); :func:`to_timm_state_dict` is the inverse, used to test the round trip. A
checkpoint whose architecture no table names is described by :func:`infer_config` (its ``config.json``, else
the shapes of its tensors), and Meta's stored RoPE ``periods`` replace the recomputed ones
(:func:`rope_periods`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ADAPTED_FILE",
    "WEIGHTS_ENV",
    "CheckpointInfo",
    "NotACheckpointError",
    "WeightsNotFoundError",
    "adapted_record",
    "candidate_names",
    "convert_state_dict",
    "find_weights",
    "infer_config",
    "inspect_checkpoint",
    "load_model",
    "missing_weights_message",
    "release_stems",
    "rope_periods",
    "search_ids",
    "set_rope_periods",
    "timm_model_args",
    "to_timm_state_dict",
]

WEIGHTS_ENV = "NEUROS_CV_WEIGHTS"
#: The provenance file ``neuros-cv adapt`` writes beside the weights of an adapted folder (schema below).
ADAPTED_FILE = "adapt.json"
ADAPTED_SCHEMA = "neuros-cv/adapt/1"
#: A peft LoRA adapter kept beside the base weights (``adapt --lora separate``): merged when loaded.
_ADAPTER_CONFIG = "adapter_config.json"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json", "open_clip_pytorch_model.bin")


class WeightsNotFoundError(FileNotFoundError):
    """No pretrained weights on this machine; the message says how to get them."""


class NotACheckpointError(ValueError):
    """A path that is not a DINOv3 checkpoint (transformers, timm mirror or original)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint path holds.

    ``kind`` is ``"transformers"`` (``save_pretrained`` folder), ``"timm"`` (a timm-mirror folder) or
    ``"original"`` (a Meta ``.pth``/``.safetensors`` file); ``arch`` is ``"vit"`` or ``"convnext"`` when the
    path says so (an original file does not); ``config`` is the folder's ``config.json`` (the transformers
    config of a ``"transformers"`` folder; timm's ``architecture``/``model_args``/``pretrained_cfg`` of a
    ``"timm"`` folder); ``timm_arch`` the timm architecture name for timm folders.
    """

    path: Path
    kind: str
    arch: str | None
    config: dict[str, Any] | None = None
    timm_arch: str | None = None


# --------------------------------------------------------------------------------------------- finding
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise NotACheckpointError(f"{path} is not readable JSON ({e})") from None


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Classify a checkpoint folder or file, or raise :class:`NotACheckpointError` (one line)."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix in (".pth", ".pt", ".bin", ".safetensors"):
            return CheckpointInfo(p, "original", None)
        raise NotACheckpointError(f"{p} is not a DINOv3 checkpoint (expected a folder or a .pth/.safetensors file)")
    if not p.is_dir():
        raise NotACheckpointError(f"weights path {p} does not exist")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise NotACheckpointError(f"{p} is not a DINOv3 checkpoint: it has no config.json")
    if not any((p / f).is_file() for f in _WEIGHT_FILES):
        raise NotACheckpointError(f"{p} is not a DINOv3 checkpoint: no model.safetensors or pytorch_model.bin in it")
    cfg = _read_json(cfg_path)
    mt = cfg.get("model_type")
    if mt in ("dinov3_vit", "dinov3_convnext"):
        return CheckpointInfo(p, "transformers", "vit" if mt == "dinov3_vit" else "convnext", cfg)
    arch_name = str(cfg.get("architecture", ""))
    # timm mirrors: {"architecture": "vit_small_patch16_dinov3", ...} or {"architecture": "convnext_tiny",
    # "pretrained_cfg": {"tag": "dinov3_lvd1689m", ...}} in a repo named timm/convnext_tiny.dinov3_lvd1689m
    in_name = "dinov3" in str(p).lower()
    if arch_name and ("dinov3" in arch_name or "dinov3" in json.dumps(cfg.get("pretrained_cfg", {})) or in_name):
        return CheckpointInfo(p, "timm", "convnext" if arch_name.startswith("convnext") else "vit", cfg, arch_name)
    found = mt or arch_name or "unknown"
    raise NotACheckpointError(f"{p} is not a DINOv3 checkpoint (its config.json describes {found!r})")


def _hf_cache_dir(cache_dir: str | os.PathLike[str] | None) -> str | None:
    if cache_dir is not None:
        return str(cache_dir)
    return os.environ.get("HF_HUB_CACHE") or None  # read at call time; None = huggingface_hub's default


def _from_hf_cache(repo_id: str, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, local_files_only=True, cache_dir=_hf_cache_dir(cache_dir))
    except Exception:  # any failure (not cached, offline, bad id) means "not here"
        return None
    try:
        inspect_checkpoint(folder)
    except NotACheckpointError:
        return None
    return Path(folder)


def _env_roots() -> list[Path]:
    raw = os.environ.get(WEIGHTS_ENV, "")
    return [Path(r).expanduser() for r in raw.split(os.pathsep) if r.strip()]


# timm publishes a ``_qkvb`` twin (the zero q/v biases kept as tensors) of these DINOv3 mirrors only; the 7B
# and the ConvNeXts have none.
_QKVB_ARCHS = frozenset({
    "vit_small_patch16_dinov3", "vit_small_plus_patch16_dinov3", "vit_base_patch16_dinov3",
    "vit_large_patch16_dinov3", "vit_huge_plus_patch16_dinov3",
})
_TIMM_VIT_ID = re.compile(r"^(?P<org>[\w.-]+/)?(?P<arch>vit_\w+_dinov3)\.(?P<tag>\w+)$")


def search_ids(hub_ids: tuple[str, ...]) -> tuple[str, ...]:
    """Hub ids to look for, in order: each given id, followed by its timm ``_qkvb`` twin when there is one.

    ``timm/vit_small_patch16_dinov3.lvd1689m`` is followed by ``timm/vit_small_patch16_dinov3_qkvb.lvd1689m``.
    """
    out: list[str] = []
    for h in hub_ids:
        out.append(h)
        m = _TIMM_VIT_ID.match(h or "")
        if m and m["arch"] in _QKVB_ARCHS:
            out.append(f"{m['org'] or ''}{m['arch']}_qkvb.{m['tag']}")
    return tuple(dict.fromkeys(h for h in out if h))


def release_stems(hub_ids: tuple[str, ...]) -> list[str]:
    """Meta's release file stems of the official hub ids.

    ``facebook/dinov3-vits16-pretrain-lvd1689m`` → ``dinov3_vits16_pretrain_lvd1689m``, the stem of Meta's
    ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth`` (the hash after the dash differs per file).
    """
    names = (h.split("/")[-1] for h in hub_ids if h and h.lower().startswith("facebook/dinov3-"))
    return list(dict.fromkeys(n.replace("-", "_") for n in names))


def candidate_names(model_id: str, hub_ids: tuple[str, ...]) -> list[str]:
    """Sub-folder names searched under each ``NEUROS_CV_WEIGHTS`` root for a model."""
    names = [model_id]
    for h in search_ids(hub_ids):
        names += [h.split("/")[-1], h.replace("/", "--"), h]
    return list(dict.fromkeys(n for n in names if n))


def _release_file(folder: Path, stems: list[str]) -> Path | None:
    """Meta's release file (``<stem>-<hash>.pth``, ``<stem>.pth`` or ``.safetensors``) in ``folder``."""
    if not stems or not folder.is_dir():
        return None
    files = sorted(f for f in folder.iterdir() if f.is_file())
    for stem in stems:
        pat = re.compile(rf"^{re.escape(stem)}(-[0-9a-fA-F]+)?\.(pth|pt|safetensors)$")
        hit = next((f for f in files if pat.match(f.name)), None)
        if hit is not None:
            return hit
    return None


def _checkpoint_folder(p: Path) -> bool:
    if not p.is_dir():
        return False
    try:
        inspect_checkpoint(p)
    except NotACheckpointError:
        return False
    return True


def find_weights(
    model_id: str,
    hub_ids: tuple[str, ...],
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The first local checkpoint for a model: ``NEUROS_CV_WEIGHTS``, then the HF cache.

    Parameters
    ----------
    model_id : str
        Short id (``"vit-small"``), also a sub-folder name.
    hub_ids : tuple of str
        Hub ids to look for, in order (the official repo first, then its timm mirror); each timm mirror's
        ``_qkvb`` twin is searched right after it (:func:`search_ids`).
    cache_dir : path, optional
        Hugging Face hub cache; default ``$HF_HUB_CACHE`` or huggingface_hub's default.

    Returns
    -------
    Path or None
        A folder that :func:`inspect_checkpoint` accepts or Meta's release file, or None. In each
        ``NEUROS_CV_WEIGHTS`` root: the sub-folders named by :func:`candidate_names`, then Meta's release
        file (:func:`release_stems`) in the root, then in those sub-folders. Never touches the network.
    """
    names = candidate_names(model_id, hub_ids)
    stems = release_stems(hub_ids)
    for root in _env_roots():
        subs = [root / n for n in names]
        found = next((p for p in subs if _checkpoint_folder(p)), None)
        releases = (_release_file(folder, stems) for folder in (root, *subs))
        found = found or next((f for f in releases if f is not None), None)
        if found is not None:
            return found
    for h in search_ids(hub_ids):
        if "/" in h:
            hit = _from_hf_cache(h, cache_dir)
            if hit is not None:
                return hit
    return None


def download(repo_id: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download a repo into the HF cache (network; only when the caller allowed it)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, cache_dir=_hf_cache_dir(cache_dir)))
    except Exception as e:  # gated, offline, unknown repo: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsNotFoundError(f"could not download {repo_id}: {msg}") from None


def missing_weights_message(model_id: str, hub_id: str, timm_id: str | None) -> str:
    """One line that says exactly how to make pretrained weights available."""
    env = os.environ.get(WEIGHTS_ENV)
    searched = f"{WEIGHTS_ENV}={env}" if env else f"{WEIGHTS_ENV} (unset)"
    stems = release_stems((hub_id,))
    release = f" (a folder holding it, or Meta's original {stems[0]}-<hash>.pth)" if stems else ""
    mirror = (
        f"; or use the ungated timm mirror: `hf download {timm_id}` (or put that folder under "
        f"${WEIGHTS_ENV}/{model_id})" if timm_id else ""
    )
    return (
        f"no pretrained weights for {model_id} ({hub_id}) on this machine (searched {searched} and the "
        f"Hugging Face cache). The repo is gated: accept the DINOv3 licence at https://huggingface.co/{hub_id}, "
        f"run `hf auth login`, then `hf download {hub_id}` (or let neuros-cv fetch it: download=True); or "
        f"download the folder elsewhere and pass weights='pretrained:/path/to/folder' or set "
        f"{WEIGHTS_ENV}{release}{mirror}"
    )


def adapted_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What ``neuros-cv adapt`` recorded about an adapted checkpoint folder (its :data:`ADAPTED_FILE`), in
    short: base weights, steps, seed, data and the last loss; None for any other checkpoint."""
    p = Path(path)
    f = p / ADAPTED_FILE if p.is_dir() else None
    if f is None or not f.is_file():
        return None
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != ADAPTED_SCHEMA:
        return None
    keys = ("base_backbone", "base_weights", "train", "steps", "seed", "n_images", "final_loss")
    return {"adapted": True, "provenance": str(f), **{k: doc.get(k) for k in keys}}


# --------------------------------------------------------------------------------------- conversion
# Key renames between the transformers DINOv3 models and the timm / original Meta checkpoints, one table
# per direction so the converter and its inverse cannot drift apart. Layer prefixes ("layer." vs
# "model.layer.") are added per model afterwards. Names checked against timm's eva.py (DINOv3 ViTs:
# cls_token, reg_token, blocks.N.gamma_1/2, fused attn.qkv with q_bias/v_bias, SwiGLU fc1_g/fc1_x/fc2) and
# convnext.py (stem.0/1, stages.i.downsample.0/1, stages.i.blocks.j.conv_dw/norm/mlp.fc1/mlp.fc2/gamma,
# head.norm), and against Meta's originals (storage_tokens, ls1.gamma, attn.qkv.bias, mlp.w1/w2/w3,
# downsample_layers, dwconv/pwconv1/pwconv2, norm).
_VIT_TIMM_TO_HF = [
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^reg_token$", "embeddings.register_tokens"),
    (r"^mask_token$", "embeddings.mask_token"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings."),
    (r"^blocks\.(\d+)\.norm([12])\.", r"layer.\1.norm\2."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"layer.\1.attention.o_proj."),
    (r"^blocks\.(\d+)\.gamma_([12])$", r"layer.\1.layer_scale\2.lambda1"),
    (r"^blocks\.(\d+)\.mlp\.fc1_g\.", r"layer.\1.mlp.gate_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc1_x\.", r"layer.\1.mlp.up_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layer.\1.mlp.up_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layer.\1.mlp.down_proj."),
    (r"^norm\.", "norm."),
]
# Original Meta names → timm names (applied first, so one table serves both sources).
_VIT_META_TO_TIMM = [
    (r"^storage_tokens$", "reg_token"),
    (r"\.ls([12])\.gamma$", r".gamma_\1"),
    (r"\.mlp\.w1\.", ".mlp.fc1_g."),
    (r"\.mlp\.w2\.", ".mlp.fc1_x."),
    (r"\.mlp\.w3\.", ".mlp.fc2."),
]
_VIT_IGNORED = re.compile(r"(^rope_embed\.|^rope\.|^local_cls_norm\.|\.bias_mask$|^head\.|^fc_norm\.|\.mlp\.norm\.)")

_CNX_TIMM_TO_HF = [
    (r"^stem\.0\.", "stages.0.downsample_layers.0."),
    (r"^stem\.1\.", "stages.0.downsample_layers.1."),
    (r"^stages\.(\d+)\.downsample\.([01])\.", r"stages.\1.downsample_layers.\2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.layers.\2.depthwise_conv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", r"stages.\1.layers.\2.layer_norm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.layers.\2.pointwise_conv1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.layers.\2.pointwise_conv2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$", r"stages.\1.layers.\2.gamma"),
    (r"^head\.norm\.", "layer_norm."),
]
_CNX_META_TO_TIMM = [
    (r"^downsample_layers\.0\.([01])\.", r"stem.\1."),
    (r"^downsample_layers\.(\d+)\.([01])\.", r"stages.\1.downsample.\2."),
    (r"^stages\.(\d+)\.(\d+)\.dwconv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"^stages\.(\d+)\.(\d+)\.norm\.", r"stages.\1.blocks.\2.norm."),
    (r"^stages\.(\d+)\.(\d+)\.pwconv1\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^stages\.(\d+)\.(\d+)\.pwconv2\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^stages\.(\d+)\.(\d+)\.gamma$", r"stages.\1.blocks.\2.gamma"),
    (r"^norm\.", "head.norm."),
]
_CNX_IGNORED = re.compile(r"(^norms\.|^head\.fc\.|^head\.global_pool)")


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    for pat, rep in table:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return None


def _strip_wrappers(sd: Mapping[str, Any]) -> dict[str, Any]:
    for wrapper in ("model", "state_dict", "teacher"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping) and len(sd) <= 4:
            sd = sd[wrapper]
    return {_strip_prefix(k): v for k, v in sd.items()}


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "backbone.", "teacher.backbone."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _model_prefix(model_keys: list[str], marker: str) -> str:
    """``"model."`` when the transformers model nests its encoder (``model.layer.0…``), else ``""``."""
    return "model." if any(k.startswith(f"model.{marker}") for k in model_keys) else ""


def convert_state_dict(state_dict: Mapping[str, Any], arch: str, model_keys: list[str]) -> dict[str, Any]:
    """Convert a timm-mirror or original Meta DINOv3 state dict to the transformers model's keys.

    Parameters
    ----------
    state_dict : mapping of str to tensor
        The checkpoint's tensors.
    arch : {"vit", "convnext"}
        Which family the checkpoint is.
    model_keys : list of str
        ``model.state_dict().keys()`` of the target transformers model (fixes the layer prefix).

    Returns
    -------
    dict
        Renamed tensors; fused ``attn.qkv`` weights are split into ``q/k/v_proj`` (the key bias, which
        DINOv3 masks to zero, is dropped). Keys the target has no place for are dropped only when they are
        known extras (RoPE periods, bias masks, heads); anything else is kept so loading reports it.
    """
    import torch

    sd = _strip_wrappers(state_dict)
    out: dict[str, Any] = {}
    if arch == "vit":
        pre = _model_prefix(model_keys, "layer.")
        for k, v in sd.items():
            if _VIT_IGNORED.search(k):
                continue
            k = _rename(k, _VIT_META_TO_TIMM) or k
            m = re.match(r"^blocks\.(\d+)\.attn\.(qkv\.weight|qkv\.bias|q_bias|v_bias|k_bias)$", k)
            if m:
                i, what = m.groups()
                base = f"{pre}layer.{i}.attention."
                if what == "qkv.weight":
                    for name, part in zip("qkv", torch.chunk(v, 3, dim=0), strict=True):
                        out[f"{base}{name}_proj.weight"] = part
                elif what == "qkv.bias":
                    q, _, vv = torch.chunk(v, 3, dim=0)
                    out[f"{base}q_proj.bias"], out[f"{base}v_proj.bias"] = q, vv
                elif what in ("q_bias", "v_bias"):
                    out[f"{base}{what[0]}_proj.bias"] = v
                continue
            new = _rename(k, _VIT_TIMM_TO_HF)
            if new is None:
                out[k] = v
                continue
            if new.startswith("layer."):
                new = pre + new
            if new.endswith("register_tokens") or new.endswith("cls_token") or new.endswith("mask_token"):
                v = v.reshape(1, -1, v.shape[-1])
            out[new] = v
        # timm's default DINOv3 mirrors are built with qkv_bias=False: the released q/v biases are all zero
        # (timm's *_qkvb variants keep them). Zero biases compute exactly what a bias-free layer does.
        for k in [k for k in out if k.endswith(("q_proj.weight", "v_proj.weight"))]:
            bias = k[: -len("weight")] + "bias"
            if bias not in out and bias in model_keys:
                out[bias] = torch.zeros(out[k].shape[0], dtype=out[k].dtype)
        return out
    if arch == "convnext":
        pre = _model_prefix(model_keys, "stages.")
        for k, v in sd.items():
            if _CNX_IGNORED.search(k):
                continue
            k = _rename(k, _CNX_META_TO_TIMM) or k
            new = _rename(k, _CNX_TIMM_TO_HF)
            if new is None:
                out[k] = v
            else:
                out[pre + new if new.startswith("stages.") else new] = v
        return out
    raise ValueError(f"arch must be 'vit' or 'convnext', got {arch!r}")


def to_timm_state_dict(state_dict: Mapping[str, Any], arch: str, qkv_bias: bool = True) -> dict[str, Any]:
    """The inverse of :func:`convert_state_dict` for timm names (export, and the round-trip test).

    ``qkv_bias=False`` leaves out the (zero) q/v biases, as timm's default ``*_dinov3`` models do; ``True``
    keeps them as ``q_bias``/``v_bias``, as its ``*_dinov3_qkvb`` models do.
    """
    import torch

    sd = {re.sub(r"^model\.", "", k): v for k, v in state_dict.items()}
    out: dict[str, Any] = {}
    if arch == "vit":
        inverse = [(_to_pattern(rep), _to_replacement(pat)) for pat, rep in _VIT_TIMM_TO_HF if "fc1\\." not in pat]
        done = set()
        for k, v in sd.items():
            m = re.match(r"^layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$", k)
            if m:
                i = m.group(1)
                if i in done:
                    continue
                done.add(i)
                a = f"layer.{i}.attention."
                out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([sd[f"{a}{x}_proj.weight"] for x in "qkv"])
                if qkv_bias:
                    out[f"blocks.{i}.attn.q_bias"] = sd[f"{a}q_proj.bias"]
                    out[f"blocks.{i}.attn.v_bias"] = sd[f"{a}v_proj.bias"]
                continue
            gated = any(kk.endswith(".mlp.gate_proj.weight") for kk in sd)
            if k.endswith((".mlp.up_proj.weight", ".mlp.up_proj.bias")) and not gated:
                out[re.sub(r"^layer\.(\d+)\.mlp\.up_proj\.", r"blocks.\1.mlp.fc1.", k)] = v
                continue
            new = _rename(k, inverse)
            out[new if new is not None else k] = v
        return out
    if arch == "convnext":
        inverse = [(_to_pattern(rep), _to_replacement(pat)) for pat, rep in _CNX_TIMM_TO_HF]
        return {(_rename(k, inverse) or k): v for k, v in sd.items()}
    raise ValueError(f"arch must be 'vit' or 'convnext', got {arch!r}")


def _to_pattern(replacement: str) -> str:
    # "layer.\1.norm\2." → r"^layer\.(\d+)\.norm(\d+)\." : a replacement string becomes a pattern.
    parts = re.split(r"(\\\d)", replacement)
    return "^" + "".join(r"(\d+)" if re.fullmatch(r"\\\d", p) else re.escape(p) for p in parts) + (
        "$" if not replacement.endswith(".") else ""
    )


def _to_replacement(pattern: str) -> str:
    # r"^blocks\.(\d+)\.norm([12])\." → r"blocks.\1.norm\2." : a pattern becomes a replacement string.
    body = pattern.strip("^$")
    n = 0

    def group(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"\\{n}"

    body = re.sub(r"\((?:\\d\+|\[12\]|\[01\])\)", group, body)
    return body.replace("\\.", ".")


# ------------------------------------------------------------------------ architecture from a checkpoint
_PERIODS_KEYS = ("rope_embed.periods", "rope.periods")  # Meta's persistent RoPE buffer (timm's is not saved)
_DEFAULT_HEAD_DIM = 64  # every DINOv3 ViT release but the 7B (128), which timm and the table name
# timm ``model_args`` (eva.py keyword names) → transformers config names
_TIMM_ARGS = {
    "vit": {"embed_dim": "hidden_size", "depth": "num_hidden_layers", "num_heads": "num_attention_heads",
            "num_reg_tokens": "num_register_tokens", "patch_size": "patch_size", "rope_temperature": "rope_theta",
            "swiglu_mlp": "use_gated_mlp"},
    "convnext": {"depths": "depths", "dims": "hidden_sizes"},
}


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) or sorted(path.glob("*.pth"))
    if not files:
        raise NotACheckpointError(f"{path} holds no .safetensors/.bin/.pth weights")
    return files


def _torch_load(f: Path) -> dict[str, Any]:
    import torch

    try:  # memory-mapped: reading shapes of a large .pth costs no RAM
        return torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        return torch.load(str(f), map_location="cpu", weights_only=True)


def _read_state_dict(path: Path) -> dict[str, Any]:
    sd: dict[str, Any] = {}
    for f in _weight_files(path):
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd.update(load_file(str(f)))
        else:
            sd.update(_torch_load(f))
    return sd


def _shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], Any]:
    """Tensor shapes of a checkpoint (wrappers and prefixes stripped) and its stored RoPE periods, if any.

    Safetensors headers are read without their data; ``.pth`` files are memory-mapped.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    periods = None
    for f in _weight_files(path):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    name = _strip_prefix(k)
                    shapes[name] = tuple(st.get_slice(k).get_shape())
                    if name in _PERIODS_KEYS:
                        periods = st.get_tensor(k)
        else:
            sd = _strip_wrappers(_torch_load(f))
            shapes.update({k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")})
            periods = rope_periods(sd) if periods is None else periods
    return shapes, periods


def rope_periods(state_dict: Mapping[str, Any]) -> Any:
    """A checkpoint's stored RoPE ``periods`` (Meta's ``rope_embed.periods``), or None when it has none."""
    sd = _strip_wrappers(state_dict)
    return next((sd[k] for k in _PERIODS_KEYS if k in sd), None)


def timm_model_args(config: Mapping[str, Any] | None, arch: str) -> dict[str, Any]:
    """The transformers config values that a timm ``config.json``'s ``model_args`` state (often none)."""
    args = dict((config or {}).get("model_args") or {})
    out = {dst: args[src] for src, dst in _TIMM_ARGS[arch].items() if src in args}
    if "use_gated_mlp" in out:
        out["hidden_act"] = "silu" if out["use_gated_mlp"] else "gelu"
    return out


def _blocks(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    idx = [int(m.group(1)) for k in shapes if (m := re.match(pattern, k))]
    return 1 + max(idx) if idx else 0


def _infer_vit(shapes: dict[str, tuple[int, ...]], periods: Any) -> dict[str, Any]:
    shapes = {(_rename(k, _VIT_META_TO_TIMM) or k): v for k, v in shapes.items()}
    hidden = int(shapes["cls_token"][-1])
    gated = "blocks.0.mlp.fc1_g.weight" in shapes
    fc1 = shapes.get("blocks.0.mlp.fc1_g.weight" if gated else "blocks.0.mlp.fc1.weight")
    reg = shapes.get("reg_token")
    head_dim = 4 * int(periods.numel()) if periods is not None else _DEFAULT_HEAD_DIM
    cfg: dict[str, Any] = dict(
        hidden_size=hidden,
        num_hidden_layers=_blocks(shapes, r"^blocks\.(\d+)\."),
        num_attention_heads=max(1, hidden // head_dim),
        num_register_tokens=int(math.prod(reg[:-1])) if reg else 0,
        use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu",
    )
    if fc1 is not None:
        cfg["intermediate_size"] = int(fc1[0])
    if "patch_embed.proj.weight" in shapes:
        cfg["patch_size"] = int(shapes["patch_embed.proj.weight"][-1])
    return cfg


def _infer_convnext(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    shapes = {(_rename(k, _CNX_META_TO_TIMM) or k): v for k, v in shapes.items()}
    depths = [_blocks(shapes, rf"^stages\.{i}\.blocks\.(\d+)\.") for i in range(4)]
    widths = [shapes[f"stages.{i}.blocks.0.conv_dw.weight"][0] for i in range(4)]  # KeyError: not a ConvNeXt
    return dict(depths=depths, hidden_sizes=[int(w) for w in widths])


def infer_config(info: CheckpointInfo) -> tuple[str, dict[str, Any]]:
    """The architecture a checkpoint holds, read from the checkpoint itself: ``(arch, config values)``.

    Parameters
    ----------
    info : CheckpointInfo
        From :func:`inspect_checkpoint`.

    Returns
    -------
    tuple of (str, dict)
        ``"vit"`` or ``"convnext"`` and transformers config values. A transformers folder gives its own
        ``config.json``. For timm folders and Meta files the sizes come from the tensors' shapes (ViT: embed
        dim, depth, MLP width, SwiGLU or not, register tokens, patch size; ConvNeXt: depths and widths) and
        the number of heads from the stored RoPE periods (head dim = 4 × their count) or else a head dim of
        64; a timm ``config.json``'s ``model_args`` (``embed_dim``, ``depth``, ``num_heads``, …) override
        both. Release defaults (RoPE θ, LayerNorm ε, biases) are the caller's.
    """
    if info.kind == "transformers":
        return str(info.arch), dict(info.config or {})
    shapes, periods = _shapes(info.path)
    timm_names = {(_rename(k, _VIT_META_TO_TIMM) or k) for k in shapes}
    arch = info.arch or ("vit" if "cls_token" in timm_names else "convnext")
    try:
        cfg = _infer_vit(shapes, periods) if arch == "vit" else _infer_convnext(shapes)
    except (KeyError, IndexError, ValueError):
        raise NotACheckpointError(
            f"{info.path} is not a DINOv3 {arch} checkpoint: its tensors do not describe the architecture"
        ) from None
    cfg.update(timm_model_args(info.config, arch))
    return arch, cfg


def set_rope_periods(model: Any, periods: Any, source: str | os.PathLike[str]) -> None:
    """Make a transformers DINOv3 ViT use a checkpoint's stored RoPE ``periods``.

    transformers recomputes ``rope_embeddings.inv_freq`` (= 1 / periods) in float32 and never loads it; Meta's
    checkpoints store the periods (rounded to bfloat16 in the releases) and Meta's forward uses those.
    Raises :class:`NotACheckpointError` (one line) when their shape does not fit the model's head dimension.
    """
    import torch

    bufs = [b for n, b in model.named_buffers() if n.endswith("rope_embeddings.inv_freq")]
    if not bufs:
        raise NotACheckpointError(f"{source}: this transformers DINOv3 ViT has no rope_embeddings.inv_freq buffer")
    p = torch.as_tensor(periods).detach().to(device="cpu", dtype=torch.float64)
    for buf in bufs:
        if tuple(p.shape) != tuple(buf.shape):
            raise NotACheckpointError(
                f"{source} does not match the DINOv3 vit architecture: its RoPE periods have shape "
                f"{tuple(p.shape)}, the model's head dimension needs {tuple(buf.shape)}"
            )
        if not bool(torch.isfinite(p).all()) or bool((p <= 0).any()):
            raise NotACheckpointError(f"{source}: its RoPE periods are not all positive and finite")
        with torch.no_grad():
            buf.copy_((1.0 / p).to(dtype=buf.dtype, device=buf.device))


def _no_init() -> Any:
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # transformers 4
        except ImportError:  # initialise as usual
            return contextlib.nullcontext()
    return no_init_weights()


def load_model(
    info: CheckpointInfo,
    build: Callable[[], Any],
    dtype: Any = None,
) -> Any:
    """Load a checkpoint into a transformers DINOv3 model.

    ``"transformers"`` folders go through ``from_pretrained(local_files_only=True)``; timm-mirror folders
    and original files are converted (:func:`convert_state_dict`) into the model made by ``build()`` (the
    variant's architecture, built without its random init), refusing any mismatch with a one-line
    :class:`NotACheckpointError`; stored RoPE periods replace the recomputed ones (:func:`set_rope_periods`).
    """
    from transformers import DINOv3ConvNextModel, DINOv3ViTModel

    if info.kind == "transformers":
        cls = DINOv3ViTModel if info.arch == "vit" else DINOv3ConvNextModel
        try:
            model = cls.from_pretrained(str(info.path), local_files_only=True, dtype=dtype).eval()
            if (info.path / _ADAPTER_CONFIG).is_file():  # LoRA kept separately by `neuros-cv adapt`
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(info.path)).merge_and_unload().eval()
            return model
        except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NotACheckpointError(f"cannot load {info.path}: {first}") from None
    with _no_init():  # every tensor is overwritten below: skip the random init (seconds for a ViT-S)
        model = build()
    keys = list(model.state_dict())
    arch = "vit" if "embeddings.cls_token" in keys else "convnext"
    raw = _strip_wrappers(_read_state_dict(info.path))
    sd = convert_state_dict(raw, arch, keys)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # size mismatches raise even when strict=False
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise NotACheckpointError(
            f"{info.path} does not match the DINOv3 {arch} architecture: {detail}"
        ) from None
    missing = [k for k in missing if not k.endswith("mask_token")]
    if missing or unexpected:
        raise NotACheckpointError(
            f"{info.path} does not match the DINOv3 {arch} architecture: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}) tensors"
        )
    periods = rope_periods(raw) if arch == "vit" else None
    if periods is not None:  # Meta's forward uses the stored periods, not recomputed ones
        set_rope_periods(model, periods, info.path)
    model.eval()
    return model.to(dtype) if dtype is not None else model
