"""Warm start as a batch: score a large candidate pool and choose k diverse points before anything runs.

:func:`propose` scores ``n_candidates`` space-filling points of the space with a retention predictor and the exact
size of :class:`~.size.SizeModel` and takes the best predicted point in each of ``k`` log-size bins (or ``k``
points spread along the predicted Pareto set); the best candidates of each bin are measured first (the proxy of
:mod:`.proxy`, milliseconds each) and re-scored with it; on request (``tuned``) the best few of each bin get
their tuned proxy too (at most half of a trial's fine-tuning each) and are re-scored again.
:func:`warm_start_points` does everything from a space and a task: it reads the history, loads or fits a predictor
(:func:`~.context.task_context`), computes the task's meta-features, and explains itself in one line.
``metacompress suggest`` shows this batch; a search chooses its points one at a time against the observed front
instead (:mod:`.sequential`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metacompress.spaces import CompressionSpace, LayerInfo, invalid_value

from .context import task_context
from .encoding import encode_arrays
from .history import INPUT_NAMES, MEASURED_NAMES, History
from .pool import CandidatePool
from .proxy import PROXY_NAME, TUNED_PROXY_NAME, ProxyProbe
from .size import SizeModel

__all__ = [
    "Proposal", "hypervolume_order", "pool_inputs", "propose", "propose_for_task", "pareto_indices",
    "spread_along", "warm_start_points",
]

#: The largest size the hedged bins reach, as a share of the teacher's size.
HEDGE_MAX_SIZE = 0.5
#: Candidates of each hedged bin whose proxy a warm start measures (``propose(shortlist=None)``).
PROBE_SHORTLIST = 12
#: Of each bin's measured best, how many the batch gives the tuned proxy too by default: none. The sequential warm
#: start measures it on its 3 best per step (:data:`~.sequential.TUNED_SHORTLIST`), but the batch measuring it
#: on each bin's 3 best reached cold TPE's 40-trial hypervolume in a median of 4 and 5 trials on seeds 0–4 and 5–9
#: (87 % and 93 % of the runs) against 4.5 and 5 (90 % and 97 %) without it, at 24 tuned measurements per batch
#: (``experiments/results/warmstart.md``, row 'warm_batch_tuned' and the batch's runs of that time).
TUNED_PER_BIN = 0

@dataclass
class Proposal:
    """One proposed trial.

    Attributes:
        params: Parameter dict, valid for ``space.decode`` (enqueue it with ``study.enqueue_trial``).
        predicted: ``accuracy_retention``, ``size_bytes`` (exact for the student), ``compression_ratio``, and
            ``accuracy`` when the teacher's accuracy is known (``retention_std`` when the predictor has one).
    """

    params: dict[str, Any]
    predicted: dict[str, float] = field(default_factory=dict)


def pareto_indices(retention: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (retention ↑, size ↓), sorted by size ascending. O(N log N)."""
    order = np.lexsort((-retention, size))
    best = np.maximum.accumulate(retention[order])
    keep = np.concatenate([[True], retention[order][1:] > best[:-1]])
    return order[keep]


def spread_along(log_size: np.ndarray, k: int) -> list[int]:
    """``k`` positions of a size-sorted front, spread evenly in log-size (ends included)."""
    n = len(log_size)
    if n <= k:
        return list(range(n))
    targets = np.linspace(log_size.min(), log_size.max(), k)
    chosen: list[int] = []
    for t in targets:
        free = [i for i in np.argsort(np.abs(log_size - t)) if i not in chosen]
        chosen.append(int(free[0]))
    return sorted(chosen)


def _sizes(pool: CandidatePool, size_model: SizeModel) -> np.ndarray:
    cols = pool.layer_order(size_model.layer_names)
    n = len(pool)
    listed = np.broadcast_to(cols >= 0, (n, len(cols)))
    prune = np.where(listed, pool.prune[:, np.maximum(cols, 0)], 0.0)
    bits = np.where(listed, pool.bits[:, np.maximum(cols, 0)], 32)
    act = pool.scalars["act_bits"] < 32
    return size_model.bytes(prune, bits, structured=pool.scalars["structured"] > 0, act_quant=act, listed=listed)


