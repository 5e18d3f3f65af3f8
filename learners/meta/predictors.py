"""Retention predictors (scikit-learn estimators) and their pickle-free persistence.

Two predictors map meta-features ⊕ policy encoding (:data:`~.history.INPUT_NAMES`) to accuracy retention:

* :class:`GBMRetentionPredictor` — gradient-boosted trees; saved as a JSON config and its fitted trees and
  isotonic maps as numeric arrays (``.npz``, read without pickle: :mod:`.trees`), loaded in milliseconds. A config
  without arrays (or one that focuses per task: ``similarity``) is refit from the shipped meta-dataset at load
  time (a few seconds for its ~12 500 rows).
* :class:`~.reptile.ReptilePredictor` — an MLP meta-trained with Reptile; saved as safetensors + JSON.

:func:`load_predictor` reads only those safe formats (JSON and safetensors; never pickle or joblib) and
:func:`load_default_predictor` loads the one ``experiments/build_metadataset.py`` chose on held-out tasks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from metacompress.spaces import ConfigError, invalid_value, unknown_key

from .history import INPUT_NAMES, MEASURED_NAMES, History, data_path
from .reptile import NaNInputs, ReptilePredictor, _check_xy
from .trees import ArrayIsotonic, ArrayTrees

__all__ = [
    "GBMRetentionPredictor",
    "ReptilePredictor",
    "PREDICTOR_KINDS",
    "make_predictor",
    "load_predictor",
    "save_predictor",
    "load_default_predictor",
    "default_kind",
    "pick_weight",
    "rows_digest",
    "FLYWHEEL_TREES",
]

#: Names accepted by :func:`make_predictor` and :func:`load_default_predictor`.
PREDICTOR_KINDS: tuple[str, ...] = ("gbm", "reptile")


class GBMRetentionPredictor(NaNInputs, RegressorMixin, BaseEstimator):
    """Gradient-boosted trees on meta-features ⊕ policy encoding (⊕ measured proxy) → accuracy retention.

    On rows of :data:`~.history.INPUT_NAMES` it fits one model per *tier*: one on the inputs a policy has before
    it is measured, one that also uses the measured proxy (:mod:`.proxy`), on the rows that recorded it, and one
    that uses the tuned proxy too, on the rows that recorded both. A row is predicted by the deepest tier whose
    measurements it has: a warm start scores its whole pool with the first, re-scores a measured shortlist with
    the second and its few best with the third. (One model trained on the rows twice, with and without the
    proxy, ranked worse than separate models on held-out tasks.) Other widths of ``X``: one model.

    Where the proxy is known, a prediction can blend the tier's model with its newest measurement itself,
    ``(1 - proxy_weight) * model + proxy_weight * calibrated proxy`` (the measurement mapped onto the scale of
    retention by an isotonic fit on the training rows): trees fit on a handful of tasks learn interactions of the
    proxy with the task's meta-features that do not all transfer, and the plain proxy ranks some new tasks better.
    For the untuned proxy, ``proxy_weight=0.5`` ranked held-out tasks better than the model alone but did not
    improve the warm start (``experiments/results/warmstart.md``), so its default is 0. For the tuned proxy the
    calibrated measurement alone (``tuned_weight=1``, the default) ranks better than its tier's trees on held-out
    zoo tasks (Spearman 0.837 against 0.779 zero-shot; 0.837 and 0.788 after 5 trials) and on 24 held-out
    synthetic tasks (0.892 against 0.877), its warm points are better calibrated (predicted minus real retention
    −0.011 against +0.040), and its warm start is level with theirs (cold TPE's hypervolume in a median of 3 and
    2.5 trials on seeds 0–4 and 5–9, reached in 90 % and 97 % of the runs, against 3 and 2.5, 97 % and 93 %).
    The trees still rank every candidate whose tuned proxy is not measured. :meth:`adapt` lets each
    measurement and its tier's model vote on the task's own finished trials (RGPE's ranking vote, Feurer et al.
    2018) and picks one of them for the task when the vote is decisive, so adaptation can change the ranking, not
    only shift it.

    With ``n_ensemble > 1``, that many models on bootstrap resamples of the tasks give :meth:`predict_std`.

    With ``target="rank"`` the trees fit each row's percentile rank within its task (:func:`within_task_rank`)
    instead of its retention, so no task weighs by the level or the spread of its retention, only by its order; a
    level model (trees from the task's meta-features and a rank to retention, rising in the rank) maps each
    prediction back onto the scale of retention the warm start needs, keeping the trees' order. On held-out zoo
    tasks its trees rank real trials better than the retention trees (Spearman 0.816 zero-shot and 0.815 after 5
    against 0.779 and 0.788, both deciding the tuned tier: ``tuned_weight=0``; breast-cancer 0.31 → 0.55) but its
    levels err more where it matters (its warm points over-optimistic by 0.059 against 0.040), and it did not
    improve the warm start (cold TPE's hypervolume in a median of 3.5 trials on seeds 0–4 and 5–9, reached in 100 %
    and 93 % of the runs, against 3 and 2.5, 97 % and 93 %; ``experiments/results/warmstart.md``), so the default
    stays ``"retention"``. (With the default ``tuned_weight=1`` the target only changes what the trees rank: the
    candidates whose tuned proxy is not measured.)

    With ``similarity`` set, :meth:`focus` refits the trees for one new task with each training task's rows weighted
    by a Gaussian kernel of its distance to the new task in meta-feature space (features standardized over the
    training tasks; the root mean squared difference, bandwidth ``similarity``, plus :data:`SIMILARITY_FLOOR` so
    that no task is ignored): a task unlike most of the history (the zoo's CNN among 77 synthetic MLPs) is then
    predicted mostly from the tasks like it. :func:`~.context.task_context` focuses a warm start's predictor when
    it has ``similarity``. On held-out zoo tasks ``similarity=1.0`` ranked real trials better (Spearman 0.73 against
    0.68) before the proxies were measured on validation rows, and level since (0.783 against 0.779); it did not
    improve the warm start (``experiments/results/warmstart.md``), so the default is None.

    Args:
        max_iter: Boosting iterations.
        learning_rate: Shrinkage.
        max_depth: Depth of each tree.
        min_samples_leaf: Rows per leaf at least.
        n_ensemble: Models in the ensemble (1: a single model, no uncertainty).
        proxy_weight: Weight of the calibrated proxy in a prediction where the proxy is known (0: the measured
            model alone) until :meth:`adapt` sets it from the task's trials.
        tuned_weight: The same for the calibrated tuned proxy where it is known too (the tuned tier; 1: the
            measurement alone).
        similarity: Bandwidth of the task kernel of :meth:`focus` (None: every task weighs the same).
        target: What the trees fit: ``"retention"`` itself, or ``"rank"``, its percentile rank within the row's
            task, mapped back onto retention by a level model (see above).
        warm_start: When fitted already (on rows of the same width, ``target="retention"``, no ``similarity``),
            :meth:`fit` keeps every model's trees and adds trees fit on the new rows' residuals until each has
            ``max_iter`` in all, and refits the isotonic maps, as scikit-learn's ``warm_start`` continues boosting:
            how a grown history updates the pretrained predictor in about a second instead of a refit
            (:data:`FLYWHEEL_TREES`). Otherwise a fit from scratch.
        random_state: Seed.
    """

    def __init__(self, max_iter: int = 300, learning_rate: float = 0.05, max_depth: int = 4,
                 min_samples_leaf: int = 10, n_ensemble: int = 1, proxy_weight: float = 0.0,
                 tuned_weight: float = 1.0, similarity: float | None = None, target: str = "retention",
                 warm_start: bool = False, random_state: int = 0) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.n_ensemble = n_ensemble
        self.proxy_weight = proxy_weight
        self.tuned_weight = tuned_weight
        self.similarity = similarity
        self.target = target
        self.warm_start = warm_start
        self.random_state = random_state

    def _model(self, seed: int, max_iter: int | None = None) -> Any:
        from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415

        return HistGradientBoostingRegressor(max_iter=max_iter or self.max_iter, learning_rate=self.learning_rate,
                                             max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                                             random_state=seed)

    def _ensemble(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, weight: np.ndarray | None = None
                  ) -> list[Any]:
        rng = np.random.default_rng(self.random_state)
        names = np.unique(groups)
        models = []
        for i in range(max(int(self.n_ensemble), 1)):
            if i == 0 or len(names) < 2:
                idx = np.arange(len(y))
            else:
                chosen = rng.choice(names, len(names), replace=True)
                idx = np.concatenate([np.flatnonzero(groups == g) for g in chosen])
            models.append(self._model(int(self.random_state) + i).fit(
                X[idx], y[idx], sample_weight=None if weight is None else weight[idx]))
        return models

    def _level_model(self, X: np.ndarray, rank: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> Any:
        """``target="rank"``: trees from (task meta-features, percentile rank within the task) to retention, rising
        in the rank (HistGradientBoosting's ``monotonic_cst``): each task's quantile function, told by its
        meta-features."""
        from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415

        n = self._feature_columns(X.shape[1])
        return HistGradientBoostingRegressor(
            max_iter=self.max_iter, learning_rate=self.learning_rate, max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf, monotonic_cst=[0] * n + [1], random_state=self.random_state,
        ).fit(np.column_stack([X[:, :n], rank]), y, sample_weight=weight)

    def _levels(self, X: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Raw tree outputs ``(n_models, n)`` on the scale of retention: themselves, or (``target="rank"``) the
        predicted ranks through the level model, ties broken by the rank itself, so the order is the rank's."""
        if self.target == "retention":
            return raw
        rank, n = np.clip(raw, 0.0, 1.0), self._feature_columns(X.shape[1])
        return np.array([self.levels_.predict(np.column_stack([X[:, :n], r])) + PROXY_TIE_BREAK * r for r in rank])

    @staticmethod
    def _feature_columns(n_columns: int) -> int:
        from .features import FEATURE_NAMES  # noqa: PLC0415

        return len(FEATURE_NAMES) if n_columns == len(INPUT_NAMES) else 0

    def _measured_columns(self, n_columns: int) -> int:
        return len(MEASURED_NAMES) if n_columns == len(INPUT_NAMES) else 0

    @staticmethod
    def _depth(X: np.ndarray, m: int) -> np.ndarray:
        """Per row, how many of the ``m`` measured columns are known in order (the proxy, then the tuned
        proxy): the tier that predicts it."""
        return np.cumprod(np.isfinite(X[:, X.shape[1] - m:]), axis=1).sum(1)  # m = 0: zeros

    @property
    def n_iter_(self) -> int:
        """Boosting rounds run (the most of the ensemble's models)."""
        return max(int(getattr(model, "n_iter_", 0)) for model in self.models_)

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> GBMRetentionPredictor:
        """Fit on rows ``X``, targets ``y``; ``groups`` (task of each row) drives the ensemble's resampling and
        :meth:`focus`; ``sample_weight`` weighs the rows (None: alike)."""
        from sklearn.isotonic import IsotonicRegression  # noqa: PLC0415

        X, y = _check_xy(self, X, y, fitting=True)
        for name in ("proxy_weight", "tuned_weight"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise invalid_value(name, "a number in [0, 1]", str(getattr(self, name)))
        if self.similarity is not None and not float(self.similarity) > 0.0:
            raise invalid_value("similarity", "a number > 0 or None", str(self.similarity))
        if self.target not in GBM_TARGETS:
            raise invalid_value("target", f"one of {', '.join(map(repr, GBM_TARGETS))}", repr(self.target))
        groups = np.zeros(len(y)) if groups is None else np.asarray(groups)
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weight is not None and (weight.shape != y.shape or not np.all(weight >= 0) or not weight.sum() > 0):
            raise invalid_value("sample_weight", f"{len(y)} non-negative weights, not all zero", str(weight.shape))
        if self._continues(X):
            return self._continue(X, y, groups, weight)
        self.rows_ = (X, y, groups) if self.similarity is not None else None  # what focus() refits on
        m = self._measured_columns(X.shape[1])
        base = X.shape[1] - m
        fitted = y if self.target == "retention" else within_task_rank(y, groups)
        self.levels_ = None if self.target == "retention" else self._level_model(X, fitted, y, weight)
        self.models_ = self._ensemble(X[:, :base], fitted, groups, weight)
        depth = self._depth(X, m)
        self.tiers_: list[tuple[list[Any], Any]] = []  # tier t: models on base + t measured columns, proxy map
        for t in range(1, m + 1):
            known = depth >= t
            # a tier needs enough rows of more than one task to learn how its measurement transfers
            if known.sum() < TIER_MIN_ROWS or len(np.unique(groups[known])) < 2:
                break
            w = None if weight is None else weight[known]
            models = self._ensemble(X[known][:, : base + t], fitted[known], groups[known], w)
            iso = IsotonicRegression(out_of_bounds="clip").fit(X[known, base + t - 1], y[known], sample_weight=w)
            self.tiers_.append((models, iso))
        self.n_features_in_ = X.shape[1]
        self.fit_digest_ = rows_digest(X, y, groups, weight)
        return self

    def _continues(self, X: np.ndarray) -> bool:
        """Whether :meth:`fit` continues the fitted trees (``warm_start``) rather than fitting afresh."""
        return bool(self.warm_start) and getattr(self, "n_features_in_", None) == X.shape[1] and \
            self.target == "retention" and self.similarity is None and getattr(self, "levels_", None) is None

    def _boosted(self, model: Any, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None, seed: int) -> Any:
        """``model`` with trees fit on the residuals of ``X``, ``y`` added, up to ``max_iter`` trees in all."""
        trees = _as_trees(model)
        extra = int(self.max_iter) - len(trees.roots)
        if extra <= 0:
            return trees
        more = self._model(seed, extra).fit(X, y - trees.predict(X), sample_weight=weight)
        return ArrayTrees.chain(trees, ArrayTrees.from_estimator(more))

    def _continue(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, weight: np.ndarray | None
                  ) -> GBMRetentionPredictor:
        """``warm_start``: every model boosted on the new rows, the isotonic maps refit on them (tiers the old fit
        did not have stay absent)."""
        from sklearn.isotonic import IsotonicRegression  # noqa: PLC0415

        m = self._measured_columns(X.shape[1])
        base, depth, seed = X.shape[1] - m, self._depth(X, m), int(self.random_state)
        self.models_ = [self._boosted(model, X[:, :base], y, weight, seed + i) for i, model in enumerate(self.models_)]
        tiers = []
        for t, (models, iso) in enumerate(self.tiers_, start=1):
            known = depth >= t
            if known.sum() >= TIER_MIN_ROWS:
                w = None if weight is None else weight[known]
                models = [self._boosted(model, X[known][:, : base + t], y[known], w, seed + i)
                          for i, model in enumerate(models)]
                iso = IsotonicRegression(out_of_bounds="clip").fit(X[known, base + t - 1], y[known], sample_weight=w)
            tiers.append((models, iso))
        self.tiers_, self.rows_ = tiers, None
        self.fit_digest_ = rows_digest(X, y, groups, weight)
        return self

    def task_weights(self, features: Any) -> dict[Any, float]:
        """The weight of each training task for a new task of meta-features ``features`` (a mapping with every
        :data:`~.features.FEATURE_NAMES` key, or the vector of them): see :meth:`focus`."""
        from .features import FEATURE_NAMES  # noqa: PLC0415

        if getattr(self, "rows_", None) is None:
            raise invalid_value("similarity", "set when the predictor was fit (focus needs its training rows)",
                                str(self.similarity))
        X, _, groups = self.rows_
        if X.shape[1] != len(INPUT_NAMES):
            raise invalid_value("X", f"rows of the {len(INPUT_NAMES)} INPUT_NAMES columns to focus", X.shape[1])
        target = np.asarray([features[k] for k in FEATURE_NAMES] if isinstance(features, Mapping) else features,
                            dtype=np.float64)
        names = np.unique(groups)
        F = np.array([X[groups == g, : len(FEATURE_NAMES)].mean(0) for g in names])
        scale = F.std(0)  # each meta-feature in units of its spread over the training tasks
        distance = np.sqrt(np.mean(((F - target) / np.where(scale > 1e-9, scale, 1.0)) ** 2, axis=1))
        kernel = np.exp(-0.5 * (distance / float(self.similarity)) ** 2) + SIMILARITY_FLOOR
        return dict(zip(names.tolist(), kernel.tolist()))

    def focus(self, features: Any) -> GBMRetentionPredictor:
        """A copy refit for one new task: each training task's rows weighted by :meth:`task_weights` (seconds).
        Without ``similarity`` the predictor itself."""
        if self.similarity is None:
            return self
        from sklearn.base import clone  # noqa: PLC0415

        X, y, groups = self.rows_
        weights = self.task_weights(features)
        out = clone(self).fit(X, y, groups, sample_weight=np.array([weights[g] for g in groups.tolist()]))
        out.task_weights_ = weights
        return out

    def _predictions(self, X: Any) -> np.ndarray:
        """``(n_ensemble, n)`` predictions, each row by the deepest tier whose measured columns it knows."""
        X, _ = _check_xy(self, X)
        m = self._measured_columns(X.shape[1])
        base = X.shape[1] - m
        out = self._levels(X, np.array([model.predict(X[:, :base]) for model in self.models_]))
        depth = np.minimum(self._depth(X, m), len(self.tiers_))
        for t in range(1, len(self.tiers_) + 1):
            rows = depth == t
            if rows.any():
                w = self._proxy_weight(t)
                proxy = self._calibrated_proxy(X[rows, base + t - 1], t)
                out[:, rows] = (1.0 - w) * self._tier(X[rows], t) + w * proxy
        return out

    def _tier(self, X: np.ndarray, t: int) -> np.ndarray:
        """``(n_models, n)`` predictions of tier ``t``'s models alone (on the scale of retention)."""
        base = X.shape[1] - self._measured_columns(X.shape[1])
        return self._levels(X, np.array([model.predict(X[:, : base + t]) for model in self.tiers_[t - 1][0]]))

    def _calibrated_proxy(self, proxy: np.ndarray, tier: int = 1) -> np.ndarray:
        """The tier's newest measurement on the scale of retention after fine-tuning: the training rows' isotonic
        map from one to the other (fine-tuning recovers much of what compression alone loses), ties broken by the
        measurement itself."""
        return self.tiers_[tier - 1][1].predict(proxy) + PROXY_TIE_BREAK * proxy

    def _proxy_weight(self, tier: int = 1) -> float:
        default = self.proxy_weight if tier == 1 else self.tuned_weight
        return float(getattr(self, "adapted_proxy_weights_", {}).get(tier, default))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted accuracy retention (the ensemble mean)."""
        return self._predictions(X).mean(0) + getattr(self, "offset_", 0.0)

    def adapt(self, X_task: Any, y_task: Any, steps: int | None = None) -> GBMRetentionPredictor:  # noqa: N803
        """Return a copy adapted to one task's finished trials.

        For each measured tier, with at least :data:`ADAPT_MIN_MEASURED` trials that recorded its measurements,
        its newest measurement (calibrated) and the tier's model vote: the share of :data:`ADAPT_BOOTSTRAPS`
        bootstrap resamples of those trials on which the measurement alone misorders fewer pairs than the model
        alone (ties split), as in RGPE's ranking-weighted ensemble (Feurer et al. 2018). A decisive vote (a share of
        at least :data:`ADAPT_DECISIVE` for one of them) *picks* that ranker for the task (weight 1 or 0); any other
        vote keeps the tier's prior weight (``proxy_weight``, ``tuned_weight``). The vote's share itself as the
        weight (before) blended the two, and a blend of a step-wise calibrated measurement with trees orders the
        rows inside each step by the trees: on 24 held-out synthetic tasks, after 5, 10, 20 and 40 of a task's
        trials, the blend ranks its other rows at 0.924, 0.924, 0.924, 0.923 in the tuned tier against the prior's
        0.933, 0.933, 0.932, 0.929 (worse by more than 0.02 on 3 tasks), the decisive pick at 0.932, 0.931, 0.931,
        0.929 (no task worse by 0.02): no rule beats the measurement there, even after 40 trials. In the proxy's
        tier the pick is level with the prior after 5 and gains after 20 and 40, where the blend also gains but is
        worse after 5 on 5 tasks (``experiments/bench_adapt.py``, ``experiments/results/adapt.md``). Then the
        predictions are shifted by the mean residual.
        ``adapted_votes_`` keeps each tier's share. ``steps`` is accepted for symmetry with
        :meth:`ReptilePredictor.adapt` and ignored.
        """
        X_task, y_task = _check_xy(self, X_task, y_task, adapting=True)
        out = copy.deepcopy(self)
        if not len(y_task):
            return out
        m = self._measured_columns(X_task.shape[1])
        base = X_task.shape[1] - m
        depth = self._depth(X_task, m)
        weights, votes = {}, {}
        for t in range(1, len(self.tiers_) + 1):
            known = depth >= t
            if known.sum() >= ADAPT_MIN_MEASURED:
                Xk, yk = X_task[known], y_task[known]
                votes[t] = _ranking_vote(self._tier(Xk, t).mean(0), self._calibrated_proxy(Xk[:, base + t - 1], t),
                                         yk, self.random_state)
                weights[t] = pick_weight(votes[t], self._proxy_weight(t))
        if weights:
            out.adapted_proxy_weights_, out.adapted_votes_ = weights, votes
        out.offset_ = 0.0
        out.offset_ = float(np.mean(y_task - out.predict(X_task)))
        return out

    def predict_std(self, X: Any) -> np.ndarray:
        """Spread of the ensemble's predictions (zeros for a single model)."""
        return self._predictions(X).std(0)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted models as named numeric arrays (:mod:`.trees`), for :func:`save_predictor`; see
        :meth:`from_arrays`. An adapted or focused copy saves what it was fit on, not its adaptation."""
        from sklearn.utils.validation import check_is_fitted  # noqa: PLC0415

        check_is_fitted(self, "models_")
        out: dict[str, np.ndarray] = {"layout": np.array(
            [len(self.models_), len(self.tiers_), int(self.levels_ is not None), self.n_features_in_])}
        for i, model in enumerate(self.models_):
            out |= _as_trees(model).arrays(f"m{i}.")
        for t, (models, iso) in enumerate(self.tiers_, start=1):
            for i, model in enumerate(models):
                out |= _as_trees(model).arrays(f"t{t}.m{i}.")
            out |= (iso if isinstance(iso, ArrayIsotonic) else ArrayIsotonic.from_estimator(iso)).arrays(f"t{t}.iso.")
        if self.levels_ is not None:
            out |= _as_trees(self.levels_).arrays("levels.")
        return out

    @classmethod
    def from_arrays(cls, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> GBMRetentionPredictor:
        """A fitted predictor of ``params`` from :meth:`to_arrays`' arrays (its trees predict exactly as the
        fitted ones did). It cannot :meth:`focus`: that refits on the training rows, which it does not keep.

        Raises:
            ConfigError: Missing or inconsistent arrays.
        """
        out = cls(**params)
        layout = np.asarray(arrays.get("layout", np.zeros(0)))
        if layout.shape != (4,) or layout.dtype.kind not in "iu" or (layout[:2] < 0).any():
            raise invalid_value("predictor", "a trees file with its layout (models, tiers, levels, width)",
                                str(layout))
        n_models, n_tiers, levels, width = (int(v) for v in layout)
        out.models_ = [ArrayTrees.from_arrays(arrays, f"m{i}.") for i in range(n_models)]
        out.tiers_ = [([ArrayTrees.from_arrays(arrays, f"t{t}.m{i}.") for i in range(n_models)],
                       ArrayIsotonic.from_arrays(arrays, f"t{t}.iso.")) for t in range(1, n_tiers + 1)]
        out.levels_ = ArrayTrees.from_arrays(arrays, "levels.") if levels else None
        out.rows_, out.n_features_in_ = None, width
        m = out._measured_columns(width)
        widths = [[tree.n_features_in_ for tree in out.models_]] + [
            [tree.n_features_in_ for tree in models] for models, _ in out.tiers_]
        if n_models < 1 or n_tiers > m or any(set(w) != {width - m + t} for t, w in enumerate(widths)):
            raise invalid_value("predictor", f"trees on the first {width - m}.. columns of {width}",
                                f"{n_models} models of widths {widths}")
        if out.levels_ is not None and out.levels_.n_features_in_ != out._feature_columns(width) + 1:
            raise invalid_value("predictor", f"a level model on {out._feature_columns(width) + 1} columns",
                                str(out.levels_.n_features_in_))
        return out


#: Rows with a tier's measurements that the tier's models need before a fit (or a continued fit) learns from them.
TIER_MIN_ROWS = 50
#: What :class:`GBMRetentionPredictor`'s trees can fit (its ``target``).
GBM_TARGETS = ("retention", "rank")
#: Boosting iterations a grown history adds to the pretrained GBM's ``max_iter`` (300): ``warm_start`` then fits
#: each model that many more trees on the history's residuals (more for a model whose fit stopped early).
FLYWHEEL_TREES = 50
#: Weight every training task keeps in :meth:`GBMRetentionPredictor.focus`, however far from the new task.
SIMILARITY_FLOOR = 0.02
#: Slope of the raw proxy added to its calibrated value (breaks the isotonic map's ties, keeps its order).
PROXY_TIE_BREAK = 1e-3
#: Trials with a measured proxy needed before :meth:`GBMRetentionPredictor.adapt` re-weighs the proxy.
ADAPT_MIN_MEASURED = 3
#: Bootstrap resamples of the task's trials behind that weight.
ADAPT_BOOTSTRAPS = 256
#: Share of those resamples by which one ranker must win the vote before :meth:`GBMRetentionPredictor.adapt` picks it.
ADAPT_DECISIVE = 0.8
#: Rows per resample at most (a search with a long history of its task adapts in well under a second).
ADAPT_VOTE_ROWS = 128


def rows_digest(X: np.ndarray, y: np.ndarray, groups: Any, weight: np.ndarray | None = None) -> str:
    """SHA-256 of a fit's rows (inputs, targets, tasks, weights): which data a saved predictor learned from."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(X, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64)):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update("\x1f".join(map(str, np.asarray(groups).tolist())).encode())
    if weight is not None:
        h.update(np.ascontiguousarray(weight, dtype=np.float64).tobytes())
    return h.hexdigest()


def within_task_rank(y: Any, groups: Any) -> np.ndarray:
    """Each row's percentile rank of ``y`` among the rows of its group, ``(rank - 0.5) / n`` (ties averaged)."""
    from scipy.stats import rankdata  # noqa: PLC0415

    y, groups = np.asarray(y, dtype=np.float64), np.asarray(groups)
    out = np.empty_like(y)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = (rankdata(y[rows]) - 0.5) / rows.sum()
    return out


def _misordered(score: np.ndarray, y: np.ndarray) -> float:
    """Pairs of rows that ``score`` orders against ``y`` (a tie in ``score`` only, half a pair)."""
    ds, dy = score[:, None] - score[None, :], y[:, None] - y[None, :]
    return float(((ds * dy) < 0).sum() + 0.5 * ((ds == 0) & (dy != 0)).sum()) / 2.0


def _ranking_vote(model: np.ndarray, proxy: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Share of bootstrap resamples on which the proxy ranks ``y`` better than the model (ties: half each)."""
    rng = np.random.default_rng(seed)
    n = min(len(y), ADAPT_VOTE_ROWS)  # resamples of this size: pairs grow as n², and the vote is decided by then
    votes = 0.0
    for _ in range(ADAPT_BOOTSTRAPS):
        idx = rng.integers(0, len(y), n)
        loss_model, loss_proxy = _misordered(model[idx], y[idx]), _misordered(proxy[idx], y[idx])
        votes += 1.0 if loss_proxy < loss_model else 0.5 if loss_proxy == loss_model else 0.0
    return votes / ADAPT_BOOTSTRAPS


def pick_weight(vote: float, prior: float, decisive: float = ADAPT_DECISIVE) -> float:
    """The weight of a measurement after a vote in which it won the share ``vote`` of the resamples against the
    model: 1 (the measurement) or 0 (the model) when one of them wins at least ``decisive`` of them, else
    ``prior``."""
    if vote >= decisive:
        return 1.0
    if 1.0 - vote >= decisive:
        return 0.0
    return float(prior)


def _as_trees(model: Any) -> ArrayTrees:
    return model if isinstance(model, ArrayTrees) else ArrayTrees.from_estimator(model)


def make_predictor(kind: str, **params: Any) -> GBMRetentionPredictor | ReptilePredictor:
    """A new unfitted predictor of ``kind`` (one of :data:`PREDICTOR_KINDS`)."""
    if kind == "gbm":
        return GBMRetentionPredictor(**params)
    if kind == "reptile":
        return ReptilePredictor(**params)
    raise unknown_key("predictor", str(kind), PREDICTOR_KINDS)


def save_predictor(predictor: Any, path: str | Path) -> Path:
    """Save without pickle; returns the JSON config path.

    A Reptile predictor writes ``<stem>.safetensors`` + ``<stem>.json``; a fitted GBM ``<stem>.npz`` (its trees
    and isotonic maps as arrays: :meth:`GBMRetentionPredictor.to_arrays`) + ``<stem>.json`` (its params and the
    digest of the rows it was fit on); an unfitted GBM, or one that focuses per task (``similarity``: that needs
    its training rows), only the JSON, and loading refits it on the shipped meta-dataset.
    """
    stem = Path(path).with_suffix("")
    if isinstance(predictor, ReptilePredictor):
        predictor.save(stem, INPUT_NAMES)
    elif isinstance(predictor, GBMRetentionPredictor):
        config: dict[str, Any] = {"class": "GBMRetentionPredictor", "params": predictor.get_params(),
                                  "input_names": list(INPUT_NAMES), "fit_on": "shipped"}
        if hasattr(predictor, "models_") and predictor.similarity is None:
            np.savez_compressed(stem.with_suffix(".npz"), **predictor.to_arrays())
            config |= {"fit_on": "saved", "trees": stem.with_suffix(".npz").name,
                       "fit_digest": getattr(predictor, "fit_digest_", None)}
        stem.with_suffix(".json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    else:
        raise invalid_value("predictor", "a GBMRetentionPredictor or ReptilePredictor", type(predictor).__name__)
    return stem.with_suffix(".json")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_value("predictor", "a readable JSON predictor config", f"{path} ({type(exc).__name__})") \
            from None
    if not isinstance(config, dict) or config.get("class") not in ("GBMRetentionPredictor", "ReptilePredictor"):
        raise invalid_value("predictor", "a config with class GBMRetentionPredictor or ReptilePredictor", str(path))
    if config.get("input_names") != list(INPUT_NAMES):
        raise invalid_value("predictor", "a predictor of this meta-feature/encoding version", str(path))
    return config


def load_predictor(path: str | Path) -> GBMRetentionPredictor | ReptilePredictor:
    """Load a predictor saved by :func:`save_predictor`, from safe formats only.

    Args:
        path: The ``.json`` config, or the ``.safetensors`` / ``.npz`` arrays (the config must sit next to them).

    Raises:
        ConfigError: Another extension (pickle, joblib, torch ``.pt`` ... are refused), an unreadable or foreign
            file, or a predictor of another input version.
    """
    path = Path(path)
    if path.suffix not in (".json", ".safetensors", ".npz"):
        raise invalid_value("predictor", "a .json, .safetensors or .npz file (pickle is never loaded)", str(path))
    config = _read_config(path.with_suffix(".json"))
    params = dict(config.get("params", {}))
    if config["class"] == "GBMRetentionPredictor":
        if config.get("trees") and params.get("similarity") is None:
            return _load_trees(path.parent, str(config["trees"]), params, config.get("fit_digest"))
        history = History.shipped()
        if not len(history):
            raise invalid_value("predictor", "a shipped meta-dataset to refit the GBM on", history.explain())
        return GBMRetentionPredictor(**params).fit(history.X(), history.y(), history.groups())
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    try:
        tensors = load_file(str(path.with_suffix(".safetensors")))
    except (OSError, SafetensorError) as exc:
        raise invalid_value("predictor", "a valid safetensors file", f"{path} ({exc})") from None
    params["hidden"] = tuple(params.get("hidden", (64, 64)))
    try:
        return ReptilePredictor.from_state(params, tensors)
    except (KeyError, RuntimeError, TypeError) as exc:
        raise invalid_value("predictor", "weights matching the config", f"{path} ({exc})") from None


def _load_trees(folder: Path, name: str, params: Mapping[str, Any], digest: Any) -> GBMRetentionPredictor:
    """The GBM saved as arrays in ``folder / name`` (``np.load`` with ``allow_pickle=False``: an object array is
    refused)."""
    if not name.endswith(".npz") or Path(name).name != name or name in (".", ".."):
        raise invalid_value("predictor", "trees in an .npz file next to the config", name)
    path = folder / name
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # missing, damaged, or pickled arrays
        raise invalid_value("predictor", "a readable .npz of numeric arrays", f"{path} ({exc})") from None
    try:
        predictor = GBMRetentionPredictor.from_arrays(params, arrays)
    except TypeError as exc:  # params this class does not take
        raise invalid_value("predictor", "params of GBMRetentionPredictor", f"{path} ({exc})") from None
    predictor.fit_digest_ = digest
    return predictor


def default_kind() -> str:
    """The predictor kind the shipped build chose (``data/predictor.json``: the one whose warm starts won on
    held-out tasks; ``"gbm"`` if unknown)."""
    try:
        kind = json.loads(data_path("predictor.json").read_text(encoding="utf-8"))["default"]
    except (OSError, ValueError, KeyError, TypeError):
        return "gbm"
    return kind if kind in PREDICTOR_KINDS else "gbm"


def load_default_predictor(kind: str | None = None) -> GBMRetentionPredictor | ReptilePredictor:
    """The pretrained predictor shipped with the package.

    Args:
        kind: ``"gbm"``, ``"reptile"``, or None for the one that won on held-out tasks (``data/predictor.json``).

    Raises:
        ConfigError: Unknown kind, or the package ships no meta-dataset/predictor.
    """
    kind = default_kind() if kind is None else kind
    if kind not in PREDICTOR_KINDS:
        raise unknown_key("predictor", str(kind), PREDICTOR_KINDS)
    path = data_path(f"{kind}.json")
    if not path.is_file():
        raise ConfigError(f"The 'predictor' value must be a shipped predictor. Got no file {path.name}.",
                          field="predictor")
    return load_predictor(path)
