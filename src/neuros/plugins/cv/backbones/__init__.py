"""Backbones: one registry (``get_backbone``/``list_backbones``), the DINOv3 family, the filter bank, fused
backbones (``A+B``) and ``BackboneSpec``.

The registry (:mod:`.registry`) and the protocol (:mod:`.base`) import no implementation; importing this
package imports every implementation module, and each registers its backbones (as timm's model modules do).
"""

from . import dinov3, filterbank, fused  # noqa: F401  (importing an implementation registers it)
from .base import Backbone
from .dinov3 import VARIANTS, DINOv3Backbone
from .filterbank import FilterBankBackbone
from .fused import FusedBackbone
from .placeholder import PlaceholderBackbone
from .registry import UnknownBackboneError, backbone_info, get_backbone, list_backbones, register_backbone
from .spec import BackboneSpec

__all__ = [
    "VARIANTS",
    "Backbone",
    "BackboneSpec",
    "DINOv3Backbone",
    "FilterBankBackbone",
    "FusedBackbone",
    "PlaceholderBackbone",
    "UnknownBackboneError",
    "backbone_info",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