def _select(pool: CandidatePool, retention: np.ndarray, size: np.ndarray, k: int, min_retention: float
            ) -> list[int]:
    """k distinct candidates: the predicted front above ``min_retention``, then the next fronts."""
    remaining = np.arange(len(pool))
    chosen: list[int] = []
    seen: set[tuple] = set()
    while len(chosen) < k and len(remaining):
        front = remaining[pareto_indices(retention[remaining], size[remaining])]
        good = front[retention[front] >= min_retention]
        if len(good) < k - len(chosen):
            good = front[np.argsort(-retention[front])][: max(k - len(chosen), len(good))]
            good = good[np.argsort(size[good])]
        fresh = [i for i in good if pool.key(i) not in seen]
        for j in spread_along(np.log(size[fresh]), k - len(chosen)) if fresh else []:
            seen.add(pool.key(fresh[j]))
            chosen.append(int(fresh[j]))
        remaining = np.setdiff1d(remaining, front)
    return chosen


def _hedge_bins(retention: np.ndarray, size: np.ndarray, k: int, min_retention: float, teacher_bytes: float
                ) -> list[np.ndarray]:
    """Candidates of each of ``k`` log-size bins, best predicted retention first (then smaller first).

    Bins span from the smallest size predicted to keep ``min_retention`` up to :data:`HEDGE_MAX_SIZE` of the
    teacher's size.
    """
    ok = retention >= min_retention
    lo = np.log(size[ok].min() if ok.any() else size.min())
    hi = np.log(max(teacher_bytes * HEDGE_MAX_SIZE, np.exp(lo) * 1.01))
    logs = np.log(size)
    edges = np.linspace(lo, hi, k + 1)
    bins = []
    for a, b in zip(edges[:-1], edges[1:]):
        idx = np.flatnonzero((logs >= a) & (logs <= b))
        bins.append(idx[np.lexsort((size[idx], -retention[idx]))])
    return bins


def _distinct(pool: CandidatePool, ranked: np.ndarray, n: int, seen: set[tuple]) -> list[int]:
    """The first ``n`` of ``ranked`` whose params are not in ``seen`` (added to it)."""
    out: list[int] = []
    for i in ranked:
        if len(out) == n:
            break
        if pool.key(int(i)) not in seen:
            seen.add(pool.key(int(i)))
            out.append(int(i))
    return out


