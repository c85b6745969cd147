"""napari plugin of neurOS cv: scribble segmentation (Train / Predict / Live), stack alignment, readers, samples.

Installed with the ``napari`` extra (``pip install -e ".[napari]"``); napari finds it through the ``napari.manifest``
entry point (``napari.yaml`` in this package). The logic lives in Qt-free modules — :mod:`.session` (feature
cache, train, predict, head save/load), :mod:`.align`, :mod:`.readers`, :mod:`.sample_data` — and
:mod:`.widget` only wires them to layers and a worker thread. See docs/napari.md.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["manifest_path"]


def manifest_path() -> str:
    """Path of the npe2 manifest shipped with the package (``napari.yaml``)."""
    return str(resources.files(__name__) / "napari.yaml")
