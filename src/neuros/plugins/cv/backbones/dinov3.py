"""DINOv3 backbones: ``DINOv3Backbone``, registered under every released variant's short id.

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

The variant table lives in :mod:`.variants`, id/folder/weights resolution in :mod:`.resolve`, checkpoint files
in :mod:`.weights`, and the placeholder is its own class (:class:`~.placeholder.PlaceholderBackbone`), which
``DINOv3Backbone(..., weights="placeholder")`` (or ``"auto"`` without weights) returns.
"""

from __future__ import annotations

import inspect
import math
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, SAT493M_MEAN, SAT493M_STD
from . import weights as W
from .grid import DENSE_DEFAULTS, GridBackbone
from .placeholder import PlaceholderBackbone
from .registry import BackboneEntry, register_backbone, register_resolver
from .resolve import (
    HUB_ID,
    WEIGHT_MODES,
    WeightsChoice,
    adopt_checkpoint,
    choose_weights,
    hub_variant,
    is_checkpoint_path,
    parse_weights,
    resolve_device,
    resolve_dtype,
    variant_for,
    variant_from_checkpoint,
    weights_available,
)
from .variants import SAT, VARIANTS, Variant, by_hub, convnext_receptive_field, count_params

__all__ = ["VARIANTS", "WEIGHT_MODES", "DINOv3Backbone", "Variant", "count_params", "parse_weights",
           "resolve_device", "weights_available"]


def _check_options(variant: Variant, dtype: str | None, layers: Any, layer_reduce: str, stage: int,
                   normalization: str) -> None:
    """Refuse network options that make no sense (checked for the placeholder too, which ignores them)."""
    resolve_dtype(dtype)
    if layer_reduce not in ("concat", "mean"):
        raise ValueError(f"layer_reduce must be 'concat' or 'mean', got {layer_reduce!r}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3 (ConvNeXt strides 4/8/16/32), got {stage!r}")
    if layers is not None and variant.arch == "convnext":
        raise ValueError("layers applies to ViT models; for ConvNeXt choose a stage with stage=0..3")
    if normalization not in ("auto", "lvd", "sat"):
        raise ValueError(f"normalization must be auto, lvd or sat, got {normalization!r}")
    if layers is not None and not list(layers):
        raise ValueError("layers is empty; pass None for the last block or a list of block indices")


def _resolve(model_id: str, weights: str, dtype: str | None, layers: Any, layer_reduce: str, stage: int,
             normalization: str, seed: int, download: bool) -> tuple[Variant, WeightsChoice]:
    """The variant of ``model_id`` and what its ``weights`` request resolves to, options checked first."""
    _, _, source = parse_weights(weights)
    variant = variant_for(model_id, source)
    _check_options(variant, dtype, layers, layer_reduce, stage, normalization)
    return variant, choose_weights(model_id, variant, weights, int(seed), bool(download))