def _select_hedged(pool: CandidatePool, retention: np.ndarray, size: np.ndarray, k: int, min_retention: float,
                   teacher_bytes: float, measure: Callable[[np.ndarray], np.ndarray] | None = None,
                   shortlist: int = PROBE_SHORTLIST, measure_tuned: Callable[[np.ndarray], np.ndarray] | None = None,
                   tuned: int = 0) -> list[int]:
    """k candidates, one per log-size bin (:func:`_hedge_bins`): the best predicted retention in each bin.

    The predicted front alone collapses onto a narrow size range when the predictor is over-confident at high
    compression; bins spread the bet across compression levels, so one wrong prediction costs one point.
    Measured in ``experiments/bench_warmstart.py``: higher hypervolume after 5, 10 and 40 trials than the front
    selection. With ``measure`` (indices -> re-scored retention, NaN where not measured), the ``shortlist``
    best of each bin are re-scored and the best re-scored one is taken; with ``measure_tuned`` too (the same for
    the tuned proxy), the ``tuned`` best re-scored of each bin are re-scored again and the best of those is taken.
    Bins left empty are filled from the front selection: with ``measure``, by the measured front candidates that
    add the most re-scored hypervolume (:func:`_measured_fill`; unmeasured otherwise).
    """
    bins = _hedge_bins(retention, size, k, min_retention, teacher_bytes)
    chosen: list[int] = []
    seen: set[tuple] = set()
    if measure is None:
        for ranked in bins:
            chosen += _distinct(pool, ranked, 1, seen)
    else:
        lists = [_distinct(pool, ranked, shortlist, seen) for ranked in bins]
        # round-robin (every bin's best first), so a time budget cut leaves each bin measured alike
        order = [lst[r] for r in range(shortlist) for lst in lists if r < len(lst)]
        rescored = dict(zip(order, measure(np.array(order, dtype=int))))
        retuned: dict[int, float] = {}
        if measure_tuned is not None and tuned:  # each bin's best few by the proxy, round-robin again
            tops = [sorted((i for i in lst if np.isfinite(rescored[i])), key=lambda i: -rescored[i])[:tuned]
                    for lst in lists]
            order = [top[r] for r in range(tuned) for top in tops if r < len(top)]
            retuned = dict(zip(order, measure_tuned(np.array(order, dtype=int)))) if order else {}
        seen = set()
        for lst in lists:
            best = None  # the best with the deepest measurement any of the bin's candidates has
            for scores in (retuned, rescored):
                done = [i for i in lst if np.isfinite(scores.get(i, np.nan))]
                if done:
                    best = max(done, key=lambda i: scores[i])
                    break
            best = lst[0] if best is None and lst else best
            if best is not None:
                seen.add(pool.key(best))
                chosen.append(best)
    missing = k - len(chosen)
    if missing and measure is not None:
        chosen += _measured_fill(pool, retention, size, missing, min_retention, teacher_bytes, measure, shortlist,
                                 chosen, seen)
    for i in _select(pool, retention, size, k, min_retention) if len(chosen) < k else []:
        if len(chosen) < k and pool.key(i) not in seen:
            seen.add(pool.key(i))
            chosen.append(i)
    return chosen


def _measured_fill(pool: CandidatePool, retention: np.ndarray, size: np.ndarray, n: int, min_retention: float,
                   teacher_bytes: float, measure: Callable[[np.ndarray], np.ndarray], shortlist: int,
                   chosen: list[int], seen: set[tuple]) -> list[int]:
    """``n`` points for bins no candidate fell in: of ``n * shortlist`` front candidates (:func:`_select`) not in
    ``seen``, measured and re-scored, the ``n`` that add the most re-scored hypervolume to ``chosen`` and to each
    other, one at a time (added to ``seen``). Candidates the measuring did not reach are left out.

    Against filling from the predicted front unmeasured (``experiments/results/warmstart.md``, rows 'warm_batch'
    and 'warm_batch_unfilled', the same 60 runs): cold TPE's 40-trial hypervolume in a median of 6 and 5 trials on
    seeds 0–4 and 5–9 against 6 and 6, its points' over-optimism +0.013 against +0.028. Taking each run of size
    neighbours' best re-scored point instead filled next to the bins' points and was worse (10.5 and 7).
    """
    from .sequential import hv_gain  # noqa: PLC0415

    front = [i for i in _select(pool, retention, size, len(seen) + n * shortlist, min_retention)
             if pool.key(i) not in seen][: n * shortlist]
    scores = measure(np.array(front, dtype=int)) if front else np.array([])
    left = [i for i, v in zip(front, scores) if np.isfinite(v)]
    score = dict(zip(front, scores))
    point = {i: (1.0 - score.get(i, retention[i]), size[i] / teacher_bytes) for i in [*chosen, *left]}
    out: list[int] = []
    while left and len(out) < n:
        gains = hv_gain(np.array([point[i] for i in [*chosen, *out]]).reshape(-1, 2),
                        np.array([point[i] for i in left]))
        best = left.pop(int(np.argmax(gains)))
        seen.add(pool.key(best))
        out.append(best)
    return out


