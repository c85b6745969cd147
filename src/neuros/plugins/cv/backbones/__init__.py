"""Backbones: one registry (``get_backbone``/``list_backbones``), the DINOv3 family and ``BackboneSpec``."""

from .base import (
    Backbone,
    UnknownBackboneError,
    backbone_info,
    get_backbone,
    list_backbones,
    register_backbone,
)
from .dinov3 import VARIANTS, DINOv3Backbone
from .spec import BackboneSpec

__all__ = [
    "VARIANTS",
    "Backbone",
    "BackboneSpec",
    "DINOv3Backbone",
    "UnknownBackboneError",
    "backbone_info",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