class DINOv3Backbone(GridBackbone):
    """A DINOv3 backbone with the report's interface.

    When the weights resolve to the placeholder (``weights="placeholder"``, or ``"auto"`` with no weights on
    this machine) the constructor returns a :class:`~.placeholder.PlaceholderBackbone` instead, with the same
    ``model_id``, grid and feature dimension; every other request builds the network.

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
    stride : float, optional
        Target grid step in input pixels (16, 8, 4, 2, 1), finer than the model's own ``patch / scale``:
        reached by ``shifts`` and then ``upsample`` (see :mod:`.grid` and docs/backbones.md). Default: the
        model's grid (after ``shifts``).
    shifts : int
        Shift-and-stitch factor k (Long et al., CVPR 2015): k×k passes on inputs shifted by ``patch / k``
        pixels, interleaved into a grid k times finer (1, 2, 4 or 8; cost k² forward passes).
    upsample : {"bilinear", "guided"}
        How the (stitched) grid is brought to ``stride``: bilinear, or bilinear then He et al.'s guided filter
        with the grey image as guide (:func:`~neuros.plugins.cv.guided.guided_upsample`).
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
        "scaling": "auto", "channels": None, "normalization": "auto", **DENSE_DEFAULTS,
    }

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is not DINOv3Backbone:  # a subclass builds itself
            return super().__new__(cls)
        a = _SIGNATURE.bind(None, *args, **kwargs)
        a.apply_defaults()
        k = a.arguments
        variant, choice = _resolve(k["model_id"], k["weights"], k["dtype"], k["layers"], k["layer_reduce"],
                                   k["stage"], k["normalization"], k["seed"], k["download"])
        if choice.kind == "placeholder":
            return PlaceholderBackbone(k["model_id"], variant, scale=k["scale"], scaling=k["scaling"],
                                       channels=k["channels"], stride=k["stride"], shifts=k["shifts"],
                                       upsample=k["upsample"], tile=k["tile"], overlap=k["overlap"],
                                       batch_size=k["batch_size"], note=choice.note)
        self = super().__new__(cls)
        self._resolved = (variant, choice)  # read (once) by __init__, so weights are looked up once
        return self

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
        stride: float | None = None,
        shifts: int = 1,
        upsample: str = "bilinear",
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
        resolved = self.__dict__.pop("_resolved", None)
        if resolved is None:  # a subclass
            resolved = _resolve(model_id, weights, dtype, layers, layer_reduce, stage, normalization, seed, download)
        variant, choice = resolved
        if choice.kind == "placeholder":
            raise TypeError(f"{type(self).__name__} runs a network; the placeholder is DINOv3Backbone's or "
                            "PlaceholderBackbone's")
        self.device, self.dtype = device, dtype
        self._torch_dtype = resolve_dtype(dtype)
        self.layers = None if layers is None else [int(i) for i in layers]
        self.layer_reduce, self.norm, self.l2, self.stage = layer_reduce, bool(norm), bool(l2), int(stage)
        self.normalization = normalization
        # The grid step in model-input pixels: 16 for ViT/16 and ConvNeXt stage 2; 4·2^stage otherwise.
        step = variant.patch_size if variant.arch == "vit" else 4 * 2**self.stage
        self._init_grid(model_id, variant, grid_step=step, scale=scale, scaling=scaling, channels=channels,
                        tile=tile, overlap=overlap, batch_size=batch_size, stride=stride, shifts=shifts,
                        upsample=upsample)
        mean, std = variant.mean_std
        if normalization == "sat":
            mean, std = SAT493M_MEAN, SAT493M_STD
        elif normalization == "lvd":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self._mean, self._std = mean, std
        self.model: Any = None
        self._load(choice)
        self.feature_dim = self._feature_dim()

    def __reduce__(self) -> tuple[Any, ...]:
        # Copies and pickles restore the state as it is: no second weights look-up through __new__.
        return (object.__new__, (type(self),), self.__dict__.copy())

    # ----------------------------------------------------------------------------------- weights
    def _load(self, choice: WeightsChoice) -> None:
        self._device = resolve_device(self.device)
        if choice.kind == "random":
            self.model = self._build(int(choice.seed or 0))
            self.weights = f"random(seed={choice.seed})"
            return
        path = choice.path
        info = W.inspect_checkpoint(path)
        v = self.variant
        if not v.config:  # a hub id no table names, downloaded just now: its architecture is its own
            v = self.variant = adopt_checkpoint(path, self.model_id, v)
        if info.arch is not None and info.arch != v.arch:
            raise W.NotACheckpointError(f"{path} holds a DINOv3 {info.arch}, but {self.model_id} is a {v.arch}")
        self.model = W.load_model(info, lambda: self._build(0), None)
        self.weights = f"pretrained:{path}"
        self.adapted = W.adapted_record(path)  # an `adapt` folder: every output names it (describe, meta)
        if self.adapted is not None:
            self.note = (f"adapted weights: {self.adapted['base_weights']} adapted by neuros-cv adapt "
                         f"({self.adapted['steps']} steps, seed {self.adapted['seed']}; {self.adapted['provenance']})")

    def _build(self, seed: int) -> Any:
        import torch
        from transformers import DINOv3ConvNextModel, DINOv3ViTModel

        cls = DINOv3ViTModel if self.variant.arch == "vit" else DINOv3ConvNextModel
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(self.variant.hf_config())
        return model.eval()

    def _feature_dim(self) -> int:
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


    # ---------------------------------------------------------------------------------- geometry
    @property
    def receptive_field(self) -> float:
        """ViT: global (``math.inf``; attention sees the whole input). ConvNeXt: the window of the chosen stage
        (:func:`~.variants.convnext_receptive_field`), in input pixels."""
        if self.variant.arch == "vit":
            return math.inf
        rf = convnext_receptive_field(list(self.model.config.depths), self.stage)
        return rf / self.scale + 2 * self._resize_margin() + self._dense_margin()

    def _meta(self) -> dict[str, Any]:
        pre = dict(self._preprocessing(), mean=list(self._mean), std=list(self._std))
        m: dict[str, Any] = {"arch": self.variant.arch, "scale": self.scale, "preprocessing": pre,
                             "norm": self.norm, "l2": self.l2,
                             "dtype": str(self._torch_dtype).replace("torch.", ""), "device": self._device}
        if self.variant.arch == "vit":
            m.update(layers=self.layers if self.layers is not None else [-1], layer_reduce=self.layer_reduce)
        else:
            m.update(stage=self.stage)
        if getattr(self, "adapted", None):
            m["adapted"] = self.adapted
        return m

    def _spec_options(self) -> dict[str, Any]:
        """Identity options that apply: a ViT has no stage, a ConvNeXt no layers, and ConvNeXt's final norm
        belongs to stage 3 alone (the placeholder is :class:`~.placeholder.PlaceholderBackbone`)."""
        opts = super()._spec_options()
        if opts["normalization"] == ("sat" if self.variant.pretrain == SAT else "lvd"):
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
        d.update(stride=self.stride, dtype=str(self._torch_dtype).replace("torch.", ""),
                 device=self._device)
        if getattr(self, "adapted", None):
            d["adapted"] = self.adapted
        return d


_SIGNATURE = inspect.signature(DINOv3Backbone.__init__)


def _factory(model_id: str) -> Any:
    # A partial, so that the registry can tell the class (its spec_defaults) without building one.
    return partial(DINOv3Backbone, model_id)


def external_entry(name: str) -> BackboneEntry | None:
    """A registry entry for a local DINOv3 folder or a DINOv3 hub id (None for anything else)."""
    p = Path(name).expanduser()
    if is_checkpoint_path(p):
        v = variant_from_checkpoint(p, name)  # raises NotACheckpointError (one line) for other folders
        summary = f"DINOv3 {v.arch.upper()} from {p}"
    elif HUB_ID.match(name):
        found = by_hub.get(name) or hub_variant(name)  # a hub id on this machine reads its own config
        if found is None:
            return None
        v = found
        summary = f"DINOv3 {v.arch.upper()} ({name})"
    else:
        return None
    return BackboneEntry(name, _factory(name), summary, "dinov3",
                         dict(hub_id=v.hub_id, feature_dim=v.feature_dim, params_m=v.params_m,
                              patch_size=v.patch_size))



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