def pool_inputs(
    space: CompressionSpace, layers: Sequence[LayerInfo], task_features: Mapping[str, float], size_model: SizeModel,
    sensitivity: Mapping[str, Mapping[str, float]], n_candidates: int, seed: int,
) -> tuple[CandidatePool, np.ndarray, np.ndarray]:
    """A scrambled Sobol pool of the space, its exact sizes, and its predictor inputs (proxy not measured: NaN).

    Returns:
        ``(pool, size_bytes, X)`` with ``X`` of shape ``(n_candidates, len(INPUT_NAMES))``.
    """
    from .features import FEATURE_NAMES  # noqa: PLC0415

    pool = CandidatePool.sobol(space, int(n_candidates), seed)
    size = _sizes(pool, size_model).astype(np.float64)
    by_name = {info.name: info for info in layers}
    ordered = [by_name.get(name, info) for name, info in zip(space.layer_names, space.layers)]
    enc = encode_arrays(pool.prune, pool.bits, pool.scalars, ordered, sensitivity, size_model.teacher_bytes / size)
    feats = np.array([task_features[name] for name in FEATURE_NAMES], dtype=np.float64)
    unmeasured = np.full((len(pool), len(MEASURED_NAMES)), np.nan)
    return pool, size, np.hstack([np.broadcast_to(feats, (len(pool), len(feats))), enc, unmeasured])


