"""The pictures behind the report's numbers: example predictions and what each backbone's features see.

:func:`collect_examples` reruns no experiment: it reuses the suite's data (:func:`suite_datasets`), its
backbones (:func:`build_backbone`), its heads (``FeatureStore.head``) and, when given, the suite's
:class:`FeatureStore`, so every feature map and fitted head comes from the cache the suite filled. The
pictures are drawn by ``report.figures``; this module only computes what they show.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..features import FeatureMap
from ..labels import patch_labels
from ..metrics import binary_f1
from .pipeline import FeatureStore
from .suite import SuiteConfig, build_backbone, suite_datasets

__all__ = ["collect_examples", "pca_rgb"]


def pca_rgb(fm: FeatureMap, percentile: float = 1.0) -> np.ndarray:
    """The first three principal components of a feature map as an (h, w, 3) RGB image in [0, 1].

    Each component is scaled between its ``percentile`` and ``100 - percentile`` percentiles, so one
    outlier patch does not wash out the picture. The components' signs are fixed (largest loading positive)
    so the colours do not flip between runs.
    """
    from sklearn.decomposition import PCA

    X = fm.flat().astype(np.float64)
    k = min(3, X.shape[0], X.shape[1])
    comps = PCA(n_components=k, svd_solver="full").fit(X)
    signs = np.sign(comps.components_[np.arange(k), np.abs(comps.components_).argmax(axis=1)])
    Y = comps.transform(X) * np.where(signs == 0, 1.0, signs)
    if k < 3:
        Y = np.concatenate([Y, np.zeros((Y.shape[0], 3 - k))], axis=1)
    lo, hi = np.percentile(Y, [percentile, 100 - percentile], axis=0)
    rgb = np.clip((Y - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    return rgb.reshape(*fm.grid_shape, 3)


def collect_examples(
    config: SuiteConfig, store: FeatureStore | None = None, index: int = 0, pca_modality: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Example segmentations and PCA pictures for every backbone of a suite.

    Parameters
    ----------
    config : SuiteConfig
        The suite whose data, backbones, head and labelling rule are used.
    store : FeatureStore, optional
        The store the suite ran with; features are then not extracted again.
    index : int
        Which test image of each modality to show.
    pca_modality : str, optional
        Modality of the one image every backbone's PCA picture is computed on (default: the first).

    Returns
    -------
    dict
        ``{"overlays": [...], "pca": [...]}``. An overlay has ``backbone``, ``weights``, ``modality``,
        ``head``, ``image``, ``mask`` (pixel ground truth, bool), ``patch_labels`` (the (h, w) labels the
        tables score, by the suite's label rule), ``patch_prediction`` (the head's (h, w) predictions — the
        ones the tables score), ``prediction`` (those predictions painted onto their pixels, bool),
        ``stride``, and this image's ``patch_f1`` and ``pixel_dice``. A PCA entry has ``backbone``,
        ``weights``, ``modality``, ``image`` and ``rgb`` (h, w, 3).
    """
    if not 0 <= index < config.n_test:
        raise ValueError(f"index must be in [0, {config.n_test}), got {index}")
    pca_modality = pca_modality or config.modalities[0]
    if pca_modality not in config.modalities:
        raise ValueError(f"pca_modality {pca_modality!r} is not one of {', '.join(config.modalities)}")
    store = store if store is not None else FeatureStore()
    data = suite_datasets(config)
    overlays, pcas = [], []
    for name in config.backbones:
        bb = build_backbone(config, name)
        for m in config.modalities:
            te_images, te_masks = data[m]["test"]
            model = store.head(bb, f"{m}/train", data[m]["train"], config.head, config.label_rule, config.seed)
            fm = store.get(bb, f"{m}/test", te_images)[index]
            grid = model.predict(fm, level="patch") > 0
            labels = patch_labels(te_masks[index], round(fm.stride), rule=config.label_rule) > 0
            mask = np.asarray(te_masks[index]) > 0
            painted = model.predict(fm, level="pixel", interpolation="nearest") > 0
            overlays.append(
                {
                    "backbone": bb.name,
                    "weights": bb.weights,
                    "modality": m,
                    "head": model.fitted_kind,
                    "image": np.asarray(te_images[index]),
                    "mask": mask,
                    "patch_labels": labels,
                    "patch_prediction": grid,
                    "prediction": painted,
                    "stride": float(fm.stride),
                    "patch_f1": binary_f1(labels.astype(np.int64), grid.astype(np.int64)),
                    "pixel_dice": binary_f1(mask.astype(np.int64), painted.astype(np.int64)),
                }
            )
            if m == pca_modality:
                pcas.append(
                    {
                        "backbone": bb.name,
                        "weights": bb.weights,
                        "modality": m,
                        "image": np.asarray(te_images[index]),
                        "rgb": pca_rgb(fm),
                    }
                )
    return {"overlays": overlays, "pca": pcas}
