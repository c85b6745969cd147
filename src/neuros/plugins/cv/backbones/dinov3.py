"""DINOv3 backbones: the released variants by short id, and ``DINOv3Backbone``.

The report's ids (``vit-small``, ``cnx-tiny``, …) map to Hugging Face hub ids; hub ids and local checkpoint
folders are accepted too. ``weights`` chooses what runs:

- ``"placeholder"`` — the report's deterministic stand-in (no network, no model);
- ``"random"`` / ``"random(seed=N)"`` — the real architecture from its config, seeded random init (a control
  baseline, and real speed offline);
- ``"pretrained"`` / ``"pretrained:<folder, file or hub id>"`` — real weights, found offline first
  (:mod:`.weights`);
- ``"auto"`` (default) — pretrained when present on this machine, else the placeholder; ``describe()`` then
  carries a ``note`` saying so.

Every :class:`FeatureMap` and ``describe()`` names the weights actually used: ``placeholder``,
``random(seed=N)`` or ``pretrained:<source>``. The networks are transformers' ``DINOv3ViTModel`` and
``DINOv3ConvNextModel``; this module only prepares input, runs them under ``torch.inference_mode`` and turns
their outputs into feature grids.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .._validation import as_image_list, check_positive_int
from ..features import FeatureMap
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, SAT493M_MEAN, SAT493M_STD, prepare, scaled_shape
from ..tiling import batched, stitch, tiles
from . import weights as W
from .base import Backbone, register_backbone, register_resolver
from .placeholder import PLACEHOLDER_NOTE, PLACEHOLDER_STAND_IN, placeholder_features

__all__ = ["VARIANTS", "DINOv3Backbone", "Variant", "parse_weights", "resolve_device"]

WEIGHT_MODES = ("auto", "pretrained", "random", "placeholder")

_VIT_BASE = dict(
    patch_size=16, num_register_tokens=4, layerscale_value=1.0, layer_norm_eps=1e-5, rope_theta=100.0,
    query_bias=True, key_bias=False, value_bias=True, proj_bias=True, mlp_bias=True, pos_embed_rescale=2.0,
)


def _vit(hidden: int, inter: int, layers: int, heads: int, gated: bool = False) -> dict[str, Any]:
    act = dict(use_gated_mlp=True, hidden_act="silu") if gated else dict(use_gated_mlp=False, hidden_act="gelu")
    return dict(_VIT_BASE, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, **act)


def _cnx(depths: list[int], hidden: list[int]) -> dict[str, Any]:
    return dict(depths=depths, hidden_sizes=hidden)


@dataclass(frozen=True)
class Variant:
    """A released DINOv3 checkpoint.

    ``feature_dim`` is the dimension of the dense features we return by default: the ViT embedding
    dimension, or for ConvNeXt the channels of the stride-16 stage (so its grid matches ViT/16 grids).
    ``embed_dim`` is the model's final (pooled) dimension. ``config`` holds the transformers config values
    of the release (from the official conversion scripts), so ``weights="random"`` builds the true network.
    """

    model_id: str
    hub_id: str
    arch: str  # "vit" | "convnext"
    feature_dim: int
    embed_dim: int
    params_m: float
    pretrain: str  # "LVD-1689M" | "SAT-493M"
    timm_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    patch_size: int = 16

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.pretrain == "SAT-493M":
            return SAT493M_MEAN, SAT493M_STD
        return IMAGENET_MEAN, IMAGENET_STD

    @property
    def hub_ids(self) -> tuple[str, ...]:
        """Where weights may be found: the official repo, then its ungated timm mirror."""
        return tuple(h for h in (self.hub_id, self.timm_id) if h)

    def hf_config(self) -> Any:
        """The transformers config of this release."""
        from transformers import DINOv3ConvNextConfig, DINOv3ViTConfig

        cls = DINOv3ViTConfig if self.arch == "vit" else DINOv3ConvNextConfig
        return cls(**self.config)


_V = Variant
_LVD, _SAT = "LVD-1689M", "SAT-493M"
VARIANTS: dict[str, Variant] = {
    v.model_id: v
    for v in (
        _V("vit-small", "facebook/dinov3-vits16-pretrain-lvd1689m", "vit", 384, 384, 21.6, _LVD,
           "timm/vit_small_patch16_dinov3.lvd1689m", _vit(384, 1536, 12, 6)),
        _V("vit-small-plus", "facebook/dinov3-vits16plus-pretrain-lvd1689m", "vit", 384, 384, 28.7, _LVD,
           "timm/vit_small_plus_patch16_dinov3.lvd1689m", _vit(384, 1536, 12, 6, gated=True)),
        _V("vit-base", "facebook/dinov3-vitb16-pretrain-lvd1689m", "vit", 768, 768, 85.7, _LVD,
           "timm/vit_base_patch16_dinov3.lvd1689m", _vit(768, 3072, 12, 12)),
        _V("vit-large", "facebook/dinov3-vitl16-pretrain-lvd1689m", "vit", 1024, 1024, 303.1, _LVD,
           "timm/vit_large_patch16_dinov3.lvd1689m", _vit(1024, 4096, 24, 16)),
        _V("vit-huge-plus", "facebook/dinov3-vith16plus-pretrain-lvd1689m", "vit", 1280, 1280, 840.6, _LVD,
           "timm/vit_huge_plus_patch16_dinov3.lvd1689m", _vit(1280, 5120, 32, 20, gated=True)),
        _V("vit-7b", "facebook/dinov3-vit7b16-pretrain-lvd1689m", "vit", 4096, 4096, 6716.4, _LVD,
           "timm/vit_7b_patch16_dinov3.lvd1689m", _vit(4096, 8192, 40, 32, gated=True)),
        _V("vit-large-sat", "facebook/dinov3-vitl16-pretrain-sat493m", "vit", 1024, 1024, 303.1, _SAT,
           "timm/vit_large_patch16_dinov3.sat493m", _vit(1024, 4096, 24, 16)),
        _V("vit-7b-sat", "facebook/dinov3-vit7b16-pretrain-sat493m", "vit", 4096, 4096, 6716.4, _SAT,
           "timm/vit_7b_patch16_dinov3.sat493m", _vit(4096, 8192, 40, 32, gated=True)),
        _V("cnx-tiny", "facebook/dinov3-convnext-tiny-pretrain-lvd1689m", "convnext", 384, 768, 27.8, _LVD,
           "timm/convnext_tiny.dinov3_lvd1689m", _cnx([3, 3, 9, 3], [96, 192, 384, 768])),
        _V("cnx-small", "facebook/dinov3-convnext-small-pretrain-lvd1689m", "convnext", 384, 768, 49.5, _LVD,
           "timm/convnext_small.dinov3_lvd1689m", _cnx([3, 3, 27, 3], [96, 192, 384, 768])),
        _V("cnx-base", "facebook/dinov3-convnext-base-pretrain-lvd1689m", "convnext", 512, 1024, 87.6, _LVD,
           "timm/convnext_base.dinov3_lvd1689m", _cnx([3, 3, 27, 3], [128, 256, 512, 1024])),
        _V("cnx-large", "facebook/dinov3-convnext-large-pretrain-lvd1689m", "convnext", 768, 1536, 196.2, _LVD,
           "timm/convnext_large.dinov3_lvd1689m", _cnx([3, 3, 27, 3], [192, 384, 768, 1536])),
    )
}
_BY_HUB = {h: v for v in VARIANTS.values() for h in v.hub_ids}
_BY_TIMM_ARCH = {(v.timm_id.split("/")[1].split(".")[0], v.pretrain == _SAT): v
                 for v in VARIANTS.values() if v.timm_id}
_BY_RELEASE = {stem: v for v in VARIANTS.values() for stem in W.release_stems(v.hub_ids)}  # Meta's file names
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def count_params(variant: Variant) -> int:
    """Parameters of a variant's network, counted on the meta device (no memory, any size)."""
    import torch
    from transformers import DINOv3ConvNextModel, DINOv3ViTModel

    cls = DINOv3ViTModel if variant.arch == "vit" else DINOv3ConvNextModel
    with torch.device("meta"):
        model = cls(variant.hf_config())
    return sum(p.numel() for p in model.parameters())


