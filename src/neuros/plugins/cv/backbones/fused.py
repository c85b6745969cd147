"""Fused backbones: several backbones' features, standardised per source and concatenated at a common stride.

A spec whose parts are joined by ``+`` (``vit-small@random(seed=3)+filterbank[stride=4]``; see :mod:`.spec`)
names a :class:`FusedBackbone`. The registry resolves any such name (:func:`fused_entry`), so
``get_backbone``, ``BackboneSpec.build``, heads' spec checks, the CLI's ``--backbone``, suites and volume
workers take it like any other backbone.

- **Common stride.** The finest stride among the parts; coarser parts are brought to it by their own
  ``stride`` option (:meth:`~.grid.GridBackbone.restrided`: the DINOv3 grid upsampled with its ``upsample``
  method, bilinear by default; the filter bank pooled on the finer grid), so the fused spec names what ran —
  ``vit-small+filterbank[stride=4]`` runs ``vit-small[stride=4]+filterbank[stride=4]``. For another stride,
  put it on the parts.
- **Standardisation.** Each channel of each part is z-scored with *fixed* statistics: its mean and standard
  deviation over the part's features of one seeded synthetic image (:func:`reference_image`), measured once
  per backbone. No statistic depends on the image, tile or block being extracted, so blocks and tiles equal
  whole images wherever the parts do (exactly on the classical path), and heads trained on one image apply to
  any other. Every channel is then of order one, so no source dominates by its units (DINOv3 channels are
  O(1)–O(10), filter responses O(0.01)); balancing by channel count is left to the heads (which standardise
  their training table per channel anyway) and to channel reduction.
- **Geometry.** ``receptive_field`` and ``halo`` are the largest of the parts'; ``halo_exact`` holds when it
  holds for every part.
- **Names.** ``name`` joins the parts' names (``vit-small+filterbank``), ``weights`` the parts' weights
  (``random(seed=3)+none (classical filters)``), so every output names all weights.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from .._validation import as_image_list
from ..features import FeatureMap
from .base import Backbone
from .registry import BackboneEntry, entry_class, lookup, register_resolver
from .spec import FUSE, BackboneSpec, split_fused, takes_weights

__all__ = ["REFERENCE_SIZE", "FusedBackbone", "fused_entry", "reference_image"]

#: Side in pixels of the synthetic image the per-channel statistics are measured on.
REFERENCE_SIZE = 128
_REFERENCE_SEED = 12  # the issue number: any fixed seed would do, this one never changes


def reference_image(size: int = REFERENCE_SIZE) -> np.ndarray:
    """The fixed (size, size) float32 image in [0, 1] on which fused parts' channel statistics are measured.

    Seeded noise smoothed at 1, 2, 4 and 8 px (texture at every filter scale), a bright disc (a blob with a
    smooth boundary) and two dark 2-px lines (membrane-like ridges): every filter of the bank responds, and a
    network sees edges, blobs and texture. The same array on every machine.
    """
    rng = np.random.default_rng(_REFERENCE_SEED)
    noise = sum(ndimage.gaussian_filter(rng.standard_normal((size, size)), s) * s for s in (1.0, 2.0, 4.0, 8.0))
    noise = (noise - noise.mean()) / (4 * noise.std())
    yy, xx = np.mgrid[:size, :size].astype(np.float64) / size
    disc = ((yy - 0.35) ** 2 + (xx - 0.6) ** 2 < 0.2**2).astype(np.float64)
    lines = (np.abs(yy - 0.8 * xx - 0.1) * size < 1) | (np.abs(xx - 0.25) * size < 1)
    img = 0.5 + noise + 0.3 * ndimage.gaussian_filter(disc, 1.0) - 0.4 * lines
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _accepted(spec: BackboneSpec, extra: dict[str, Any]) -> dict[str, Any]:
    """The execution options among ``extra`` that part ``spec``'s backbone takes (the filter bank takes none)."""
    cls = entry_class(lookup(spec.name))
    if cls is None:
        return dict(extra)
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in extra.items() if k in params and k not in ("self", "weights")}


