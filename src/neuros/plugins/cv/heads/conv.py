"""A small convolutional decoder head: dilated 3×3 convolutions over a feature map, trained on random crops.

Per-pixel heads (logistic, forest, MLP) classify each grid cell from its own feature vector; structures whose
identity depends on their surroundings (mitochondria against other dark organelles, a membrane's continuity)
need context that the cell's vector lacks. This head adds it with a stack of residual 3×3 convolutions whose
dilations grow (1, 2, 4, 8, …), the context aggregation of Yu & Koltun (2016, "Multi-scale context aggregation
by dilated convolutions", arXiv:1511.07122): the receptive field grows exponentially with depth at the cost of
one 3×3 convolution per layer, and every layer keeps the grid's resolution, so a stride-1 map (the unpooled
filter bank) gives pixel-precise output. Maps at stride ``s > 1`` are decoded at their grid and the logits are
upsampled bilinearly to pixels, where the loss is computed (so a stride-2 or stride-4 map is trained against
pixel labels).

Training: per-channel standardisation (mean and std over every training cell, stored with the weights); random
windows around labelled pixels; cross-entropy masked to labelled pixels (``unlabelled`` pixels are neither
trained nor counted); class-balanced weights from the labelled pixel counts; AdamW with a fixed number of
steps and a cosine learning-rate decay; ``seed`` fixes initialisation, windows and order — same data and
seed, same weights. Prediction runs tile by tile with a halo covering the decoder's reach, so tiles reproduce
the whole-image result. Weights are stored as safetensors (no pickle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..dense import TiledFeatures
from ..features import FeatureMap
from ..labels import class_weights_per_class, encode_masks
from ._torch_io import load_net, save_net
from .base import INTERPOLATIONS, LEVELS, SegmentationHead, _mask_list, as_maps

__all__ = ["ConvDecoderHead", "decoder_halo"]

_WEIGHTS = "conv.safetensors"


def decoder_halo(dilations: Sequence[int], trunk_stride: int = 4) -> int:
    """Grid cells of context the decoder reads on each side of an output cell (an upper bound).

    The full-resolution 3×3 convolution reads 1 cell; the trunk's 3×3 convolutions read ``sum(dilations)``
    trunk cells, plus one for the bilinear upsampling and one for the pooling, each ``trunk_stride`` cells wide.
    Rounded up to whole trunk cells, so that tiles carrying it pool on the whole image's pooling grid.

    Examples
    --------
    >>> decoder_halo((1, 2, 4, 8), trunk_stride=2)
    36
    """
    step = int(trunk_stride)
    reach = 1 + step * (sum(int(d) for d in dilations) + 2)
    return -(-reach // step) * step


def _network(n_in: int, channels: int, dilations: Sequence[int], trunk_stride: int, n_out: int):
    """The decoder: a full-resolution path for precision beside a pooled, dilated trunk for context.

    1×1 stem (C → channels) and one residual 3×3 convolution at the grid's resolution; average pooling by
    ``trunk_stride``, one residual dilated 3×3 convolution per dilation, bilinear upsampling back; a 1×1
    classifier (2·channels → channels → K) on both paths concatenated.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(n_in, channels, 1)
            self.local = nn.Conv2d(channels, channels, 3, padding=1)
            self.blocks = nn.ModuleList(
                nn.Conv2d(channels, channels, 3, padding=int(d), dilation=int(d)) for d in dilations
            )
            self.hidden = nn.Conv2d(2 * channels, channels, 1)
            self.classify = nn.Conv2d(channels, n_out, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            stem = torch.relu(self.stem(x))
            local = stem + torch.relu(self.local(stem))
            h = F.avg_pool2d(stem, trunk_stride, ceil_mode=True) if trunk_stride > 1 else stem
            for conv in self.blocks:
                h = h + torch.relu(conv(h))
            if trunk_stride > 1:
                h = F.interpolate(h, scale_factor=trunk_stride, mode="bilinear", align_corners=False)
                h = h[:, :, : x.shape[2], : x.shape[3]]
            return self.classify(torch.relu(self.hidden(torch.cat([local, h], dim=1))))

    return Decoder()


class ConvDecoderHead(SegmentationHead):
    """Standardised features → 1×1 conv → residual dilated 3×3 convs → 1×1 conv to K classes (logits).

    Parameters
    ----------
    channels : int
        Width of every hidden layer.
    dilations : tuple of int
        One residual 3×3 convolution per entry, with that dilation; the reach (halo) is their sum in grid cells.
    steps : int
        AdamW steps (fixed: the training time does not depend on the data size).
    crop : int
        Side, in grid cells, of each training window (every labelled pixel in it is scored).
    batch_size : int
        Windows per step.
    lr, weight_decay : float
        AdamW settings; the learning rate decays to zero on a cosine schedule.
    tile : int
        Core tile side (grid cells) at prediction; each tile is decoded with the halo around it.
    augment : bool
        Train on windows turned by a random element of the square's symmetry group (90° rotations and a flip),
        features and labels together. Right for rotation-invariant channels (the filter bank's are: smoothed
        intensity, magnitudes and eigenvalues) and for tissue with no preferred in-plane direction (EM sections).
    tta : bool or "auto"
        Test-time augmentation: decode the map under each of the square's 8 symmetries, turn the logits back and
        average them (8× the prediction time). Right for the same features and tissue as ``augment``; ``"auto"``
        (the default) turns it on for the filter bank's rotation-invariant channels only (on ssTEM it added
        +0.007 membrane and +0.016 mitochondria Dice, docs/segmentation.md) and off for every other backbone,
        whose features change when the image turns.
    label_rule, threshold, class_weight, seed, single_class, unlabelled, max_samples_per_class, n_components
        Keyword-only, common to every head (see :class:`SegmentationHead`). ``unlabelled``: a mask value that
        is neither trained nor a class (0 in a scribble mask). The decoder learns from pixel labels directly,
        so ``label_rule`` and ``threshold`` are recorded but not used; it trains on random windows of the whole
        maps, so ``max_samples_per_class`` and ``n_components`` must stay None.
    """

    kind = "conv"
    samples_positions = False

    def __init__(self, channels: int = 32, dilations: tuple[int, ...] = (1, 2, 4, 8, 16), trunk_stride: int = 4,
                 steps: int = 1500,
                 crop: int = 128, batch_size: int = 4, lr: float = 3e-3, weight_decay: float = 1e-4,
                 tile: int = 512, augment: bool = False, tta: bool | str = "auto", *, label_rule: str = "argmax",
                 threshold: float = 0.5,
                 class_weight: str | None = "balanced", seed: int = 0, single_class: str = "error",
                 unlabelled: int | None = None, max_samples_per_class: int | None = None,
                 n_components: int | None = None) -> None:
        super().__init__(label_rule=label_rule, threshold=threshold, class_weight=class_weight, seed=seed,
                         single_class=single_class, unlabelled=unlabelled,
                         max_samples_per_class=max_samples_per_class, n_components=n_components)
        self.channels = channels
        self.dilations = dilations
        self.trunk_stride = trunk_stride
        self.steps = steps
        self.crop = crop
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.tile = tile
        self.augment = augment
        self.tta = tta

    # ----------------------------------------------------------------- checks
    @property
    def halo(self) -> int:
        """Grid cells of context each output cell reads on each side (:func:`decoder_halo`)."""
        return decoder_halo(self.dilations, self.trunk_stride)

    @property
    def context_px(self) -> int:
        """The decoder's reach in image pixels: :attr:`halo` grid cells at the training maps' stride."""
        return int(self.halo * round(float(getattr(self, "stride_", 1.0) or 1.0)))

    @property
    def uses_tta(self) -> bool:
        """Whether prediction averages the 8 symmetries: ``tta=True``, or ``"auto"`` on the filter bank's maps."""
        if self.tta == "auto":
            return getattr(self, "backbone_", None) == "filterbank"
        return bool(self.tta)

    def _check_params(self) -> None:
        super()._check_params()
        if self.tta not in (True, False, "auto"):
            raise ValueError(f"tta must be True, False or 'auto', got {self.tta!r}")
        positive = {"channels": self.channels, "trunk_stride": self.trunk_stride, "steps": self.steps,
                    "crop": self.crop, "batch_size": self.batch_size, "tile": self.tile}
        for name, value in positive.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (not isinstance(self.dilations, (list, tuple)) or not self.dilations
                or any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1
                       for d in self.dilations)):
            raise ValueError(f"dilations must be a non-empty tuple of positive integers, got {self.dilations!r}")
        for name in ("max_samples_per_class", "n_components"):
            if getattr(self, name) is not None:
                raise ValueError(f"the conv head trains on whole maps (random windows), {name} does not apply: "
                                 f"leave it None")

    @staticmethod
    def _integer_stride(fm: FeatureMap, i: int) -> int:
        s = round(float(fm.stride))
        if s < 1 or abs(float(fm.stride) - s) > 1e-9:
            raise ValueError(f"feature map {i} has stride {fm.stride:g}; the conv head needs an integer stride "
                             "(1, 2, 4, 8 or 16): extract features at an integer stride")
        return s

    def _targets(self, maps: list[FeatureMap], masks: list[np.ndarray]) -> list[np.ndarray]:
        """Pixel targets (H, W) int64: class index, or -1 where the mask holds ``unlabelled``; sets classes_."""
        encoded, self.classes_ = encode_masks(masks, [fm.image_shape for fm in maps], unlabelled=self.unlabelled)
        return encoded

    # ----------------------------------------------------------------- training
    def fit(self, feature_maps: Any, masks: Sequence[np.ndarray]) -> ConvDecoderHead:
        """Fit on feature maps (one per image) and their pixel masks (same H×W as each map's image).

        Raises
        ------
        ValueError
            Masks of another shape or with values that are not integers, no labelled pixel, maps from different
            backbones or at a non-integer stride, or (with ``single_class="error"``) a single labelled class.
        """
        self._reset()
        maps = _whole_maps(feature_maps)
        masks = _mask_list(feature_maps, masks)
        if not maps:
            raise ValueError("empty training set: pass at least one feature map and mask")
        if len(maps) != len(masks):
            raise ValueError(f"{len(maps)} feature maps but {len(masks)} masks")
        ids = {(fm.backbone, fm.weights, fm.feature_dim, float(fm.stride)) for fm in maps}
        if len(ids) != 1:
            raise ValueError(f"training feature maps come from different backbones/weights/dims: {sorted(ids)}")
        for i, fm in enumerate(maps):
            self._integer_stride(fm, i)
        targets = self._targets(maps, masks)
        self._record_identity(maps[0])
        self._check_maps(maps)
        counts = np.bincount(np.concatenate([t[t >= 0] for t in targets]), minlength=len(self.classes_))
        self.n_train_patches_ = int(counts.sum())
        if (counts > 0).sum() < 2:
            if self.single_class == "majority":
                self.single_class_ = int(counts.argmax())
                return self
            raise ValueError(self._single_class_message())
        self._standardisation(maps)
        self.net_ = self._train(maps, targets, counts)
        return self

    def _standardisation(self, maps: list[FeatureMap]) -> None:
        """Per-channel mean and std over every training cell (float64 sums, one pass per map)."""
        n = sum(fm.grid_shape[0] * fm.grid_shape[1] for fm in maps)
        total = sum(fm.flat().sum(axis=0, dtype=np.float64) for fm in maps)
        mean = total / n
        sq = sum(np.square(fm.flat() - mean.astype(np.float32), dtype=np.float32).sum(axis=0, dtype=np.float64)
                 for fm in maps)
        self.mean_ = mean.astype(np.float32)
        self.scale_ = (np.sqrt(sq / n) + 1e-6).astype(np.float32)

    def _class_weights(self, counts: np.ndarray) -> np.ndarray | None:
        w = class_weights_per_class(counts, self.class_weight)
        return None if w is None else w.astype(np.float32)

    def _train(self, maps: list[FeatureMap], targets: list[np.ndarray], counts: np.ndarray):
        import torch

        torch.manual_seed(int(self.seed))
        rng = np.random.default_rng(int(self.seed))
        k = len(self.classes_)
        net = _network(maps[0].feature_dim, int(self.channels), self.dilations, int(self.trunk_stride), k)
        cw = self._class_weights(counts)
        loss_fn = torch.nn.CrossEntropyLoss(weight=None if cw is None else torch.from_numpy(cw), ignore_index=-1,
                                            reduction="sum")
        opt = torch.optim.AdamW(net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(self.steps))
        sampler = _WindowSampler(maps, targets, int(self.crop), rng, bool(self.augment))
        mean, scale = torch.from_numpy(self.mean_), torch.from_numpy(self.scale_)
        net.train()
        for _ in range(int(self.steps)):
            x, y, stride = sampler.batch(int(self.batch_size))
            x = (torch.from_numpy(x) - mean) / scale
            logits = _to_pixels(net(x.permute(0, 3, 1, 2)), stride)
            yt = torch.from_numpy(y)
            n = max(int((yt >= 0).sum()), 1)
            opt.zero_grad()
            (loss_fn(logits, yt) / n).backward()
            opt.step()
            sched.step()
        net.eval()
        return net

    # ----------------------------------------------------------------- prediction
    def _grid_logits(self, fm: FeatureMap) -> np.ndarray:
        """(K, h, w) logits of a map, decoded tile by tile with the halo (equal to the whole-map result)."""
        import torch

        h, w = fm.grid_shape
        step = int(self.trunk_stride)
        t, halo = -(-int(self.tile) // step) * step, self.halo  # tiles and halo on the pooling grid
        out = np.empty((len(self.classes_), h, w), dtype=np.float32)
        with torch.inference_mode():
            for r0 in range(0, h, t):
                for c0 in range(0, w, t):
                    r1, c1 = min(r0 + t, h), min(c0 + t, w)
                    a0, b0 = max(r0 - halo, 0), max(c0 - halo, 0)
                    block = fm.features[a0 : min(r1 + halo, h), b0 : min(c1 + halo, w)]
                    x = (torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)) - torch.from_numpy(self.mean_)
                         ) / torch.from_numpy(self.scale_)
                    logits = self.net_(x.permute(2, 0, 1)[None])[0].numpy()
                    out[:, r0:r1, c0:c1] = logits[:, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
        return out

    def _tta_logits(self, fm: FeatureMap) -> np.ndarray:
        """(K, h, w) logits averaged over the square's 8 symmetries of the map (each turned back first)."""
        total = np.zeros((len(self.classes_), *fm.grid_shape), dtype=np.float32)
        for k in range(4):  # a loop over the 8 symmetries, each decoding the whole map
            for flip in (False, True):
                f = np.rot90(fm.features, k, axes=(0, 1))
                f = f[:, ::-1] if flip else f
                shape = tuple(fm.image_shape[::-1]) if k % 2 else tuple(fm.image_shape)
                turned = FeatureMap(np.ascontiguousarray(f), fm.stride, shape, fm.backbone, fm.weights)
                logits = self._grid_logits(turned)
                logits = logits[:, :, ::-1] if flip else logits
                total += np.rot90(logits, -k, axes=(1, 2))
        return total / 8.0

    def _map_proba(self, fm: FeatureMap, level: str) -> np.ndarray:
        import torch

        constant = getattr(self, "single_class_", None)
        shape = fm.image_shape if level == "pixel" else fm.grid_shape
        if constant is not None:
            out = np.zeros((*shape, len(self.classes_)), dtype=np.float32)
            out[..., constant] = 1.0
            return out
        logits = self._tta_logits(fm) if self.uses_tta else self._grid_logits(fm)
        if level == "pixel" and round(float(fm.stride)) > 1:
            logits = np.moveaxis(fm.to_pixels(np.moveaxis(logits, 0, -1)), -1, 0)
        proba = torch.softmax(torch.from_numpy(np.ascontiguousarray(logits)), dim=0).numpy()
        return np.ascontiguousarray(np.moveaxis(proba, 0, -1), dtype=np.float32)

    def predict_proba(self, feature_maps: Any, level: str = "pixel",
                      interpolation: str = "bilinear") -> np.ndarray | list[np.ndarray]:
        """Class probabilities: (H, W, K) per image at ``level="pixel"``, (h, w, K) at ``"patch"`` (the grid).

        At stride 1 both levels are the pixels. At stride ``s > 1`` the grid's logits are upsampled bilinearly
        to pixels before the softmax (as in training); ``interpolation`` is accepted for the common interface
        (``"nearest"`` is not what the decoder was trained for and is refused).
        """
        self._check_fitted()
        if level not in LEVELS:
            raise ValueError(f"level must be 'pixel' or 'patch', got {level!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        if interpolation != "bilinear":
            raise ValueError("the conv head upsamples its logits bilinearly (as it was trained); "
                             "use interpolation='bilinear'")
        single = isinstance(feature_maps, (FeatureMap, TiledFeatures))
        maps = _whole_maps(feature_maps)
        if not maps:
            raise ValueError("no feature maps to predict")
        self._check_maps(maps)
        for i, fm in enumerate(maps):
            self._integer_stride(fm, i)
        out = [self._map_proba(fm, level) for fm in maps]
        return out[0] if single else out

    # ----------------------------------------------------------------- persistence
    def _network_for_load(self):
        return _network(int(self.feature_dim_), int(self.channels), self.dilations, int(self.trunk_stride),
                        len(self.classes_))

    def _save_weights(self, folder: Path) -> list[str]:
        save_net(folder / _WEIGHTS, self.net_, self.mean_, self.scale_)
        return [_WEIGHTS]

    def _load_weights(self, folder: Path) -> None:
        net = self._network_for_load()
        self.mean_, self.scale_ = load_net(folder / _WEIGHTS, net)
        self.net_ = net


def _whole_maps(feature_maps: Any) -> list[FeatureMap]:
    """FeatureMaps of the input; :class:`~..dense.TiledFeatures` are materialised (the decoder convolves the map)."""
    return [fm.materialise() if isinstance(fm, TiledFeatures) else fm for fm in as_maps(feature_maps)]


def _to_pixels(logits, stride: int):
    """(B, K, h, w) grid logits → (B, K, h·s, w·s) pixel logits, bilinear with the grid's cell centres."""
    if stride == 1:
        return logits
    import torch.nn.functional as F

    return F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)


class _WindowSampler:
    """Training windows around random labelled pixels: features (B, S, S, C) and pixel targets (B, S·s, S·s).

    A window is ``crop`` grid cells square (or the whole grid, if smaller), placed so that a labelled pixel
    drawn uniformly from all training masks lies in it (sparse scribbles still fill every batch); pixels past
    the image (the grid's padding at stride > 1) are unlabelled.
    """

    def __init__(self, maps: list[FeatureMap], targets: list[np.ndarray], crop: int, rng: np.random.Generator,
                 augment: bool = False) -> None:
        self.maps, self.targets, self.rng, self.augment = maps, targets, rng, augment
        self.stride = round(float(maps[0].stride))
        self.size = min(crop, *(min(fm.grid_shape) for fm in maps))
        self.labelled = [np.flatnonzero(t.ravel() >= 0) for t in targets]
        sizes = np.array([lab.size for lab in self.labelled], dtype=np.float64)
        self.p_image = sizes / sizes.sum()

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        s, size = self.stride, self.size
        xs, ys = [], []
        for i in self.rng.choice(len(self.maps), size=n, p=self.p_image):
            fm, t = self.maps[i], self.targets[i]
            h, w = fm.grid_shape
            pr, pc = divmod(int(self.labelled[i][self.rng.integers(self.labelled[i].size)]), t.shape[1])
            r0 = int(np.clip(pr // s - self.rng.integers(size), 0, h - size))
            c0 = int(np.clip(pc // s - self.rng.integers(size), 0, w - size))
            xs.append(fm.features[r0 : r0 + size, c0 : c0 + size])
            y = np.full((size * s, size * s), -1, dtype=np.int64)
            part = t[r0 * s : (r0 + size) * s, c0 * s : (c0 + size) * s]
            y[: part.shape[0], : part.shape[1]] = part
            if self.augment:  # one of the 8 symmetries of the square, the same for features and labels
                k, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
                xs[-1], y = np.rot90(xs[-1], k, axes=(0, 1)), np.rot90(y, k)
                if flip:
                    xs[-1], y = xs[-1][:, ::-1], y[:, ::-1]
            ys.append(y)
        return np.stack(xs).astype(np.float32, copy=False), np.ascontiguousarray(np.stack(ys)), s