def parse_weights(spec: str) -> tuple[str, int | None, str | None]:
    """Split a weights string into (mode, seed, source).

    ``"random(seed=3)"`` → ``("random", 3, None)``; ``"pretrained:/data/w"`` → ``("pretrained", None,
    "/data/w")``; ``"auto"``, ``"placeholder"``, ``"random"`` and ``"pretrained"`` stand alone.
    """
    if not isinstance(spec, str):
        raise TypeError(f"weights must be a string, got {type(spec).__name__}")
    m = re.fullmatch(r"random\(seed=(-?\d+)\)", spec.strip())
    if m:
        return "random", int(m.group(1)), None
    if spec.startswith("pretrained:"):
        src = spec[len("pretrained:"):].strip()
        if not src:
            raise ValueError("weights='pretrained:' needs a folder, file or hub id after the colon")
        return "pretrained", None, src
    if spec in WEIGHT_MODES:
        return spec, None, None
    raise ValueError(
        f"weights must be one of auto, placeholder, random, random(seed=N), pretrained, pretrained:<path or hub id>; "
        f"got {spec!r}"
    )


def resolve_device(device: str | None) -> str:
    """``"auto"``/None → cuda if available, else mps, else cpu; explicit devices are checked."""
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if d.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be auto, cpu, cuda or mps, got {device!r}")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device here; use device='auto' or 'cpu'")
    if d == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device='mps' but MPS is not available here; use device='auto' or 'cpu'")
    return d


