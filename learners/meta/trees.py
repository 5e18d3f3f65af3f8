"""Fitted trees and isotonic maps as plain arrays: saved and loaded without pickle, evaluated in numpy.

:class:`GBMRetentionPredictor <.predictors.GBMRetentionPredictor>` fits scikit-learn's
``HistGradientBoostingRegressor`` and ``IsotonicRegression``. To ship it fitted (a warm start then loads it in
milliseconds instead of refitting it for seconds) each fitted model becomes a few numeric arrays:

* :class:`ArrayTrees` — a boosted ensemble of numeric-split trees: one flat table of nodes (feature, threshold,
  where a missing value goes, children, leaf value) and each tree's root, plus the baseline. It predicts exactly
  as the estimator did: a row goes left where its feature is ``<=`` the threshold, a missing value the way the
  fit sent missing values, and the prediction is the baseline plus each tree's leaf value, added in tree order.
* :class:`ArrayIsotonic` — an isotonic map's breakpoints, interpolated linearly and clipped at its ends.

The arrays go into an ``.npz`` read with ``allow_pickle=False`` and checked (shapes, dtypes, child indices in
range, a forest: no node reached from two places) before use, so a foreign or damaged file is refused with one
line, never executed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from metacompress.spaces import invalid_value

__all__ = ["ArrayIsotonic", "ArrayTrees"]

#: Deepest trees :class:`ArrayTrees` lays out as complete binary trees (deeper ones predict one tree at a time).
COMPLETE_MAX_DEPTH = 10
#: Rows per block of :meth:`ArrayTrees.predict`.
PREDICT_CHUNK = 256


class ArrayTrees:
    """A fitted ``HistGradientBoostingRegressor`` (squared error, numeric features) as arrays; ``predict`` only.

    Args:
        baseline: The ensemble's constant start.
        roots: Index of each tree's root in the node table, in boosting order.
        feature, threshold, missing_left, left, right, is_leaf, value: The node table (one entry per node).
        n_features: Width of the rows it predicts.
    """

    FIELDS = ("roots", "feature", "threshold", "missing_left", "left", "right", "is_leaf", "value")

    def __init__(self, baseline: float, roots: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 missing_left: np.ndarray, left: np.ndarray, right: np.ndarray, is_leaf: np.ndarray,
                 value: np.ndarray, n_features: int) -> None:
        self.baseline = float(baseline)
        self.roots = np.asarray(roots, dtype=np.int64)
        self.feature = np.asarray(feature, dtype=np.int64)
        self.threshold = np.asarray(threshold, dtype=np.float64)
        self.missing_left = np.asarray(missing_left, dtype=bool)
        self.left = np.asarray(left, dtype=np.int64)
        self.right = np.asarray(right, dtype=np.int64)
        self.is_leaf = np.asarray(is_leaf, dtype=bool)
        self.value = np.asarray(value, dtype=np.float64)
        self.n_features_in_ = int(n_features)
        self._check()
        # how many splits the deepest path takes (the number of steps predict needs)
        self._steps = self._max_depth()
        self._layout = self._complete() if self._steps <= COMPLETE_MAX_DEPTH else None

    @classmethod
    def from_estimator(cls, model: Any) -> ArrayTrees:
        """The arrays of a fitted ``HistGradientBoostingRegressor`` (squared error, no categorical splits)."""
        trees = [stage[0] for stage in model._predictors]  # one tree per iteration for a regressor
        tables = [tree.nodes for tree in trees]
        if any(t["is_categorical"].any() for t in tables):
            raise invalid_value("predictor", "trees with numeric splits only", "a categorical split")
        sizes = np.array([len(t) for t in tables], dtype=np.int64)
        offsets = np.cumsum(sizes) - sizes  # each tree's first node in the flat table
        nodes = np.concatenate(tables)  # a fitted estimator has at least one tree
        shift = np.repeat(offsets, sizes)
        leaf = nodes["is_leaf"].astype(bool)
        # a leaf's children are 0 in the table: keep them pointing at the leaf itself
        left = np.where(leaf, np.arange(len(nodes)), nodes["left"].astype(np.int64) + shift)
        right = np.where(leaf, np.arange(len(nodes)), nodes["right"].astype(np.int64) + shift)
        return cls(float(np.ravel(model._baseline_prediction)[0]), offsets, nodes["feature_idx"],
                   nodes["num_threshold"], nodes["missing_go_to_left"], left, right, leaf, nodes["value"],
                   model.n_features_in_)

    @classmethod
    def chain(cls, first: ArrayTrees, then: ArrayTrees) -> ArrayTrees:
        """One ensemble of ``first``'s trees followed by ``then``'s (continued boosting): it predicts the sum."""
        if first.n_features_in_ != then.n_features_in_:
            raise invalid_value("X", f"trees of {first.n_features_in_} columns", then.n_features_in_)
        n = len(first.value)  # ``then``'s node indices move past ``first``'s nodes
        fields = {f: np.concatenate([getattr(first, f), getattr(then, f) + n if f in ("roots", "left", "right")
                                     else getattr(then, f)]) for f in cls.FIELDS}
        return cls(first.baseline + then.baseline, **fields, n_features=first.n_features_in_)

    def _check(self) -> None:
        n = len(self.value)
        sizes = {len(getattr(self, f)) for f in self.FIELDS if f != "roots"}
        problem = None
        if sizes != {n}:
            problem = "node arrays of different lengths"
        elif n and (self.left.min() < 0 or self.left.max() >= n or self.right.min() < 0 or self.right.max() >= n):
            problem = "a child index outside the node table"
        elif len(self.roots) and (self.roots.min() < 0 or self.roots.max() >= max(n, 1)):
            problem = "a root index outside the node table"
        elif n and ((self.feature[~self.is_leaf] < 0).any() or (self.feature[~self.is_leaf] >=
                                                                 self.n_features_in_).any()):
            problem = f"a split on a feature outside 0..{self.n_features_in_ - 1}"
        elif not (np.isfinite(self.value).all() and np.isfinite(self.baseline)):
            problem = "a leaf value that is not finite"
        else:  # a forest: no node is the child of two splits, nor a root and a child (what keeps predict bounded)
            children = np.concatenate([self.left[~self.is_leaf], self.right[~self.is_leaf]])
            if len(np.unique(children)) != len(children) or np.isin(self.roots, children).any():
                problem = "a node reached from two places (not a forest)"
        if problem is not None:
            raise invalid_value("predictor", "trees whose arrays are consistent", problem)

    def _max_depth(self) -> int:
        node, steps = self.roots.copy(), 0
        while len(node) and not self.is_leaf[node].all():
            inner = node[~self.is_leaf[node]]
            node = np.concatenate([self.left[inner], self.right[inner]])
            steps += 1  # a forest (checked): every step goes one level down, so this ends
        return steps

    def _complete(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every tree as a complete binary tree of ``_steps`` levels (a leaf above the last level becomes splits
        that send every row left, down to copies of its value), one row per tree: split ``j`` of level ``d`` at
        column ``2**d - 1 + j``, leaf ``j`` at column ``j``. Then all trees descend together, one level a step."""
        n_trees, width = len(self.roots), 2 ** self._steps
        feature = np.zeros((n_trees, width - 1), dtype=np.int64)
        threshold = np.full((n_trees, width - 1), np.inf)
        missing_left = np.ones((n_trees, width - 1), dtype=bool)
        value = np.zeros((n_trees, width))
        for t, root in enumerate(self.roots):
            stack = [(int(root), 0, 0)]  # node, level, position in the level
            while stack:
                node, level, pos = stack.pop()
                if level == self._steps:
                    value[t, pos] = self.value[node]
                    continue
                k = 2 ** level - 1 + pos
                if self.is_leaf[node]:  # x <= inf, and a missing value goes left: both halves carry the leaf
                    stack += [(node, level + 1, 2 * pos), (node, level + 1, 2 * pos + 1)]
                    continue
                feature[t, k], threshold[t, k] = self.feature[node], self.threshold[node]
                missing_left[t, k] = self.missing_left[node]
                stack += [(int(self.left[node]), level + 1, 2 * pos), (int(self.right[node]), level + 1, 2 * pos + 1)]
        return feature.ravel(), threshold.ravel(), missing_left.ravel(), value.ravel()

    def predict(self, X: Any) -> np.ndarray:
        """The ensemble's prediction for each row of ``X`` (``n_features_in_`` columns; NaN = missing)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise invalid_value("X", f"rows of {self.n_features_in_} columns", str(X.shape))
        if self._layout is None:
            return self._predict_by_tree(X)
        feature, threshold, missing_left, value = self._layout
        n_trees, width = len(self.roots), 2 ** self._steps
        splits, leaves = np.arange(n_trees) * (width - 1), np.arange(n_trees) * width
        out = np.empty(len(X))
        for start in range(0, len(X), PREDICT_CHUNK):  # (rows, trees) blocks that stay in cache
            chunk = np.ascontiguousarray(X[start: start + PREDICT_CHUNK])
            flat, row = chunk.ravel(), (np.arange(len(chunk)) * chunk.shape[1])[:, None]
            pos = np.zeros((len(chunk), n_trees), dtype=np.int64)
            for level in range(self._steps):
                k = splits + (2 ** level - 1) + pos
                x = flat[row + feature[k]]
                go_left = np.where(np.isnan(x), missing_left[k], x <= threshold[k])
                pos = 2 * pos + ~go_left
            # the baseline, then each tree's leaf in boosting order: the estimator's own sum, bit for bit
            terms = np.concatenate([np.full((len(chunk), 1), self.baseline), value[leaves + pos]], axis=1)
            out[start: start + PREDICT_CHUNK] = np.cumsum(terms, axis=1)[:, -1]
        return out

    def _predict_by_tree(self, X: np.ndarray) -> np.ndarray:
        """Deep trees (no complete layout): one tree at a time."""
        out = np.full(len(X), self.baseline)
        rows = np.arange(len(X))
        for root in self.roots:
            node = np.full(len(X), root)
            for _ in range(self._steps):
                x = X[rows, self.feature[node]]
                go_left = np.where(np.isnan(x), self.missing_left[node], x <= self.threshold[node])
                node = np.where(go_left, self.left[node], self.right[node])  # a leaf points at itself
            out += self.value[node]
        return out

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays to save, each name under ``prefix``."""
        out = {f"{prefix}{f}": getattr(self, f) for f in self.FIELDS}
        out[f"{prefix}meta"] = np.array([self.baseline, float(self.n_features_in_)])
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> ArrayTrees:
        """The trees saved by :meth:`arrays` under ``prefix``."""
        meta = _get(arrays, f"{prefix}meta", 2)
        n_features = meta[1]
        if not (np.isfinite(n_features) and n_features == int(n_features) and n_features >= 1):
            raise invalid_value("predictor", "trees with a positive number of features", str(n_features))
        return cls(meta[0], *(_get(arrays, f"{prefix}{f}") for f in cls.FIELDS), n_features=int(n_features))


