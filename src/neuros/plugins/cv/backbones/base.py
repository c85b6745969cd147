"""The backbone protocol and the one registry that maps names to backbones.

A backbone turns an image into a :class:`~neuros.plugins.cv.features.FeatureMap`. Every backbone — DINOv3
variants, the report's placeholder, the classical filter bank — registers here, so listing, lookup and
close-match suggestions for unknown names come from one table (the shape of timm's ``create_model``).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .._validation import as_image_list
from ..features import FeatureMap
from .spec import BackboneSpec, non_default_options

__all__ = [
    "Backbone",
    "BackboneEntry",
    "UnknownBackboneError",
    "backbone_info",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]


class UnknownBackboneError(ValueError):
    """Raised for a backbone name that is not registered; the message suggests close names."""


class Backbone(ABC):
    """Base class of all backbones.

    Subclasses implement :meth:`extract` (one image) and set ``name``, ``patch_size``, ``feature_dim`` and
    ``weights``. :meth:`extract_batch` may be overridden to batch the forward pass. A subclass lists the
    ``__init__`` options that change its features, with their defaults, in :attr:`spec_defaults`: they make up
    its :attr:`spec` (see :mod:`.spec`), which every :class:`FeatureMap` it returns carries.
    """

    name: str = "backbone"
    patch_size: int = 16
    feature_dim: int = 0
    weights: str = "unknown"
    #: Identity options (``__init__`` keywords stored as attributes of the same name) and their defaults.
    spec_defaults: ClassVar[dict[str, Any]] = {}
    #: Whether the backbone has a choice of weights (its spec then names them; the filter bank has none).
    takes_weights: ClassVar[bool] = True

    def __init__(self) -> None:
        self._grid_shape: tuple[int, int] | None = None

    @abstractmethod
    def extract(self, image: np.ndarray) -> FeatureMap:
        """Dense features of one (H, W) or (H, W, C) image."""

    def extract_batch(self, images: Any) -> list[FeatureMap]:
        """Dense features of several images (a list, or a (B, H, W[, C]) array)."""
        return [self.extract(im) for im in as_image_list(images, min_size=self.patch_size)]

    def embed(self, images: Any) -> np.ndarray:
        """The report's call: patch embeddings of a batch as a (B, N, C) array (N = grid cells, row-major).

        All images must produce the same grid; ``grid_size``/``grid_shape`` then describe it.
        """
        maps = self.extract_batch(images)
        shapes = {fm.grid_shape for fm in maps}
        if len(shapes) != 1:
            raise ValueError(f"embed needs images with one grid shape, got {sorted(shapes)}; use extract()")
        self._grid_shape = maps[0].grid_shape
        return np.stack([fm.flat() for fm in maps])

    def _spec_options(self) -> dict[str, Any]:
        """The identity options that apply to this instance (defaults included); subclasses may drop some."""
        return {k: getattr(self, k) for k in self.spec_defaults}

    @property
    def spec(self) -> BackboneSpec:
        """What identifies this backbone's features: name, weights used and non-default identity options."""
        opts = non_default_options(self._spec_options(), self.spec_defaults)
        return BackboneSpec(self.name, self.weights if self.takes_weights else None, opts)

    def _remember(self, fm: FeatureMap) -> FeatureMap:
        self._grid_shape = fm.grid_shape
        return fm

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(h, w) of the patch grid of the last call."""
        if self._grid_shape is None:
            raise RuntimeError("grid_shape is known after the first embed()/extract() call")
        return self._grid_shape

    @property
    def grid_size(self) -> int:
        """Side of the (square) patch grid of the last call, as the report uses it.

        For non-square grids use :attr:`grid_shape`; this raises to avoid a silently wrong answer.
        """
        h, w = self.grid_shape
        if h != w:
            raise ValueError(f"grid is {h}×{w}, not square; use grid_shape instead of grid_size")
        return h

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description: name, weights used, spec, patch size and feature dimension."""
        return {
            "name": self.name,
            "weights": self.weights,
            "spec": str(self.spec),
            "patch_size": self.patch_size,
            "feature_dim": self.feature_dim,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weights={self.weights!r})"


@dataclass(frozen=True)
class BackboneEntry:
    """One registry row: a name, how to build it, and facts to list without building it."""

    name: str
    factory: Callable[..., Backbone]
    summary: str
    family: str
    info: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str, factory: Callable[..., Backbone], *, summary: str, family: str, **info: Any
) -> None:
    """Register ``factory`` under ``name``; ``info`` (feature_dim, hub_id, …) is shown by listings."""
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is already registered")
    _REGISTRY[name] = BackboneEntry(name, factory, summary, family, dict(info))


_RESOLVERS: list[Callable[[str], BackboneEntry | None]] = []


def register_resolver(resolve: Callable[[str], BackboneEntry | None]) -> None:
    """Let ``lookup`` accept names outside the table (a local folder, a hub id): ``resolve(name)`` returns an
    entry or None."""
    _RESOLVERS.append(resolve)


def _ensure_loaded() -> None:
    # Importing the modules registers their backbones; done lazily to avoid import cycles.
    from . import dinov3, placeholder  # noqa: F401

    try:
        from . import filterbank  # noqa: F401
    except ImportError:  # pragma: no cover - filterbank is optional until it exists
        pass


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def lookup(name: str) -> BackboneEntry:
    """The registry entry for ``name``, or :class:`UnknownBackboneError` with suggestions."""
    _ensure_loaded()
    if not isinstance(name, str):
        raise TypeError(f"backbone name must be a string, got {type(name).__name__}")
    if name not in _REGISTRY:
        for resolve in _RESOLVERS:  # e.g. local DINOv3 folders and hub ids (backbones/dinov3.py)
            entry = resolve(name)
            if entry is not None:
                return entry
        raise UnknownBackboneError(
            f"unknown backbone {name!r}{_suggest(name)} (see `neuros-cv backbones` for the list)"
        )
    return _REGISTRY[name]


def get_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build the backbone registered as ``name`` with keyword arguments passed to its factory.

    Examples
    --------
    >>> bb = get_backbone("vit-small", weights="placeholder")
    >>> bb.feature_dim
    384
    """
    return lookup(name).factory(**kwargs)


def list_backbones(family: str | None = None) -> list[str]:
    """Registered backbone names, optionally only one ``family`` (``"dinov3"``, ``"classical"``, …)."""
    _ensure_loaded()
    return [n for n, e in _REGISTRY.items() if family is None or e.family == family]


def backbone_info(name: str) -> dict[str, Any]:
    """Listing facts of a registered backbone (name, family, summary and its ``info``)."""
    e = lookup(name)
    return {"name": e.name, "family": e.family, "summary": e.summary, **e.info}