def _resolve_dtype(dtype: str | None) -> Any:
    import torch

    d = "float32" if dtype in (None, "auto") else str(dtype).replace("torch.", "")
    if d in ("float16", "half", "fp16"):
        raise ValueError(
            "dtype float16 is refused: DINOv3 activations overflow float16's range (users report NaN/garbage "
            "features); use bfloat16 (same range as float32) or float32"
        )
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if d not in table:
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    return table[d]


_CHECKPOINT_FILES = (".pth", ".pt", ".safetensors", ".bin")


def _is_checkpoint_path(p: Path) -> bool:
    """A folder, or a file with a checkpoint suffix (Meta's ``.pth``): a model id that is its own weights."""
    return p.is_dir() or (p.is_file() and p.suffix in _CHECKPOINT_FILES)


def _is_sat(path: Path, cfg: dict[str, Any]) -> bool:
    text = f"{path} {cfg.get('_name_or_path', '')} {cfg.get('pretrained_cfg', {})}".lower()
    return "sat493m" in text


def _with_params(v: Variant) -> Variant:
    return replace(v, params_m=round(count_params(v) / 1e6, 1))


def _variant_from_checkpoint(path: Path, name: str, hub_id: str | None = None) -> Variant:
    """A Variant for a local checkpoint (folder or Meta file), its architecture read from the checkpoint.

    A timm folder of a released architecture gets that release's config (its ``model_args``, if any,
    override), and so does a Meta file named as a release; anything else comes from
    :func:`~.weights.infer_config`: a transformers folder's ``config.json``, or the tensor shapes of a timm
    folder or Meta file on top of the release defaults.
    ``hub_id`` names where the checkpoint was found for a hub id; later look-ups search that id only.
    """
    info = W.inspect_checkpoint(path)
    cfg = dict(info.config or {})
    sat = _is_sat(path, cfg)
    if info.kind == "timm":
        table = _BY_TIMM_ARCH.get(((info.timm_arch or "").removesuffix("_qkvb"), sat))  # _qkvb: zero q/v biases
        if table is not None:
            extra = W.timm_model_args(cfg, table.arch)
            v = table if hub_id is None else replace(table, hub_id=hub_id, timm_id=None)
            return _with_params(replace(v, config={**v.config, **extra})) if extra else v
    if info.kind == "original":  # Meta's release file names say which release it is
        table = next((v for stem, v in _BY_RELEASE.items() if path.name.startswith(f"{stem}-")
                      or path.stem == stem), None)
        if table is not None:
            return table if hub_id is None else replace(table, hub_id=hub_id, timm_id=None)
    arch, found = W.infer_config(info)
    if info.kind == "transformers":
        known = set(_vit(1, 1, 1, 1)) | {"depths", "hidden_sizes", "layer_scale_init_value", "num_channels"}
        config = {k: v for k, v in found.items() if k in known}
    else:  # sizes from the tensors, everything else as in the releases
        config = {**_VIT_BASE, **found} if arch == "vit" else dict(found)
    if arch == "vit":
        dim = int(config.get("hidden_size", 384))
        feat, patch = dim, int(config.get("patch_size", 16))
    else:
        hs = list(config.get("hidden_sizes", [96, 192, 384, 768]))
        dim, feat, patch = int(hs[-1]), int(hs[2]), 16
    v = Variant(name, hub_id or str(path), arch, feat, dim, 0.0, _SAT if sat else _LVD, None, config, patch)
    return _with_params(v)


