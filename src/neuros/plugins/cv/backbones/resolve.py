"""From what a user asks for to what runs: DINOv3 model ids, folders, hub ids and the weights policy.

- :func:`variant_for`: the :class:`~.variants.Variant` (architecture) of a short id, a hub id or a local
  checkpoint (folder or Meta ``.pth``), read from the checkpoint itself when no table names it;
- :func:`parse_weights` / :func:`choose_weights`: the ``weights`` request (``auto``, ``placeholder``,
  ``random(seed=N)``, ``pretrained[:<source>]``) turned into what runs — the placeholder (with the note of an
  ``auto`` request that found nothing), a seeded random network, or a checkpoint path found offline first
  (:mod:`.weights` searches and loads; it is the only module that touches checkpoint files);
- :func:`resolve_device` / :func:`resolve_dtype`: torch device and compute dtype.

No backbone class lives here; :mod:`.dinov3` builds the network from the choice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import weights as W
from .registry import lookup
from .variants import LVD as _LVD
from .variants import SAT as _SAT
from .variants import VARIANTS, VIT_BASE, Variant, by_hub, by_timm_arch, count_params, vit_config

__all__ = [
    "HUB_ID",
    "WEIGHT_MODES",
    "WeightsChoice",
    "adopt_checkpoint",
    "choose_weights",
    "find_checkpoint",
    "hub_variant",
    "is_checkpoint_path",
    "parse_weights",
    "resolve_device",
    "resolve_dtype",
    "variant_for",
    "variant_from_checkpoint",
    "weights_available",
]

WEIGHT_MODES = ("auto", "pretrained", "random", "placeholder")

_BY_HUB, _BY_TIMM_ARCH, _VIT_BASE, _vit = by_hub, by_timm_arch, VIT_BASE, vit_config
_BY_RELEASE = {stem: v for v in VARIANTS.values() for stem in W.release_stems(v.hub_ids)}  # Meta's file names
HUB_ID = _HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def resolve_dtype(dtype: str | None) -> Any:
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


def is_checkpoint_path(p: Path) -> bool:
    """A folder, or a file with a checkpoint suffix (Meta's ``.pth``): a model id that is its own weights."""
    return p.is_dir() or (p.is_file() and p.suffix in _CHECKPOINT_FILES)


def _is_sat(path: Path, cfg: dict[str, Any]) -> bool:
    text = f"{path} {cfg.get('_name_or_path', '')} {cfg.get('pretrained_cfg', {})}".lower()
    return "sat493m" in text


def _with_params(v: Variant) -> Variant:
    return replace(v, params_m=round(count_params(v) / 1e6, 1))


def variant_from_checkpoint(path: Path, name: str, hub_id: str | None = None) -> Variant:
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


def hub_variant(model_id: str, source: str | None = None) -> Variant | None:
    """A Variant for a hub id no table names: from its local checkpoint, else a guess from its name.

    None when the id is neither on this machine nor named like a DINOv3 model.
    """
    local = _local_checkpoint(source, model_id)
    if local is not None:
        return variant_from_checkpoint(local, model_id, hub_id=model_id)
    if "dinov3" in model_id.lower():  # not here yet: the architecture is read once it is downloaded
        sat = "sat493m" in model_id.lower()
        arch = "convnext" if "convnext" in model_id.lower() else "vit"
        return Variant(model_id, model_id, arch, 0, 0, 0.0, _SAT if sat else _LVD, None, {})
    return None


def variant_for(model_id: str, source: str | None = None) -> Variant:
    """The Variant of a short id, a hub id or a local checkpoint (``source``: an explicit weights source)."""
    if not isinstance(model_id, str):
        raise TypeError(f"model_id must be a string, got {type(model_id).__name__}")
    if model_id in VARIANTS:
        return VARIANTS[model_id]
    if model_id in _BY_HUB:
        return _BY_HUB[model_id]
    p = Path(model_id).expanduser()
    if is_checkpoint_path(p):
        return variant_from_checkpoint(p, model_id)
    v = hub_variant(model_id, source) if _HUB_ID.match(model_id) else None
    if v is not None:
        return v
    lookup(model_id)  # raises UnknownBackboneError with close-match suggestions
    raise ValueError(f"backbone {model_id!r} is not a DINOv3 model")  # pragma: no cover


@dataclass(frozen=True)
class WeightsChoice:
    """What a ``weights`` request resolves to: ``kind`` ``"placeholder"``, ``"random"`` or ``"pretrained"``,
    with the ``seed`` of a random network, the ``path`` of a checkpoint, and the ``note`` of an ``auto``
    request that fell back to the placeholder."""

    kind: str
    seed: int | None = None
    path: Path | None = None
    note: str | None = None


def choose_weights(model_id: str, variant: Variant, weights: str, seed: int = 0,
                   download: bool = False) -> WeightsChoice:
    """Resolve a ``weights`` request for ``model_id`` (whose architecture is ``variant``); the weights policy.

    ``placeholder`` and ``random(seed=N)`` stand alone; ``pretrained`` must find a checkpoint (offline first,
    a download only with ``download``) or raises :class:`~.weights.WeightsNotFoundError`; ``auto`` takes a
    checkpoint when one is on this machine, else the placeholder, with a note saying so.
    """
    mode, wseed, source = parse_weights(weights)
    if mode == "placeholder":
        return WeightsChoice("placeholder")
    if mode == "random":
        if not variant.config:
            raise ValueError(f"{model_id}: no known architecture to build with random weights")
        return WeightsChoice("random", seed=wseed if wseed is not None else int(seed))
    path = find_checkpoint(model_id, variant, source, download, required=mode == "pretrained")
    if path is None:  # auto, nothing here
        return WeightsChoice("placeholder", note=(
            f"weights=auto: no pretrained weights for {model_id} on this machine, so the placeholder "
            f"ran (see `neuros-cv backbones`; {W.WEIGHTS_ENV} or the HF cache provide real weights)"
        ))
    return WeightsChoice("pretrained", path=path)


def find_checkpoint(model_id: str, variant: Variant, source: str | None, download: bool,
                    required: bool) -> Path | None:
    """Where the weights of ``model_id`` are: an explicit ``source`` (path or hub id), the model id itself when
    it is a local checkpoint, else the variant's hub ids searched offline (then downloaded with ``download``).

    None when nothing is found and the weights are not ``required``.
    """
    v = variant
    if source is not None:
        p = Path(source).expanduser()
        if p.exists():
            return p
        if _HUB_ID.match(source):
            found = W.find_weights(model_id, (source,))
            if found is None and download:
                found = W.download(source)
            if found is None:
                raise W.WeightsNotFoundError(W.missing_weights_message(model_id, source, None))
            return found
        raise W.NotACheckpointError(f"weights path {source} does not exist")
    p = Path(model_id).expanduser()
    if is_checkpoint_path(p):  # a local folder or Meta file as the model id is its own weights
        return p
    found = W.find_weights(model_id, v.hub_ids)
    if found is None and download:
        found = W.download(v.hub_id)
    if found is None and required:
        raise W.WeightsNotFoundError(W.missing_weights_message(model_id, v.hub_id, v.timm_id))
    return found


def adopt_checkpoint(path: Path, model_id: str, variant: Variant) -> Variant:
    """The architecture of a checkpoint found only after construction (a download), checked against the one
    its name suggested (``variant``)."""
    v = variant_from_checkpoint(path, model_id, hub_id=variant.hub_id)
    if v.arch != variant.arch or v.patch_size != variant.patch_size:
        raise W.NotACheckpointError(
            f"{path} holds a DINOv3 {v.arch} with patch size {v.patch_size}, not the {variant.arch} "
            f"with patch size {variant.patch_size} its name suggested; build the backbone again now that it is here"
        )
    return v


def weights_available(model_id: str) -> str | None:
    """Where pretrained weights for a registered variant are on this machine (None when absent)."""
    v = VARIANTS[model_id]
    found = W.find_weights(model_id, v.hub_ids)
    return None if found is None else str(found)
