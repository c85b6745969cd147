"""``BackboneSpec``: what identifies a backbone's features, as one value with one string form.

A spec is the backbone's registered name, the weights actually used and the *identity options*: every option
that changes the features (for DINOv3: ``scale``, ``layers``, ``layer_reduce``, ``stage``, ``norm``, ``l2``,
``scaling``, ``channels``, ``normalization``; for the filter bank: ``sigmas``, ``patch_size``, ``pool``). Options
that only change how the same features are computed — ``batch_size``, ``device``, ``dtype``, ``tile`` /
``overlap`` and ``download`` — are not part of it: they are passed to :meth:`BackboneSpec.build` as extras.
Tiling (like the blocks of ``volume segment``) approximates a ViT's whole-image features near tile seams, and
bfloat16 rounds them; a head trained on whole float32 images is meant to be applied that way.

The canonical string is ``name[@weights][[key=value,...]]``, options sorted by key and only those that differ
from the backbone's defaults (a backbone's own :attr:`~.base.Backbone.spec` leaves defaults out)::

    vit-small@random(seed=3)
    vit-small@random(seed=3)[l2=true,scale=2]
    cnx-tiny@placeholder[stage=1]
    filterbank[pool=mean,sigmas=[1,2]]

Values are written as JSON (``true``, ``2``, ``0.5``, ``[-4,-1]``, ``null``) except that plain words
(``mean``, ``auto``) need no quotes; integral floats are written as integers (``scale=2``). The name is
everything before the first ``@`` (so a name may not contain ``@``); the weights run up to the option list.
:meth:`BackboneSpec.parse` is the exact inverse of ``str()``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .registry import entry_class, get_backbone, lookup

__all__ = [
    "EXECUTION_OPTIONS",
    "BackboneSpec",
    "as_spec",
    "non_default_options",
    "option_defaults",
    "split_options",
    "takes_weights",
]

#: Options that change how features are computed but not what they are (not part of a spec).
EXECUTION_OPTIONS = ("batch_size", "device", "dtype", "tile", "overlap", "download", "seed")

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.+\-]*\Z")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_OPTIONS_START = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def _norm_value(value: Any, key: str) -> Any:
    """A hashable, JSON-compatible option value: lists become tuples, NumPy scalars Python scalars."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)):
        seq = value.tolist() if hasattr(value, "tolist") else value
        return tuple(_norm_value(v, key) for v in seq)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"backbone option {key}={value!r} is not a finite number")
        return value
    raise TypeError(f"backbone option {key} must be a number, string, bool, None or a list of them, "
                    f"got {type(value).__name__}")


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if _WORD.match(value) and value not in ("true", "false", "null"):
        return value
    return json.dumps(value, ensure_ascii=False)


class _ValueParser:
    """Reads the option values of a spec string: JSON scalars and lists, plus unquoted words."""

    def __init__(self, text: str, where: str) -> None:
        self.text, self.pos, self.where = text, 0, where

    def fail(self, what: str) -> ValueError:
        return ValueError(f"backbone spec {self.where!r}: {what} at character {self.pos} of the option list")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def value(self) -> Any:
        self.skip()
        t = self.text
        if self.pos >= len(t):
            raise self.fail("missing value")
        if t[self.pos] == "[":
            self.pos += 1
            items: list[Any] = []
            self.skip()
            if self.pos < len(t) and t[self.pos] == "]":
                self.pos += 1
                return tuple(items)
            while True:
                items.append(self.value())
                self.skip()
                if self.pos < len(t) and t[self.pos] == ",":
                    self.pos += 1
                elif self.pos < len(t) and t[self.pos] == "]":
                    self.pos += 1
                    return tuple(items)
                else:
                    raise self.fail("expected ',' or ']' in a list")
        if t[self.pos] == '"':
            try:
                s, end = json.JSONDecoder().raw_decode(t, self.pos)
            except json.JSONDecodeError:
                raise self.fail("unterminated string") from None
            self.pos = end
            return s
        m = re.compile(r"[^,\]\s]+").match(t, self.pos)
        if m is None:
            raise self.fail("missing value")
        word = m.group(0)
        self.pos = m.end()
        if word in ("true", "false", "null"):
            return json.loads(word)
        try:
            num = json.loads(word)
        except json.JSONDecodeError:
            if not _WORD.match(word):
                raise self.fail(f"value {word!r} is neither JSON nor a plain word (quote it)") from None
            return word
        if isinstance(num, (int, float)) and not isinstance(num, bool):
            return num
        raise self.fail(f"unexpected value {word!r}")  # pragma: no cover

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        t = self.text
        self.skip()
        while self.pos < len(t):
            m = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=").match(t, self.pos)
            if m is None:
                raise self.fail("expected key=value")
            key = m.group(1)
            if key in out:
                raise self.fail(f"option {key!r} given twice")
            self.pos = m.end()
            out[key] = self.value()
            self.skip()
            if self.pos < len(t):
                if t[self.pos] != ",":
                    raise self.fail("expected ',' between options")
                self.pos += 1
                self.skip()
                if self.pos >= len(t):
                    raise self.fail("trailing ','")
        return out


