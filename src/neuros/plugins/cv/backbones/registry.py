"""The one table that maps backbone names to factories: a leaf module that imports no backbone.

Each implementation module registers its backbones when it is imported (``register_backbone`` at module
level, as timm's ``@register_model`` does); the package ``__init__`` imports every implementation, so any
import of :mod:`neuros.plugins.cv.backbones` (or a submodule) fills the table. Lookup, listing and
close-match suggestions for unknown names come from here (the shape of timm's ``create_model``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BackboneEntry",
    "UnknownBackboneError",
    "backbone_info",
    "entry_class",
    "get_backbone",
    "list_backbones",
    "lookup",
    "register_backbone",
    "register_resolver",
]


class UnknownBackboneError(ValueError):
    """Raised for a backbone name that is not registered; the message suggests close names."""


@dataclass(frozen=True)
class BackboneEntry:
    """One registry row: a name, how to build it, and facts to list without building it.

    ``factory`` is the backbone class itself or a ``functools.partial`` of it (so :func:`entry_class` can tell
    the class, and with it the identity options, without building anything).
    """

    name: str
    factory: Callable[..., Any]
    summary: str
    family: str
    info: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, BackboneEntry] = {}
_RESOLVERS: list[Callable[[str], BackboneEntry | None]] = []


def register_backbone(
    name: str, factory: Callable[..., Any], *, summary: str, family: str, **info: Any
) -> None:
    """Register ``factory`` under ``name``; ``info`` (feature_dim, hub_id, …) is shown by listings."""
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is already registered")
    _REGISTRY[name] = BackboneEntry(name, factory, summary, family, dict(info))


def register_resolver(resolve: Callable[[str], BackboneEntry | None]) -> None:
    """Let :func:`lookup` accept names outside the table (a local folder, a hub id): ``resolve(name)`` returns
    an entry or None."""
    _RESOLVERS.append(resolve)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def lookup(name: str) -> BackboneEntry:
    """The registry entry for ``name``, or :class:`UnknownBackboneError` with suggestions."""
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


def entry_class(entry: BackboneEntry) -> type | None:
    """The class an entry's factory builds: the factory itself, or the function of a ``functools.partial``."""
    factory = entry.factory
    cls = factory if isinstance(factory, type) else getattr(factory, "func", None)
    return cls if isinstance(cls, type) else None


def get_backbone(name: str, **kwargs: Any) -> Any:
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
    return [n for n, e in _REGISTRY.items() if family is None or e.family == family]


def backbone_info(name: str) -> dict[str, Any]:
    """Listing facts of a registered backbone (name, family, summary and its ``info``)."""
    e = lookup(name)
    return {"name": e.name, "family": e.family, "summary": e.summary, **e.info}