def propose(
    space: CompressionSpace, layers: Sequence[LayerInfo], task_features: Mapping[str, float], predictor: Any, *,
    k: int = 8, n_candidates: int = 10_000, seed: int = 0, size_model: SizeModel,
    sensitivity: Mapping[str, Mapping[str, float]], min_retention: float = 0.5,
    teacher_accuracy: float | None = None, strategy: str = "hedged", probe: ProxyProbe | None = None,
    shortlist: int | None = None, probe_budget_s: float = 10.0, tuned: int = 0, batch_size: int = 64,
) -> list[Proposal]:
    """Propose ``k`` diverse points along the predicted trade-off (predicted retention ↑, exact size ↓).

    Args:
        space: The search space.
        layers: The teacher's layers (``space.layers`` normally).
        task_features: :func:`~.features.task_meta_features` of the task.
        predictor: A fitted retention predictor (``predict(X)`` on :data:`~.history.INPUT_NAMES` columns).
        k: Number of proposals.
        n_candidates: Pool size (scrambled Sobol points of the space).
        seed: Seed of the pool.
        size_model: :class:`~.size.SizeModel` of the teacher (exact sizes).
        sensitivity: :func:`~.features.layer_sensitivity` of the teacher.
        min_retention: Front points predicted below this retention are used only when too few are above.
        teacher_accuracy: Adds ``accuracy`` to the predictions.
        strategy: ``hedged`` (default: the best predicted point in each of ``k`` log-size bins) or ``front``
            (``k`` points spread along the predicted Pareto front).
        probe: Measures the proxy (:class:`~.proxy.ProxyProbe`) of the ``shortlist`` best candidates of each
            hedged bin, which the predictor then re-scores with it (``hedged`` only; None: no measuring).
        shortlist: Candidates measured per bin (default :data:`PROBE_SHORTLIST`).
        probe_budget_s: Time limit of the measuring, in seconds (the bins are measured round-robin); the tuned
            proxy has a limit of its own, the same.
        tuned: Of each bin's measured shortlist, how many best re-scored candidates get the tuned proxy too
            (:meth:`~.proxy.ProxyProbe.tuned`, at most half of a trial's fine-tuning each) and are re-scored with
            it (0: none).
        batch_size: The search's fine-tuning batch size; with ``seed`` (the search's seed too) the tuned proxy is
            the first steps of the very trial the candidate would run.

    Returns:
        Up to ``k`` proposals with distinct params, in the order to run them (:func:`hypervolume_order`: each
        next point adds the most predicted hypervolume). Predicted retention is clipped to [0, 1].
    """
    from .features import FEATURE_NAMES  # noqa: PLC0415

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise invalid_value("k", "an integer >= 1", k)
    if strategy not in ("hedged", "front"):
        raise invalid_value("strategy", "one of 'hedged', 'front'", strategy)
    shortlist = PROBE_SHORTLIST if shortlist is None else shortlist
    if isinstance(shortlist, bool) or not isinstance(shortlist, int) or shortlist < 1:
        raise invalid_value("shortlist", "an integer >= 1", shortlist)
    if isinstance(tuned, bool) or not isinstance(tuned, int) or not 0 <= tuned <= shortlist:
        raise invalid_value("tuned", f"an integer in [0, shortlist={shortlist}]", tuned)
    missing = [name for name in FEATURE_NAMES if name not in task_features]
    if missing:
        raise invalid_value("task_features", "a dict with every FEATURE_NAMES key", f"missing {missing[:3]}")
    pool, size, X = pool_inputs(space, layers, task_features, size_model, sensitivity, n_candidates, seed)
    ratio = size_model.teacher_bytes / size
    # above 1 (a student better than its teacher) is noise the max over 10 000 candidates would select
    retention = np.clip(np.asarray(predictor.predict(X), dtype=np.float64), 0.0, 1.0)
    proxy = np.full(len(pool), np.nan)
    tuned_proxy = np.full(len(pool), np.nan)

    def measurer(name: str, values: np.ndarray, **how: Any) -> Callable[[np.ndarray], np.ndarray]:
        """Measures input ``name`` of candidates ``idx`` into ``values`` (``probe.many(**how)``) and re-scores
        them with it: NaN where the time budget ran out."""
        def measure(idx: np.ndarray) -> np.ndarray:
            if not len(idx):  # nothing to measure (no candidate in reach): scikit-learn refuses an empty batch
                return np.empty(0)
            values[idx] = probe.many([space.decode(pool.params(int(i))) for i in idx], budget_s=probe_budget_s, **how)
            X[idx, INPUT_NAMES.index(name)] = values[idx]
            scored = np.clip(np.asarray(predictor.predict(X[idx]), dtype=np.float64), 0.0, 1.0)
            retention[idx] = np.where(np.isfinite(values[idx]), scored, retention[idx])
            return np.where(np.isfinite(values[idx]), scored, np.nan)

        return measure

    if strategy == "hedged":
        chosen = _select_hedged(pool, retention, size, k, min_retention, size_model.teacher_bytes,
                                measurer(PROXY_NAME, proxy) if probe is not None else None, shortlist,
                                measurer(TUNED_PROXY_NAME, tuned_proxy, tuned=True, seed=seed, batch_size=batch_size)
                                if probe is not None else None, tuned)
    else:
        chosen = _select(pool, retention, size, k, min_retention)
    std = predictor.predict_std(X[chosen]) if hasattr(predictor, "predict_std") and chosen else None
    std = std if std is not None and np.any(std > 0) else None
    out = []
    for j, i in enumerate(chosen):
        predicted = {"accuracy_retention": float(retention[i]), "size_bytes": float(size[i]),
                     "compression_ratio": float(ratio[i])}
        if teacher_accuracy is not None:
            predicted["accuracy"] = float(retention[i] * teacher_accuracy)
        if std is not None:
            predicted["retention_std"] = float(std[j])
        if np.isfinite(proxy[i]):
            predicted[PROXY_NAME] = float(proxy[i])
        if np.isfinite(tuned_proxy[i]):
            predicted[TUNED_PROXY_NAME] = float(tuned_proxy[i])
        out.append(Proposal(pool.params(i), predicted))
    return [out[i] for i in hypervolume_order(retention[chosen], size[chosen] / size_model.teacher_bytes)]


def hypervolume_order(retention: np.ndarray, size_ratio: np.ndarray) -> list[int]:
    """Greedy run order: each next point adds the most predicted hypervolume to the points before it.

    Points live in the normalized space of ``search/pareto.py`` (``1 - retention``, ``size / teacher size``;
    reference point (1, 1)). A warm start enqueues its points in this order. Replayed on the warm runs of
    ``experiments/bench_warmstart.py`` without the measured proxy, it reached cold TPE's 40-trial hypervolume
    within 5 trials in 43 % of the runs against 33 % for smallest-first (the median, 6.5 trials, was the same).
    Ties keep the smaller point first. (A local search orders its warm points by the *observed* front instead:
    :mod:`.sequential`.)

    Returns:
        A permutation of ``range(len(retention))``.
    """
    import moocore  # noqa: PLC0415

    pts = np.column_stack([1.0 - np.clip(retention, 0.0, 1.0), np.clip(size_ratio, 0.0, 1.0)])
    left = sorted(range(len(pts)), key=lambda i: size_ratio[i])
    order: list[int] = []
    while left:
        volumes = [float(moocore.hypervolume(pts[order + [i]], ref=[1.0, 1.0])) for i in left]
        best = left[int(np.argmax(volumes))]  # the first of equal gains: the smaller point
        order.append(best)
        left.remove(best)
    return order


