"""Self-supervised adaptation of a DINOv3 ViT to a lab's own images (``neuros-cv adapt``).

- :mod:`.crops` — lazy readers of every input format and the multi-crop sampler with grey-level augmentations;
- :mod:`.losses` — DINO head, centering/sharpening, iBOT masked-patch loss, KoLeo, Gram anchoring;
- :mod:`.train` — student and EMA teacher, schedules, checkpoints and exact resume;
- :mod:`.export` — the adapted transformers folder with its provenance file;
- :mod:`.api` — :func:`adapt`, all of it in one call.
"""

from .api import adapt, build_adapter
from .crops import MultiCropSampler, open_images
from .export import export_adapted
from .train import AdaptConfig, Adapter

__all__ = ["AdaptConfig", "Adapter", "MultiCropSampler", "adapt", "build_adapter", "export_adapted", "open_images"]