def _local_checkpoint(source: str | None, hub_id: str) -> Path | None:
    """Where the weights of a hub id (or its explicit ``pretrained:`` source) are on this machine."""
    if source is not None:
        p = Path(source).expanduser()
        if p.exists():
            return p
        if _HUB_ID.match(source):
            return W.find_weights(source, (source,))
        return None
    return W.find_weights(hub_id, (hub_id,))


def _hub_variant(model_id: str, source: str | None = None) -> Variant | None:
    """A Variant for a hub id no table names: from its local checkpoint, else a guess from its name.

    None when the id is neither on this machine nor named like a DINOv3 model.
    """
    local = _local_checkpoint(source, model_id)
    if local is not None:
        return _variant_from_checkpoint(local, model_id, hub_id=model_id)
    if "dinov3" in model_id.lower():  # not here yet: the architecture is read once it is downloaded
        sat = "sat493m" in model_id.lower()
        arch = "convnext" if "convnext" in model_id.lower() else "vit"
        return Variant(model_id, model_id, arch, 0, 0, 0.0, _SAT if sat else _LVD, None, {})
    return None


def _variant_for(model_id: str, source: str | None = None) -> Variant:
    """The Variant of a short id, a hub id or a local checkpoint (``source``: an explicit weights source)."""
    if not isinstance(model_id, str):
        raise TypeError(f"model_id must be a string, got {type(model_id).__name__}")
    if model_id in VARIANTS:
        return VARIANTS[model_id]
    if model_id in _BY_HUB:
        return _BY_HUB[model_id]
    p = Path(model_id).expanduser()
    if _is_checkpoint_path(p):
        return _variant_from_checkpoint(p, model_id)
    v = _hub_variant(model_id, source) if _HUB_ID.match(model_id) else None
    if v is not None:
        return v
    from .base import lookup

    lookup(model_id)  # raises UnknownBackboneError with close-match suggestions
    raise ValueError(f"backbone {model_id!r} is not a DINOv3 model")  # pragma: no cover