class FusedBackbone(Backbone):
    """Two or more backbones' features, standardised per source and concatenated at their common stride.

    Parameters
    ----------
    spec : str or BackboneSpec
        A fused spec (parts joined by ``+``, e.g. ``"vit-small@random(seed=3)+filterbank[stride=4]"``).
    weights : str, optional
        Weights for the parts that take weights and name none (a part's own weights win).
    **extra
        Execution options (``device``, ``batch_size``, ``tile``, ``download``, …), each given to the parts
        that take it; one that no part takes is refused (unless it is None: "not set").

    Examples
    --------
    >>> bb = FusedBackbone("vit-small@placeholder+filterbank[stride=4]")
    >>> str(bb.spec), bb.stride, bb.feature_dim
    ('vit-small@placeholder[stride=4]+filterbank[stride=4]', 4.0, 450)
    >>> bb.weights
    'placeholder+none (classical filters)'
    """

    #: A fused backbone has no options of its own: they belong to its parts.
    spec_defaults: ClassVar[dict[str, Any]] = {}
    #: Weights given to a fused backbone go to its parts that take weights.
    takes_weights: ClassVar[bool] = True

    def __init__(self, spec: str | BackboneSpec, weights: str | None = None, **extra: Any) -> None:
        super().__init__()
        fused = BackboneSpec.parse(spec) if isinstance(spec, str) else spec
        if not isinstance(fused, BackboneSpec) or not fused.parts:
            raise ValueError(f"a fused backbone needs parts joined by '+', got {str(spec)!r}")
        if weights is not None:
            if not any(takes_weights(p.name) for p in fused.parts):
                raise ValueError(f"no part of {str(fused)!r} takes weights (got weights={weights!r})")
            fused = fused.with_weights(weights)
        given = [_accepted(p, extra) for p in fused.parts]
        unused = sorted(k for k in set(extra) - {k for g in given for k in g} if extra[k] is not None)
        if unused:
            raise ValueError(f"no part of fused backbone {str(fused)!r} takes {', '.join(unused)}")
        parts = [p.build(**g) for p, g in zip(fused.parts, given, strict=True)]
        common = min(float(b.stride) for b in parts)
        self.parts: list[Backbone] = [b if float(b.stride) == common else self._restrided(b, common, fused)
                                      for b in parts]
        self.name = fused.name
        self.weights = FUSE.join(str(b.weights) for b in self.parts)
        self.feature_dim = sum(int(b.feature_dim) for b in self.parts)
        self.patch_size = max(int(b.patch_size) for b in self.parts)
        self._common = common
        self._stats: list[tuple[np.ndarray, np.ndarray]] | None = None

    @staticmethod
    def _restrided(part: Backbone, stride: float, fused: BackboneSpec) -> Backbone:
        """``part`` on the common grid, through its own ``stride`` option."""
        restride = getattr(part, "restrided", None)
        if restride is None:
            raise ValueError(f"fused backbone {str(fused)!r}: part {part.spec} has stride {float(part.stride):g} and "
                             f"no stride option to reach the common stride {stride:g}")
        try:
            return restride(stride)
        except ValueError as e:
            raise ValueError(f"fused backbone {str(fused)!r}: part {part.spec} cannot reach the common stride "
                             f"{stride:g}: {str(e).splitlines()[0]}") from None

    # ------------------------------------------------------------------ identity and geometry
    @property
    def spec(self) -> BackboneSpec:
        """The parts' specs (as built: at the common stride, weights resolved) joined by ``+``."""
        return BackboneSpec.fuse(*(b.spec for b in self.parts))

    @property
    def stride(self) -> float:
        """The common stride: the finest of the parts'."""
        return self._common

    @property
    def receptive_field(self) -> float:
        """The largest of the parts' receptive fields (``math.inf`` when a part's is global)."""
        return max(float(b.receptive_field) for b in self.parts)

    @property
    def halo(self) -> int:
        """The largest of the parts' halos (each a whole number of its cells, so of the common stride's)."""
        return max(int(b.halo) for b in self.parts)

    @property
    def halo_exact(self) -> bool:
        """Exact only when every part's halo is."""
        return all(b.halo_exact for b in self.parts)

    # ------------------------------------------------------------------ features
    def channel_statistics(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per part, the (mean, std) per channel of its features of :func:`reference_image` (measured once)."""
        if self._stats is None:
            ref = reference_image()
            stats = []
            for b in self.parts:
                flat = b.extract(ref).flat().astype(np.float64)
                mean, std = flat.mean(axis=0), flat.std(axis=0)
                std = np.where(std > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0))), std, 1.0)
                stats.append((mean.astype(np.float32), std.astype(np.float32)))
            self._stats = stats
        return self._stats

    def extract_batch(self, images: Any) -> list[FeatureMap]:
        """Fused features of several images: every part's (batched), standardised, concatenated."""
        arrs = as_image_list(images, min_size=self.patch_size)
        per_part = [b.extract_batch(arrs) for b in self.parts]
        stats, spec = self.channel_statistics(), self.spec
        maps = []
        for i, a in enumerate(arrs):
            fms = [maps_i[i] for maps_i in per_part]
            shapes = {fm.grid_shape for fm in fms}
            if len(shapes) != 1:  # pragma: no cover - parts at one stride give one grid (ceil(H / stride))
                raise RuntimeError(f"fused parts gave grids {sorted(shapes)} for one image")
            feats = np.concatenate([(fm.features - m) / s for fm, (m, s) in zip(fms, stats, strict=True)], axis=-1)
            bounds = np.cumsum([0] + [fm.feature_dim for fm in fms])
            meta = {"standardisation": "per-channel z-score, fixed statistics of each part on the reference image",
                    "parts": [{"spec": str(fm.spec), "weights": fm.weights, "channels": [int(lo), int(hi)],
                               "meta": fm.meta} for fm, lo, hi in zip(fms, bounds[:-1], bounds[1:], strict=True)]}
            maps.append(FeatureMap(feats.astype(np.float32, copy=False), self._common, tuple(a.shape[:2]), self.name,
                                   self.weights, meta, spec))
        return [self._remember(fm) for fm in maps]

    def extract(self, image: np.ndarray) -> FeatureMap:
        """Fused features of one image."""
        return self.extract_batch([image])[0]

    def describe(self) -> dict[str, Any]:
        """As every backbone's, plus the parts' descriptions and the common stride."""
        d = super().describe()
        d.update(stride=self._common, parts=[b.describe() for b in self.parts])
        return d


def fused_entry(name: str) -> BackboneEntry | None:
    """A registry entry for a fused spec string (parts joined by ``+``); None for anything else.

    Unknown parts raise :class:`~.registry.UnknownBackboneError` naming the part, with close matches.
    """
    if not isinstance(name, str) or len(split_fused(name)) < 2:
        return None
    spec = BackboneSpec.parse(name)
    for p in spec.parts:
        lookup(p.name)
    summary = "fused: " + " + ".join(str(p) for p in spec.parts)
    return BackboneEntry(name, partial(FusedBackbone, name), summary, "fused",
                         {"parts": [str(p) for p in spec.parts]})


register_resolver(fused_entry)
