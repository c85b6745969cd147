"""napari sample data: the project's synthetic EM, MRI and histology images (``datasets.synthetic``).

Each sample is the image, its ground-truth mask (a labels layer, hidden) and, for EM, simulated scribbles
(``scribbles.simulate_scribbles``: a few strokes per class, value = class + 1) ready for Train.
"""

from __future__ import annotations

from typing import Any

from ..datasets.synthetic import make_image
from ..scribbles import simulate_scribbles

__all__ = ["SAMPLE_SIZE", "em_sample", "histology_sample", "mri_sample"]

SAMPLE_SIZE = 512
LayerData = tuple[Any, dict[str, Any], str]


def _sample(modality: str, scribbles: bool, seed: int = 0) -> list[LayerData]:
    image, mask = make_image(modality, size=SAMPLE_SIZE, seed=seed)
    layers: list[LayerData] = [
        (image, {"name": f"synthetic {modality}", "rgb": image.ndim == 3}, "image"),
        (mask.astype("uint8"), {"name": f"{modality} truth", "visible": False, "opacity": 0.5}, "labels"),
    ]
    if scribbles:
        layers.append((simulate_scribbles(mask, seed=seed).astype("uint8"), {"name": f"{modality} scribbles"},
                       "labels"))
    return layers


def em_sample() -> list[LayerData]:
    """Synthetic EM (mitochondria-like objects), its mask and simulated scribbles."""
    return _sample("em", scribbles=True)


def mri_sample() -> list[LayerData]:
    """Synthetic MRI slice (a lesion) and its mask."""
    return _sample("mri", scribbles=False)


def histology_sample() -> list[LayerData]:
    """Synthetic H&E-like RGB tile (nuclei) and its mask."""
    return _sample("histology", scribbles=False)