def _split_options(text: str) -> tuple[str, str | None]:
    """(``name[@weights]``, option text or None): the option list is a trailing ``[key=...]`` group."""
    if not text.endswith("]"):
        return text, None
    depth, quoted, i = 0, False, len(text) - 1
    while i >= 0:
        c = text[i]
        if c == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and c == "]":
            depth += 1
        elif not quoted and c == "[":
            depth -= 1
            if depth == 0:
                inner = text[i + 1 : -1]
                if inner.strip() and not _OPTIONS_START.match(inner):
                    return text, None  # e.g. a folder name ending in "[1]", not an option list
                return text[:i], inner
        i -= 1
    return text, None


def _backbone_class(name: str) -> type | None:
    """The Backbone class the registry builds for ``name`` (None when it cannot tell)."""
    try:
        entry = lookup(name)
    except (ValueError, TypeError, OSError):  # unknown here (e.g. a folder that has gone): building will say so
        return None
    return entry_class(entry)


def option_defaults(name: str) -> dict[str, Any]:
    """The identity options of backbone ``name`` and their default values (``{}`` when none are known)."""
    cls = _backbone_class(name)
    return dict(getattr(cls, "spec_defaults", {})) if cls is not None else {}


def takes_weights(name: str) -> bool:
    """Whether backbone ``name`` has a choice of weights (DINOv3: yes; the filter bank: no)."""
    cls = _backbone_class(name)
    return True if cls is None else bool(getattr(cls, "takes_weights", True))


