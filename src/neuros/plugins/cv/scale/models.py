"""Models on workers: built once per worker process and reused by every block it runs.

Each ``distributed`` worker process imports this module once; the ``lru_cache`` then keeps one backbone per
:class:`~neuros.plugins.cv.backbones.spec.BackboneSpec` and one head per folder for the life of the worker, so a
run of 10 000 blocks loads the model once per worker, not once per block.
"""

from __future__ import annotations

from functools import lru_cache

from ..backbones.spec import BackboneSpec, as_spec

__all__ = ["worker_backbone", "worker_head"]


def worker_backbone(spec: BackboneSpec | str, weights: str | None = None):
    """The backbone of ``spec`` (a :class:`BackboneSpec`, or a name or spec string with optional ``weights``),
    built on first use in this process and cached."""
    return _built(as_spec(spec, weights))


@lru_cache(maxsize=4)
def _built(spec: BackboneSpec):
    return spec.build()


@lru_cache(maxsize=4)
def worker_head(path: str):
    """The segmentation head saved in ``path``, loaded on first use in this process and cached."""
    from ..heads import load_head

    return load_head(path)
