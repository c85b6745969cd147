"""Backbones: one registry (``get_backbone``/``list_backbones``) and the DINOv3 family."""

from .base import (
    Backbone,
    UnknownBackboneError,
    backbone_info,
    get_backbone,
    list_backbones,
    register_backbone,
)
from .dinov3 import VARIANTS, DINOv3Backbone

__all__ = [
    "VARIANTS",
    "Backbone",
    "DINOv3Backbone",
    "UnknownBackboneError",
    "backbone_info",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