class DINOv3Backbone(Backbone):
    """A DINOv3 backbone with the report's interface.

    Parameters
    ----------
    model_id : str
        A short id from :data:`VARIANTS` (``"vit-small"``, ``"cnx-tiny"``, …), a hub id or a local
        checkpoint folder (``save_pretrained`` or timm mirror).
    weights : str
        ``"auto"``, ``"placeholder"``, ``"random"``, ``"random(seed=N)"``, ``"pretrained"`` or
        ``"pretrained:<folder, file or hub id>"``; see the module docstring.
    device : {"auto", "cpu", "cuda", "mps"} or None
        Torch device (None = auto).
    dtype : {"float32", "bfloat16"} or None
        Compute dtype (None = float32). float16 is refused: DINOv3 overflows it.
    layers : list of int, optional
        ViT blocks whose outputs to return (0-based, negative from the end); default: the last block.
    layer_reduce : {"concat", "mean"}
        How several ``layers`` combine: channel concatenation or mean.
    norm : bool
        Apply the model's final LayerNorm (ViT: to every chosen block, as DINOv3's
        ``get_intermediate_layers(norm=True)``; ConvNeXt: only to the last stage, which it belongs to).
    l2 : bool
        L2-normalise every feature vector.
    stage : int
        ConvNeXt stage 0–3 (strides 4/8/16/32); default 2, the stride-16 stage, whose grid matches ViT/16.
    scale : float
        Resize the image by this factor first (2 → twice finer features, 0.5 → 4× cheaper).
    tile, overlap : int, optional
        Process images larger than ``tile`` pixels (after ``scale``) in ``tile``×``tile`` windows with
        ``overlap`` pixels of context per side, stitching the cores: memory bounded by the tile.
    batch_size : int
        Images (or tiles) per forward pass.
    scaling, channels
        Intensity scaling and channel choice, see :func:`~neuros.plugins.cv.preprocess.to_float01` and
        :func:`~neuros.plugins.cv.preprocess.to_rgb`.
    normalization : {"auto", "lvd", "sat"}
        Mean/std: ImageNet statistics for LVD-1689M models, the SAT-493M statistics for satellite models.
    seed : int
        Seed of ``weights="random"`` (``"random(seed=N)"`` overrides it).
    download : bool
        Allow a network download when pretrained weights are missing (default False: offline).

    Examples
    --------
    >>> import numpy as np
    >>> bb = DINOv3Backbone("vit-small", weights="placeholder")
    >>> bb.embed(np.zeros((2, 64, 48))).shape
    (2, 12, 384)
    >>> bb.grid_shape
    (4, 3)
    >>> str(DINOv3Backbone("vit-small", weights="random(seed=3)", scale=2, l2=True).spec)
    'vit-small@random(seed=3)[l2=true,scale=2]'
    """

    #: The options that change the features (its :attr:`spec`); batch_size, device, dtype and tiling do not.
    spec_defaults: ClassVar[dict[str, Any]] = {
        "layers": None, "layer_reduce": "concat", "norm": True, "l2": False, "stage": 2, "scale": 1.0,
        "scaling": "auto", "channels": None, "normalization": "auto",
    }

    def __init__(
        self,
        model_id: str = "vit-small",
        weights: str = "auto",
        device: str | None = None,
        dtype: str | None = None,
        *,
        layers: list[int] | tuple[int, ...] | None = None,
        layer_reduce: str = "concat",
        norm: bool = True,
        l2: bool = False,
        stage: int = 2,
        scale: float = 1.0,
        tile: int | None = None,
        overlap: int = 64,
        batch_size: int = 8,
        scaling: str = "auto",
        channels: tuple[int, int, int] | None = None,
        normalization: str = "auto",
        seed: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        mode, wseed, source = parse_weights(weights)
        self.variant = _variant_for(model_id, source)
        self.model_id = model_id
        self.name = model_id
        self.patch_size = self.variant.patch_size
        self.device = device
        self.dtype = dtype
        self.note: str | None = None
        self._torch_dtype = _resolve_dtype(dtype)
        if layer_reduce not in ("concat", "mean"):
            raise ValueError(f"layer_reduce must be 'concat' or 'mean', got {layer_reduce!r}")
        if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"stage must be 0, 1, 2 or 3 (ConvNeXt strides 4/8/16/32), got {stage!r}")
        if layers is not None and self.variant.arch == "convnext":
            raise ValueError("layers applies to ViT models; for ConvNeXt choose a stage with stage=0..3")
        if normalization not in ("auto", "lvd", "sat"):
            raise ValueError(f"normalization must be auto, lvd or sat, got {normalization!r}")
        self.layers = None if layers is None else [int(i) for i in layers]
        if self.layers is not None and not self.layers:
            raise ValueError("layers is empty; pass None for the last block or a list of block indices")
        self.layer_reduce, self.norm, self.l2, self.stage = layer_reduce, bool(norm), bool(l2), int(stage)
        self.scale = float(scale)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.scaling, self.channels = scaling, channels
        # The grid stride in model-input pixels: 16 for ViT/16 and ConvNeXt stage 2; 4·2^stage otherwise.
        self._stride = self.patch_size if self.variant.arch == "vit" else 4 * 2**self.stage
        self._pad = max(self.patch_size, self._stride)
        self.tile, self.overlap = tile, int(overlap)
        if tile is not None:
            check_positive_int(tile, "tile")
            for nm, v in (("tile", tile), ("overlap", overlap)):
                if v % self._pad:
                    raise ValueError(f"{nm}={v} must be a multiple of {self._pad} (the model's grid stride)")
            if tile <= 2 * overlap:
                raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
        self.normalization = normalization
        mean, std = self.variant.mean_std
        if normalization == "sat":
            mean, std = SAT493M_MEAN, SAT493M_STD
        elif normalization == "lvd":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self._mean, self._std = mean, std
        self.model: Any = None
        # Called with the number of tiles after each batch of tiles of a tiled image (progress bars).
        self.progress: Callable[[int], None] | None = None
        self._load(mode, wseed if wseed is not None else int(seed), source, bool(download))
        self.feature_dim = self._feature_dim()

    # ----------------------------------------------------------------------------------- weights
    def _load(self, mode: str, seed: int, source: str | None, download: bool) -> None:
        v = self.variant
        if mode == "placeholder":
            self._placeholder()
            return
        if mode == "random":
            if not v.config:
                raise ValueError(f"{self.model_id}: no known architecture to build with random weights")
            self._device = resolve_device(self.device)
            self.model = self._build(seed)
            self.weights = f"random(seed={seed})"
            return
        path = self._find(source, download, required=mode == "pretrained")
        if path is None:  # auto, nothing here
            self._placeholder()
            self.note = (
                f"weights=auto: no pretrained weights for {self.model_id} on this machine, so the placeholder "
                f"ran (see `neuros-cv backbones`; {W.WEIGHTS_ENV} or the HF cache provide real weights)"
            )
            return
        self._device = resolve_device(self.device)
        info = W.inspect_checkpoint(path)
        if not v.config:  # a hub id no table names, downloaded just now: its architecture is its own
            v = self._adopt(path)
        if info.arch is not None and info.arch != v.arch:
            raise W.NotACheckpointError(f"{path} holds a DINOv3 {info.arch}, but {self.model_id} is a {v.arch}")
        self.model = W.load_model(info, lambda: self._build(0), None)
        self.weights = f"pretrained:{path}"

    def _adopt(self, path: Path) -> Variant:
        """Take the architecture of a checkpoint found only after construction (a download)."""
        v = _variant_from_checkpoint(path, self.model_id, hub_id=self.variant.hub_id)
        if v.arch != self.variant.arch or v.patch_size != self.patch_size:
            raise W.NotACheckpointError(
                f"{path} holds a DINOv3 {v.arch} with patch size {v.patch_size}, not the {self.variant.arch} "
                f"with patch size {self.patch_size} its name suggested; build the backbone again now that it is here"
            )
        self.variant = v
        return v

    def _placeholder(self) -> None:
        if not self.variant.feature_dim:
            raise W.WeightsNotFoundError(
                f"{self.model_id}: the placeholder needs a known variant; no weights for this hub id here"
            )
        self.weights = "placeholder"

    def _find(self, source: str | None, download: bool, required: bool) -> Path | None:
        v = self.variant
        if source is not None:
            p = Path(source).expanduser()
            if p.exists():
                return p
            if _HUB_ID.match(source):
                found = W.find_weights(self.model_id, (source,))
                if found is None and download:
                    found = W.download(source)
                if found is None:
                    raise W.WeightsNotFoundError(W.missing_weights_message(self.model_id, source, None))
                return found
            raise W.NotACheckpointError(f"weights path {source} does not exist")
        p = Path(self.model_id).expanduser()
        if _is_checkpoint_path(p):  # a local folder or Meta file as the model id is its own weights
            return p
        found = W.find_weights(self.model_id, v.hub_ids)
        if found is None and download:
            found = W.download(v.hub_id)
        if found is None and required:
            raise W.WeightsNotFoundError(W.missing_weights_message(self.model_id, v.hub_id, v.timm_id))
        return found

    def _build(self, seed: int) -> Any:
        import torch
        from transformers import DINOv3ConvNextModel, DINOv3ViTModel

        cls = DINOv3ViTModel if self.variant.arch == "vit" else DINOv3ConvNextModel
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(self.variant.hf_config())
        return model.eval()

    def _feature_dim(self) -> int:
        if self.model is None:
            return self.variant.feature_dim
        cfg = self.model.config
        if self.variant.arch == "vit":
            n = len(self.layers) if self.layers and self.layer_reduce == "concat" else 1
            return int(cfg.hidden_size) * n
        return int(cfg.hidden_sizes[self.stage])

    def _ensure_on_device(self) -> None:
        m = self.model
        if getattr(self, "_placed", None) != (self._device, self._torch_dtype):
            self.model = m.to(device=self._device, dtype=self._torch_dtype)
            self._placed = (self._device, self._torch_dtype)

    # ---------------------------------------------------------------------------------- features
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Feature grids (B, h, w, C) float32 of a batch of padded [0, 1] RGB images (B, H', W', 3)."""
        if self.model is None:
            return np.stack([placeholder_features(im, self.variant.model_id, self.feature_dim, self.patch_size)
                             for im in batch])
        import torch

        self._ensure_on_device()
        _, hp, wp, _ = batch.shape
        h, w = hp // self._stride, wp // self._stride
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        mean = torch.tensor(self._mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self._std, dtype=torch.float32).view(1, 3, 1, 1)
        x = ((x - mean) / std).contiguous().to(device=self._device, dtype=self._torch_dtype)
        with torch.inference_mode():
            if self.variant.arch == "vit":
                feats = self._vit_features(x, h, w)
            else:
                out = self.model(pixel_values=x, output_hidden_states=True)
                feats = out.hidden_states[self.stage + 1].permute(0, 2, 3, 1)  # (B, h, w, C)
                if self.norm and self.stage == 3:
                    feats = self.model.layer_norm(feats)
            if self.l2:
                feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            return feats.float().cpu().numpy()

    def _vit_features(self, x: Any, h: int, w: int) -> Any:
        import torch

        n_prefix = 1 + int(self.model.config.num_register_tokens)
        if self.layers is None and self.norm:
            tokens = [self.model(pixel_values=x).last_hidden_state]
        else:
            hs = self.model(pixel_values=x, output_hidden_states=True).hidden_states  # embeddings + blocks
            n = len(hs) - 1
            idx = [-1] if self.layers is None else self.layers
            bad = [i for i in idx if not -n <= i < n]
            if bad:
                raise ValueError(f"layers {bad} out of range for a {n}-block ViT (use 0..{n - 1} or negatives)")
            tokens = [hs[(i % n) + 1] for i in idx]
            if self.norm:
                tokens = [self.model.norm(t) for t in tokens]
        grids = [t[:, n_prefix:, :].reshape(t.shape[0], h, w, t.shape[-1]) for t in tokens]
        if len(grids) == 1:
            return grids[0]
        return torch.cat(grids, dim=-1) if self.layer_reduce == "concat" else torch.stack(grids).mean(0)

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        return prepare(image, self._pad, self.scaling, self.channels, self.scale)

    def _tiled(self, padded: np.ndarray) -> np.ndarray:
        """Features of one padded image, tile by tile; activations never exceed a batch of tiles."""
        hp, wp = padded.shape[:2]
        out = np.empty((hp // self._stride, wp // self._stride, self.feature_dim), dtype=np.float32)
        all_tiles = tiles((hp, wp), int(self.tile), self.overlap, self._pad)
        for group in batched(all_tiles, self.batch_size):
            grids = self._forward(np.stack([padded[t.y0 : t.y1, t.x0 : t.x1] for t in group]))
            for t, g in zip(group, grids, strict=True):
                stitch(out, t, g, self._stride)
            if self.progress is not None:
                self.progress(len(group))
        return out

    def n_tiles(self, shape: tuple[int, ...]) -> int:
        """How many tiles an image of ``shape`` (H, W[, C]) is cut into: 1 when it is not tiled.

        A tiled image reports each batch of its tiles to :attr:`progress` while it is extracted.
        """
        h, w = scaled_shape(int(shape[0]), int(shape[1]), self.scale)
        padded = (-(-h // self._pad) * self._pad, -(-w // self._pad) * self._pad)
        if not self._needs_tiling(padded):
            return 1
        return len(tiles(padded, int(self.tile), self.overlap, self._pad))

    def _needs_tiling(self, shape: tuple[int, ...]) -> bool:
        return self.tile is not None and (shape[0] > self.tile or shape[1] > self.tile)

    def extract_batch(self, images: Any) -> list[FeatureMap]:
        """Dense features of several images (a list, or a (B, H, W[, C]) array), batched by padded size."""
        min_size = max(1, int(np.ceil(self.patch_size / self.scale))) if self.model is None else 1
        arrs = as_image_list(images, min_size=min_size)
        prepped = [self._prepare(a) for a in arrs]
        grids: list[np.ndarray | None] = [None] * len(arrs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prepped):
            if self._needs_tiling(p.shape):
                grids[i] = self._tiled(p)
            else:
                groups.setdefault(p.shape, []).append(i)
        for idx in groups.values():
            for chunk in range(0, len(idx), self.batch_size):
                part = idx[chunk : chunk + self.batch_size]
                feats = self._forward(np.stack([prepped[i] for i in part]))
                for i, f in zip(part, feats, strict=True):
                    grids[i] = f
        stride = float(self._stride) / self.scale
        meta, spec = self._meta(), self.spec
        maps = []
        for a, g, p in zip(arrs, grids, prepped, strict=True):
            tiled = self._needs_tiling(p.shape)
            m = dict(meta, tiled=tiled, **({"tile": self.tile, "overlap": self.overlap} if tiled else {}))
            maps.append(FeatureMap(np.ascontiguousarray(g), stride, tuple(a.shape[:2]), self.name, self.weights, m,
                                   spec))
        self._remember(maps[-1])
        return maps

    def extract(self, image: np.ndarray) -> FeatureMap:
        """Dense features of one image (padded, not cropped, to the grid; see ``extract_batch``)."""
        if isinstance(image, np.ndarray) and image.ndim == 4:
            raise ValueError(f"image must be 2-D (H, W) or 3-D (H, W, C), got 4-D shape {image.shape}; "
                             "use extract_batch for a batch")
        if isinstance(image, (list, tuple)):
            raise TypeError("extract takes one image array; use extract_batch for a list")
        if isinstance(image, np.ndarray) and image.ndim not in (2, 3):
            raise ValueError(f"image must be 2-D (H, W) or 3-D (H, W, C), got {image.ndim}-D shape {image.shape}")
        return self.extract_batch([image])[0]

    def _meta(self) -> dict[str, Any]:
        pre: dict[str, Any] = {"scaling": self.scaling, "channels": self.channels, "scale": self.scale,
                               "pad_to": self._pad, "padding": "reflect, bottom/right"}
        m: dict[str, Any] = {"arch": self.variant.arch, "scale": self.scale, "preprocessing": pre}
        if self.model is not None:
            pre.update(mean=list(self._mean), std=list(self._std))
            m.update(norm=self.norm, l2=self.l2, dtype=str(self._torch_dtype).replace("torch.", ""),
                     device=self._device)
            if self.variant.arch == "vit":
                m.update(layers=self.layers if self.layers is not None else [-1], layer_reduce=self.layer_reduce)
            else:
                m.update(stage=self.stage)
        return m

    def _spec_options(self) -> dict[str, Any]:
        """Identity options that apply: the placeholder reads only the pixels (scale, scaling, channels); a ViT
        has no stage, a ConvNeXt no layers, and ConvNeXt's final norm belongs to stage 3 alone."""
        opts = super()._spec_options()
        if self.model is None:
            return {k: opts[k] for k in ("scale", "scaling", "channels")}
        if opts["normalization"] == ("sat" if self.variant.pretrain == _SAT else "lvd"):
            opts["normalization"] = "auto"  # the variant's own statistics, named
        if self.variant.arch == "vit":
            del opts["stage"]
            n = int(self.model.config.num_hidden_layers)
            if self.layers is not None:  # block i and i - n are one block; the last block alone is the default
                layers = [i - n if i >= 0 else i for i in self.layers]
                opts["layers"] = None if layers == [-1] else layers
            if not self.layers or len(self.layers) < 2:
                del opts["layer_reduce"]
        else:
            del opts["layers"], opts["layer_reduce"]
            if self.stage != 3:
                del opts["norm"]
        return opts

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(hub_id=self.variant.hub_id, arch=self.variant.arch, pretrain=self.variant.pretrain)
        if self.note:
            d["note"] = self.note
        if self.weights == "placeholder":  # every output that records the backbone says what the placeholder is
            d.update(stand_in=PLACEHOLDER_STAND_IN, placeholder=PLACEHOLDER_NOTE)
        if self.model is not None:
            d.update(stride=self._stride / self.scale, dtype=str(self._torch_dtype).replace("torch.", ""),
                     device=self._device)
        return d