def propose_for_task(
    space: CompressionSpace, task: Any, *, history: History | None = None, k: int = 8, seed: int = 0,
    objectives: Mapping[str, str] | None = None, predictor: Any = None, kind: str | None = None,
    n_candidates: int = 10_000, strategy: str = "hedged", measure: bool = True, tuned: int | None = None,
    batch_size: int = 64,
) -> tuple[list[Proposal], str]:
    """Warm-start proposals for a new search, and a one-line reason (see :func:`warm_start_points`)."""
    history = History.shipped() if history is None else history
    ctx, source = task_context(space, task, history=history, seed=seed, objectives=objectives,
                               predictor=predictor, kind=kind)
    if ctx is None:
        return [], source
    proposals = propose(space, ctx.layers, ctx.features, ctx.predictor, k=k, n_candidates=n_candidates, seed=seed,
                        size_model=ctx.size_model, sensitivity=ctx.sensitivity,
                        teacher_accuracy=ctx.features["teacher_acc"], strategy=strategy,
                        probe=ProxyProbe(task) if measure else None,
                        tuned=(TUNED_PER_BIN if tuned is None else tuned) if measure else 0, batch_size=batch_size)
    return proposals, f"warm start: {len(proposals)} points from {source}"


def warm_start_points(
    space: CompressionSpace, task: Any, *, history: History | None = None, k: int = 8, seed: int = 0,
    objectives: Mapping[str, str] | None = None, predictor: Any = None, kind: str | None = None,
    n_candidates: int = 10_000, strategy: str = "hedged", measure: bool = True, tuned: int | None = None,
    batch_size: int = 64,
) -> tuple[list[dict[str, Any]], str]:
    """Warm-start params for a new search, and a one-line reason.

    Args:
        space: The search space.
        task: The :class:`~metacompress.learners.Task`.
        history: Trial history (default: the shipped meta-dataset; pass ``History.collect(tracking_uri)`` to
            include every finished search — the flywheel). Rows of the same task name adapt the predictor.
        k: Number of points.
        seed: Seed of the probes and of the candidate pool.
        objectives: The search's objectives (``{"accuracy": "maximize", ...}``); unsupported ones → cold start.
        predictor: A fitted predictor to use instead of the default.
        kind: ``"gbm"`` or ``"reptile"`` (default: the shipped choice; a history beyond the shipped one refits).
        n_candidates: Pool size.
        strategy: ``hedged`` (default) or ``front``; see :func:`propose`.
        measure: Measure the proxy of each hedged bin's shortlist and re-score it (:mod:`.proxy`; a few
            seconds for the zoo's models).
        tuned: Of each bin's measured shortlist, how many best get the tuned proxy too (None:
            :data:`TUNED_PER_BIN`, 0: the proxy alone; ignored without ``measure``).
        batch_size: The search's fine-tuning batch size (the tuned proxy replays the start of its trials).

    Returns:
        ``(params list, reason)``; on an empty or incompatible history ``([], "cold start: <why>")``. Nothing
        is logged here: the caller prints the reason as its one warning line.
    """
    proposals, reason = propose_for_task(space, task, history=history, k=k, seed=seed, objectives=objectives,
                                         predictor=predictor, kind=kind, n_candidates=n_candidates,
                                         strategy=strategy, measure=measure, tuned=tuned, batch_size=batch_size)
    return [p.params for p in proposals], reason
