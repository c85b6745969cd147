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

A *fused* spec joins two or more specs with ``+`` (``vit-small@random(seed=3)+filterbank[stride=4]``): each
part keeps its own weights and options (an option list belongs to the part it follows), and the features are
the parts' standardised features concatenated at their common stride (:mod:`.fused`). Only a ``+`` outside
brackets, parentheses and quotes joins parts, so ``filterbank[pool=mean+std]`` is one spec; a part's weights
path may therefore not contain a bare ``+``. Its :attr:`~BackboneSpec.name` is the parts' names joined
(``vit-small+filterbank``), which the registry resolves to the fused backbone, and :attr:`~BackboneSpec.parts`
holds the parts.

Old option names a backbone still accepts (its ``spec_aliases``, e.g. the filter bank's ``patch_size`` for
``stride``) are read as the current name, so specs and heads written before the rename still load.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .registry import BackboneEntry, entry_class, get_backbone, lookup, register_resolver

#: Option names some backbone accepts as an old name of another (its ``spec_aliases``); only specs using one
#: look their backbone's class up when they are made.
ALIASED_OPTIONS = frozenset({"patch_size"})
#: Joins the parts of a fused spec.
FUSE = "+"

__all__ = [
    "EXECUTION_OPTIONS",
    "FUSE",
    "BackboneSpec",
    "as_spec",
    "non_default_options",
    "option_defaults",
    "split_fused",
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


def split_fused(text: str) -> list[str]:
    """``text`` cut at every ``+`` outside brackets, parentheses and double quotes (one piece: not fused)."""
    pieces, depth, quoted, start = [], 0, False, 0
    for i, c in enumerate(text):
        if c == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif c in "[(":
            depth += 1
        elif c in ")]":
            depth = max(0, depth - 1)
        elif c == FUSE and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces


def _aliases(name: str) -> dict[str, str]:
    cls = _backbone_class(name)
    return dict(getattr(cls, "spec_aliases", {})) if cls is not None else {}


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
    parts : tuple of BackboneSpec
        The parts of a fused spec (empty for a plain one); make fused specs with :meth:`fuse` or
        :meth:`parse`. A fused spec's name is its parts' names joined by ``+``; it has no weights or options
        of its own.

    Examples
    --------
    >>> s = BackboneSpec.parse("vit-small@random(seed=3)[scale=2,l2=true]")
    >>> str(s)
    'vit-small@random(seed=3)[l2=true,scale=2]'
    >>> s.options_dict["scale"], BackboneSpec.parse(str(s)) == s
    (2, True)
    >>> f = BackboneSpec.parse("vit-small@random(seed=3)+filterbank[pool=mean+std,stride=4]")
    >>> f.name, [str(p) for p in f.parts]
    ('vit-small+filterbank', ['vit-small@random(seed=3)', 'filterbank[pool=mean+std,stride=4]'])
    """

    name: str
    weights: str | None = None
    options: Any = field(default=())
    parts: tuple[BackboneSpec, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.parts:
            self._check_fused()
            return
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"backbone spec needs a backbone name, got {self.name!r}")
        if len(split_fused(self.name)) > 1:
            raise ValueError(f"backbone name {self.name!r} may not contain '+' (it joins the parts of a fused "
                             "backbone: write the parts as one spec string, e.g. 'vit-small+filterbank')")
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
        if ALIASED_OPTIONS & set(norm):
            for old, new in _aliases(self.name).items():
                if old in norm:
                    value = norm.pop(old)
                    if new in norm and norm[new] != value:
                        raise ValueError(f"backbone spec {self.name!r}: {old}={_format_value(value)} and "
                                         f"{new}={_format_value(norm[new])} disagree ({old} is the old name of {new})")
                    norm[new] = value
        object.__setattr__(self, "options", tuple(sorted(norm.items())))

    def _check_fused(self) -> None:
        parts: list[BackboneSpec] = []
        for p in self.parts:
            p = BackboneSpec.parse(p) if isinstance(p, str) else p
            if not isinstance(p, BackboneSpec):
                raise TypeError(f"the parts of a fused backbone spec must be specs, got {type(p).__name__}")
            parts.extend(p.parts or (p,))  # (a+b)+c is a+b+c
        if len(parts) < 2:
            raise ValueError("a fused backbone spec needs at least two parts")
        name = FUSE.join(p.name for p in parts)
        if self.name != name or self.weights is not None or self.options:
            raise ValueError(f"a fused backbone spec is named by its parts ({name!r}) and has no weights or options "
                             f"of its own (give them to a part); use BackboneSpec.fuse or BackboneSpec.parse")
        object.__setattr__(self, "parts", tuple(parts))
        object.__setattr__(self, "options", ())

    @classmethod
    def fuse(cls, *parts: BackboneSpec | str) -> BackboneSpec:
        """The fused spec of ``parts`` (specs or spec strings; fused parts are flattened)."""
        flat = [q for p in parts for q in ((BackboneSpec.parse(p) if isinstance(p, str) else p).parts
                                           or (BackboneSpec.parse(p) if isinstance(p, str) else p,))]
        return cls(FUSE.join(p.name for p in flat), None, (), tuple(flat))

    # ------------------------------------------------------------------ string form
    def __str__(self) -> str:
        if self.parts:
            return FUSE.join(str(p) for p in self.parts)
        s = self.name if self.weights is None else f"{self.name}@{self.weights}"
        if self.options:
            s += "[" + ",".join(f"{k}={_format_value(v)}" for k, v in self.options) + "]"
        return s

    @classmethod
    def parse(cls, text: str) -> BackboneSpec:
        """The spec written as ``text`` (``name[@weights][[key=value,...]]``, or such specs joined by ``+``);
        the inverse of ``str()``."""
        if isinstance(text, BackboneSpec):
            return text
        if not isinstance(text, str):
            raise TypeError(f"a backbone spec must be a string, got {type(text).__name__}")
        pieces = split_fused(text.strip())
        if len(pieces) > 1:
            if any(not p.strip() for p in pieces):
                raise ValueError(f"backbone spec {text!r}: an empty part around '+' (write e.g. vit-small+filterbank)")
            return cls.fuse(*(cls.parse(p) for p in pieces))
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

        record = {"name": self.name, "weights": self.weights, "options": {k: plain(v) for k, v in self.options},
                  "string": str(self)}
        if self.parts:
            record["parts"] = [p.to_dict() for p in self.parts]
        return record

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneSpec:
        """The spec recorded by :meth:`to_dict` (its ``string`` is checked against the fields when present)."""
        if not isinstance(data, Mapping) or "name" not in data:
            raise ValueError(f"a backbone spec record needs at least a 'name', got {data!r}")
        unknown = set(data) - {"name", "weights", "options", "string", "parts"}
        if unknown:
            raise ValueError(f"backbone spec record: unknown key(s) {', '.join(sorted(unknown))}")
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise ValueError(f"backbone spec record: options must be a mapping, got {options!r}")
        if data.get("parts"):
            spec = cls.fuse(*(cls.from_dict(p) for p in data["parts"]))
            if spec.name != data["name"]:
                raise ValueError(f"backbone spec record: name {data['name']!r} does not match its parts "
                                 f"({spec.name!r})")
        else:
            spec = cls(data["name"], data.get("weights"), options)
        if "string" in data and cls.parse(data["string"]) != spec:
            raise ValueError(f"backbone spec record: string {data['string']!r} does not match its fields "
                             f"({str(spec)!r})")
        return spec

    # ------------------------------------------------------------------ changes
    def with_weights(self, weights: str | None) -> BackboneSpec:
        """This spec with other weights; for a fused spec, the parts that take weights and name none get them
        (a part's own weights win)."""
        if self.parts:
            if weights is None:
                return self
            return BackboneSpec.fuse(*(p.with_weights(weights) if p.weights is None and takes_weights(p.name)
                                       else p for p in self.parts))
        return replace(self, weights=weights)

    def with_options(self, **options: Any) -> BackboneSpec:
        """This spec with ``options`` set (given defaults are dropped, so the result stays canonical)."""
        if self.parts:
            if options:
                first = sorted(options)[0]
                owner = next((p.name for p in self.parts if first in option_defaults(p.name)), self.parts[-1].name)
                raise ValueError(f"fused backbone {str(self)!r} has no options of its own ({', '.join(sorted(options))}"
                                 f"); put them on a part, e.g. {owner}[{first}=...]")
            return self
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
        if self.parts or other.parts:
            for mine_p, theirs_p in zip(self.parts, other.parts, strict=True):
                diff = mine_p.difference(theirs_p)
                if diff is not None:
                    return f"{mine_p.name}.{diff[0]}", diff[1], diff[2]
            return None
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
        and weights must be part of the spec. A fused spec builds through the registry from its string.
        """
        if self.parts:
            if "weights" in extra:
                raise ValueError(f"backbone spec {str(self)!r}: weights belong in the spec, not in the build options")
            return get_backbone(str(self), **extra)
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



def _spec_entry(name: str) -> BackboneEntry | None:
    """Let :func:`~.registry.get_backbone` take a whole spec string (``"filterbank[stride=1]"``,
    ``"vit-small@random(seed=3)[stride=4]"``): an entry that builds it (fused names have their own resolver)."""
    if ("@" not in name and not name.endswith("]")) or len(split_fused(name)) > 1:
        return None
    try:
        spec = BackboneSpec.parse(name)
    except (ValueError, TypeError):
        return None
    if spec.name == name or (spec.weights is None and not spec.options):
        return None
    base = lookup(spec.name)
    return BackboneEntry(name, lambda **extra: spec.build(**extra), base.summary, base.family, dict(base.info))


register_resolver(_spec_entry)