@dataclass(frozen=True)
class BackboneSpec:
    """The identity of a backbone's features: name, weights and the options that change the features.

    Parameters
    ----------
    name : str
        A registered backbone name (``"vit-small"``, ``"filterbank"``), a hub id or a local checkpoint folder.
    weights : str or None
        The weights (``"random(seed=3)"``, ``"placeholder"``, ``"pretrained:<path>"``, or a request such as
        ``"auto"``); None for backbones without a choice of weights, or to take the backbone's default.
    options : mapping
        Identity options (see the module docstring); stored as a sorted tuple of ``(key, value)`` pairs so
        that a spec is hashable. Use :attr:`options_dict` to read them as a dict.

    Examples
    --------
    >>> s = BackboneSpec.parse("vit-small@random(seed=3)[scale=2,l2=true]")
    >>> str(s)
    'vit-small@random(seed=3)[l2=true,scale=2]'
    >>> s.options_dict["scale"], BackboneSpec.parse(str(s)) == s
    (2, True)
    """

    name: str
    weights: str | None = None
    options: Any = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"backbone spec needs a backbone name, got {self.name!r}")
        if "@" in self.name:
            raise ValueError(f"backbone name {self.name!r} may not contain '@' (it separates name and weights)")
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights.strip()):
            raise ValueError(f"backbone spec {self.name!r}: weights must be a non-empty string or None, "
                             f"got {self.weights!r}")
        items = self.options.items() if isinstance(self.options, Mapping) else self.options
        norm = {}
        for key, value in items:
            if not isinstance(key, str) or not _KEY.match(key):
                raise ValueError(f"backbone spec {self.name!r}: option name {key!r} is not an identifier")
            if key in norm:
                raise ValueError(f"backbone spec {self.name!r}: option {key!r} given twice")
            norm[key] = _norm_value(value, key)
        object.__setattr__(self, "options", tuple(sorted(norm.items())))

    # ------------------------------------------------------------------ string form
    def __str__(self) -> str:
        s = self.name if self.weights is None else f"{self.name}@{self.weights}"
        if self.options:
            s += "[" + ",".join(f"{k}={_format_value(v)}" for k, v in self.options) + "]"
        return s

    @classmethod
    def parse(cls, text: str) -> BackboneSpec:
        """The spec written as ``text`` (``name[@weights][[key=value,...]]``); the inverse of ``str()``."""
        if isinstance(text, BackboneSpec):
            return text
        if not isinstance(text, str):
            raise TypeError(f"a backbone spec must be a string, got {type(text).__name__}")
        head, opts = _split_options(text.strip())
        name, at, weights = head.partition("@")
        if at and not weights:
            raise ValueError(f"backbone spec {text!r}: nothing after '@' (give weights, e.g. {name}@random)")
        options = _ValueParser(opts, text).options() if opts is not None else {}
        return cls(name.strip(), weights.strip() if at else None, options)

    # ------------------------------------------------------------------ records
    @property
    def options_dict(self) -> dict[str, Any]:
        """The identity options as a dict (tuples for lists)."""
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record (``head.json``'s ``backbone_spec``): name, weights, options, string."""
        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, tuple) else v

        return {"name": self.name, "weights": self.weights, "options": {k: plain(v) for k, v in self.options},
                "string": str(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneSpec:
        """The spec recorded by :meth:`to_dict` (its ``string`` is checked against the fields when present)."""
        if not isinstance(data, Mapping) or "name" not in data:
            raise ValueError(f"a backbone spec record needs at least a 'name', got {data!r}")
        unknown = set(data) - {"name", "weights", "options", "string"}
        if unknown:
            raise ValueError(f"backbone spec record: unknown key(s) {', '.join(sorted(unknown))}")
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise ValueError(f"backbone spec record: options must be a mapping, got {options!r}")
        spec = cls(data["name"], data.get("weights"), options)
        if "string" in data and data["string"] != str(spec):
            raise ValueError(f"backbone spec record: string {data['string']!r} does not match its fields "
                             f"({str(spec)!r})")
        return spec

    # ------------------------------------------------------------------ changes
    def with_weights(self, weights: str | None) -> BackboneSpec:
        """This spec with other weights."""
        return replace(self, weights=weights)

    def with_options(self, **options: Any) -> BackboneSpec:
        """This spec with ``options`` set (given defaults are dropped, so the result stays canonical)."""
        merged = {**self.options_dict, **options}
        return replace(self, options=non_default_options(merged, option_defaults(self.name)))

    # ------------------------------------------------------------------ identity
    def difference(self, other: BackboneSpec) -> tuple[str, str, str] | None:
        """The first field in which ``other`` differs from this spec, as ``(field, mine, theirs)`` strings.

        Options missing on one side take the backbone's default, so ``[norm=true]`` equals no option. Returns
        None when both specs describe the same features.
        """
        if self.name != other.name:
            return "backbone", self.name, other.name
        if self.weights != other.weights:
            return "weights", str(self.weights), str(other.weights)
        defaults = option_defaults(self.name) if self.options != other.options else {}
        mine, theirs = {**defaults, **self.options_dict}, {**defaults, **other.options_dict}
        for key in sorted(set(mine) | set(theirs)):
            a, b = mine.get(key), theirs.get(key)
            if _norm_value(a, key) != _norm_value(b, key):
                return key, _format_value(_norm_value(a, key)), _format_value(_norm_value(b, key))
        return None

    def mismatch(self, other: BackboneSpec) -> str | None:
        """One line saying how features made by ``other`` differ from features made by this spec (or None).

        Worded for a head trained on this spec: ``"features were extracted with scale=1 but the head was trained
        with scale=2"``.
        """
        diff = self.difference(other)
        if diff is None:
            return None
        key, mine, theirs = diff
        if key == "backbone":
            return f"features were extracted with backbone {theirs!r} but the head was trained on {mine!r}"
        return f"features were extracted with {key}={theirs} but the head was trained with {key}={mine}"

    # ------------------------------------------------------------------ building
    def build(self, **extra: Any) -> Any:
        """Build the backbone (a :class:`~.base.Backbone`) through the registry (:func:`~.registry.get_backbone`).

        ``extra`` are execution options (``device``, ``batch_size``, ``tile``, ``download``, …); identity options
        and weights must be part of the spec.
        """
        defaults = option_defaults(self.name)
        clash = sorted(k for k in extra if k == "weights" or k in defaults)
        if clash:
            raise ValueError(f"backbone spec {str(self)!r}: {', '.join(clash)} belong(s) in the spec, not in the "
                             "build options")
        cls = _backbone_class(self.name)
        if defaults or cls is not None:
            unknown = sorted(set(self.options_dict) - set(defaults))
            if unknown:
                known = ", ".join(sorted(defaults)) or "none"
                raise ValueError(f"backbone spec {str(self)!r}: {self.name} has no option(s) {', '.join(unknown)} "
                                 f"(identity options: {known})")
        if self.weights is not None and not takes_weights(self.name):
            raise ValueError(f"backbone {self.name!r} takes no weights (got {str(self)!r})")
        kw = {k: list(v) if isinstance(v, tuple) and k == "layers" else v for k, v in self.options}
        if self.weights is not None:
            kw["weights"] = self.weights
        return get_backbone(self.name, **kw, **extra)


def as_spec(spec: BackboneSpec | str, weights: str | None = None) -> BackboneSpec:
    """A :class:`BackboneSpec` from a spec or its string; ``weights`` (when given) replaces the spec's."""
    s = BackboneSpec.parse(spec) if not isinstance(spec, BackboneSpec) else spec
    return s.with_weights(weights) if weights is not None else s


def non_default_options(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without those equal to their default (lists and tuples compare alike)."""
    return {k: v for k, v in options.items()
            if k not in defaults or _norm_value(v, k) != _norm_value(defaults[k], k)}


def split_options(name: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` of backbone ``name`` split into (identity options, execution options).

    ``weights`` goes with neither (it is the spec's own field); unknown options are left among the execution
    options for the backbone itself to refuse.
    """
    defaults = option_defaults(name)
    ident = {k: v for k, v in options.items() if k in defaults}
    execution = {k: v for k, v in options.items() if k not in defaults and k != "weights"}
    return ident, execution