class ArrayIsotonic:
    """A fitted ``IsotonicRegression(out_of_bounds="clip")`` as its breakpoints; ``predict`` only."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        if self.x.ndim != 1 or self.x.shape != self.y.shape or not len(self.x) or \
                not (np.isfinite(self.x).all() and np.isfinite(self.y).all()) or (np.diff(self.x) < 0).any():
            raise invalid_value("predictor", "an isotonic map of sorted, finite breakpoints", f"{len(self.x)} points")

    @classmethod
    def from_estimator(cls, model: Any) -> ArrayIsotonic:
        return cls(model.X_thresholds_, model.y_thresholds_)

    def predict(self, x: Any) -> np.ndarray:
        return np.interp(np.asarray(x, dtype=np.float64), self.x, self.y)  # constant beyond the ends

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}x": self.x, f"{prefix}y": self.y}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> ArrayIsotonic:
        return cls(_get(arrays, f"{prefix}x"), _get(arrays, f"{prefix}y"))


def _get(arrays: Mapping[str, np.ndarray], name: str, size: int | None = None) -> np.ndarray:
    if name not in arrays:
        raise invalid_value("predictor", "a trees file with every array of the predictor", f"no {name!r}")
    a = np.asarray(arrays[name])
    if a.ndim != 1 or a.dtype.kind not in "biuf" or (size is not None and a.shape != (size,)):
        raise invalid_value("predictor", "a trees file of 1-D numeric arrays", f"{name!r}: {a.dtype} {a.shape}")
    return a
