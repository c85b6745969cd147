"""scikit-learn heads: logistic regression, an incrementally trained linear model, kNN and a random forest.

Each standardises features first (``StandardScaler``) because backbone channels differ in scale by orders of
magnitude (filter-bank responses, ViT activations). Weights are stored with joblib (scikit-learn's own
persistence); loading runs pickle, so only load heads you trust.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .base import SegmentationHead, as_maps

__all__ = ["GradientBoostingHead", "IncrementalLinearHead", "KNNHead", "LogisticHead", "RandomForestHead"]

_WEIGHTS = "model.joblib"


class _SklearnHead(SegmentationHead):
    """A head whose model is a scikit-learn pipeline built by :meth:`_estimator`."""

    def _estimator(self) -> Any:
        raise NotImplementedError

    def _fit_matrix(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> None:
        model = self._estimator()
        last = model.steps[-1][0]
        kw = {f"{last}__sample_weight": sample_weight} if sample_weight is not None else {}
        model.fit(X, y, **kw)
        self.model_ = model

    def _proba_matrix(self, X: np.ndarray) -> np.ndarray:
        p = self.model_.predict_proba(X)
        # The model knows only the class indices it saw in training patches; put them in their columns.
        out = np.zeros((X.shape[0], len(self.classes_)), dtype=np.float32)
        out[:, self.model_.classes_.astype(np.int64)] = p
        return out

    def _save_weights(self, folder: Path) -> list[str]:
        joblib.dump(self.model_, folder / _WEIGHTS)
        return [_WEIGHTS]

    def _load_weights(self, folder: Path) -> None:
        model = joblib.load(folder / _WEIGHTS)
        if not isinstance(model, Pipeline):
            raise ValueError(f"{_WEIGHTS} does not hold a scikit-learn pipeline")
        self.model_ = model


class LogisticHead(_SklearnHead):
    """Standardised features + multinomial logistic regression (lbfgs) — the report's head.

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    max_iter : int
        lbfgs iterations.
    label_rule, threshold, class_weight, seed, single_class, unlabelled, max_samples_per_class, n_components
        Keyword-only, common to every head (see :class:`SegmentationHead`).
    """

    kind = "logistic"

    def __init__(self, C: float = 1.0, max_iter: int = 1000,
                 *, label_rule: str = "argmax", threshold: float = 0.5, class_weight: str | None = None,
                 seed: int = 0, single_class: str = "error", unlabelled: int | None = None,
                 max_samples_per_class: int | None = None, n_components: int | None = None) -> None:
        super().__init__(label_rule=label_rule, threshold=threshold, class_weight=class_weight, seed=seed,
                         single_class=single_class, unlabelled=unlabelled,
                         max_samples_per_class=max_samples_per_class, n_components=n_components)
        self.C = C
        self.max_iter = max_iter

    def _estimator(self) -> Pipeline:
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter,
                                                                  random_state=self.seed))


class KNNHead(_SklearnHead):
    """Standardised features + k-nearest-neighbours vote (distance-weighted)."""

    kind = "knn"
    supports_class_weight = False

    def __init__(self, n_neighbors: int = 5,
                 *, label_rule: str = "argmax", threshold: float = 0.5, class_weight: str | None = None,
                 seed: int = 0, single_class: str = "error", unlabelled: int | None = None,
                 max_samples_per_class: int | None = None, n_components: int | None = None) -> None:
        super().__init__(label_rule=label_rule, threshold=threshold, class_weight=class_weight, seed=seed,
                         single_class=single_class, unlabelled=unlabelled,
                         max_samples_per_class=max_samples_per_class, n_components=n_components)
        self.n_neighbors = n_neighbors

    def _check_params(self) -> None:
        super()._check_params()
        if self.class_weight is not None:
            raise ValueError("the kNN head does not support class_weight; balance the training set instead")

    def _estimator(self) -> Pipeline:
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=self.n_neighbors, weights="distance"))

    def _fit_matrix(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> None:
        model = self._estimator()
        model.steps[-1][1].n_neighbors = min(self.n_neighbors, len(y))
        model.fit(X, y)
        self.model_ = model


class RandomForestHead(_SklearnHead):
    """A random forest on the raw features (trees are scale-invariant; the scaler is a no-op for them)."""

    kind = "rf"

    def __init__(self, n_estimators: int = 100, max_depth: int | None = 16, n_jobs: int = 1,
                 *, label_rule: str = "argmax", threshold: float = 0.5, class_weight: str | None = None,
                 seed: int = 0, single_class: str = "error", unlabelled: int | None = None,
                 max_samples_per_class: int | None = None, n_components: int | None = None) -> None:
        super().__init__(label_rule=label_rule, threshold=threshold, class_weight=class_weight, seed=seed,
                         single_class=single_class, unlabelled=unlabelled,
                         max_samples_per_class=max_samples_per_class, n_components=n_components)
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.n_jobs = n_jobs

    def _estimator(self) -> Pipeline:
        return make_pipeline(StandardScaler(), RandomForestClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth, n_jobs=self.n_jobs, random_state=self.seed))


class GradientBoostingHead(_SklearnHead):
    """scikit-learn's histogram gradient boosting (LightGBM-style binned trees): fast to train and to predict on
    CPU, the pixel head of choice for millions of positions.

    Parameters
    ----------
    max_iter : int
        Boosting rounds (one tree per class per round).
    learning_rate : float
        Shrinkage.
    max_leaf_nodes : int
        Leaves per tree.
    l2_regularization : float
        Leaf-value regularisation.
    label_rule, threshold, class_weight, seed, single_class, unlabelled, max_samples_per_class, n_components
        Keyword-only, common to every head (see :class:`SegmentationHead`).
    """

    kind = "hgb"

    def __init__(self, max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 l2_regularization: float = 0.0,
                 *, label_rule: str = "argmax", threshold: float = 0.5, class_weight: str | None = None,
                 seed: int = 0, single_class: str = "error", unlabelled: int | None = None,
                 max_samples_per_class: int | None = None, n_components: int | None = None) -> None:
        super().__init__(label_rule=label_rule, threshold=threshold, class_weight=class_weight, seed=seed,
                         single_class=single_class, unlabelled=unlabelled,
                         max_samples_per_class=max_samples_per_class, n_components=n_components)
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization

    def _estimator(self) -> Pipeline:
        # No scaler: binned trees do not care about feature scale. No early stopping: its validation split
        # would make the result depend on more than the seed and the budget.
        return make_pipeline(HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization, early_stopping=False, random_state=self.seed))


class IncrementalLinearHead(_SklearnHead):
    """A linear model trained by SGD in mini-batches (log loss), for training sets larger than memory.

    ``fit`` runs ``epochs`` passes over the given data in batches of ``batch_size`` patches;
    :meth:`partial_fit` takes one chunk of feature maps at a time (e.g. a few images loaded from disk), so the
    whole training set never has to be in memory. The scaler is updated incrementally too.
    """

    kind = "sgd"

    def __init__(self, alpha: float = 1e-4, epochs: int = 5, batch_size: int = 65536,
                 *, label_rule: str = "argmax", threshold: float = 0.5, class_weight: str | None = None,
                 seed: int = 0, single_class: str = "error", unlabelled: int | None = None,
                 max_samples_per_class: int | None = None, n_components: int | None = None) -> None:
        super().__init__(label_rule=label_rule, threshold=threshold, class_weight=class_weight, seed=seed,
                         single_class=single_class, unlabelled=unlabelled,
                         max_samples_per_class=max_samples_per_class, n_components=n_components)
        self.alpha = alpha
        self.epochs = epochs
        self.batch_size = batch_size

    def _estimator(self) -> Pipeline:
        return make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=self.alpha,
                                                             random_state=self.seed))

    def _partial(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None, first: bool) -> None:
        scaler, sgd = self.model_.steps[0][1], self.model_.steps[-1][1]
        classes = np.arange(len(self.classes_))
        if first:
            scaler.partial_fit(X)
        Xs = scaler.transform(X)
        sgd.partial_fit(Xs, y, classes=classes, sample_weight=sample_weight)

    def _fit_matrix(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> None:
        self.model_ = self._estimator()
        rng = np.random.default_rng(self.seed)
        for epoch in range(int(self.epochs)):
            order = rng.permutation(len(y))
            for s in range(0, len(y), int(self.batch_size)):
                idx = order[s : s + int(self.batch_size)]
                self._partial(X[idx], y[idx], None if sample_weight is None else sample_weight[idx], epoch == 0)

    def partial_fit(self, feature_maps: Any, masks: Sequence[np.ndarray], classes: Sequence[int] | None = None
                    ) -> IncrementalLinearHead:
        """Update the model with one chunk of images.

        The first call must name every label value in ``classes`` (a chunk need not contain them all).
        Class balancing (``class_weight="balanced"``) weighs each chunk by its own class counts.
        """
        self._check_params()
        if self.n_components is not None:
            raise ValueError("partial_fit cannot fit a PCA chunk by chunk; use n_components=None (or fit())")
        maps = as_maps(feature_maps)
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("the first partial_fit call needs classes=[...] (every label value)")
            cls = np.unique(np.asarray(classes, dtype=np.int64))
            if cls.size < 2:
                raise ValueError(f"classes must name at least two labels, got {cls.tolist()}")
            self.classes_ = cls
            X, y = self._patch_table_first(maps, masks)
            self.model_ = self._estimator()
            self.n_train_patches_ = 0
        else:
            X, y = self._patch_table(maps, list(masks))
        self._partial(X, y, self._weights(y), True)
        self.n_train_patches_ += int(y.size)
        return self

    def _patch_table_first(self, maps: list, masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # Fix the feature identity from the first chunk, then encode against the declared classes.
        self._record_identity(maps[0])
        return self._patch_table(maps, list(masks))