def _factory(model_id: str) -> Callable[..., DINOv3Backbone]:
    # A partial, so that the registry can tell the class (its spec_defaults) without building one.
    return partial(DINOv3Backbone, model_id)


def external_entry(name: str) -> Any:
    """A registry entry for a local DINOv3 folder or a DINOv3 hub id (None for anything else)."""
    from .base import BackboneEntry

    p = Path(name).expanduser()
    if _is_checkpoint_path(p):
        v = _variant_from_checkpoint(p, name)  # raises NotACheckpointError (one line) for other folders
        summary = f"DINOv3 {v.arch.upper()} from {p}"
    elif _HUB_ID.match(name):
        found = _BY_HUB.get(name) or _hub_variant(name)  # a hub id on this machine reads its own config
        if found is None:
            return None
        v = found
        summary = f"DINOv3 {v.arch.upper()} ({name})"
    else:
        return None
    return BackboneEntry(name, _factory(name), summary, "dinov3",
                         dict(hub_id=v.hub_id, feature_dim=v.feature_dim, params_m=v.params_m,
                              patch_size=v.patch_size))


def weights_available(model_id: str) -> str | None:
    """Where pretrained weights for a registered variant are on this machine (None when absent)."""
    v = VARIANTS[model_id]
    found = W.find_weights(model_id, v.hub_ids)
    return None if found is None else str(found)


for _v in VARIANTS.values():
    register_backbone(
        _v.model_id,
        _factory(_v.model_id),
        summary=f"DINOv3 {_v.arch.upper()} ({_v.pretrain})",
        family="dinov3",
        hub_id=_v.hub_id,
        timm_id=_v.timm_id,
        feature_dim=_v.feature_dim,
        params_m=_v.params_m,
        patch_size=_v.patch_size,
    )

register_resolver(external_entry)
