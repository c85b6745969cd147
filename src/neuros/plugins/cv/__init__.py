"""neurOS cv: self-supervised vision foundation models (DINOv3 first) for EM, MRI and histology.

The public API: backbones (``DINOv3Backbone``, ``get_backbone``, ``list_backbones``), dense ``FeatureMap``s,
``feature_matching`` (``patch_correlation``, ``estimate_translation``), synthetic and real datasets, and the
report's experiments.
"""

from . import datasets, feature_matching
from .backbones import Backbone, DINOv3Backbone, UnknownBackboneError, get_backbone, list_backbones
from .datasets.synthetic import make_dataset
from .feature_matching import estimate_translation, patch_correlation
from .features import FeatureMap

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "DINOv3Backbone",
    "FeatureMap",
    "UnknownBackboneError",
    "__version__",
    "datasets",
    "estimate_translation",
    "feature_matching",
    "get_backbone",
    "list_backbones",
    "make_dataset",
    "patch_correlation",
]
