"""Scheduled retraining: search the retrained model again, warm, and promote the result only when it is better.

``metacompress retrain CONFIG.yaml --registered-model NAME [--constraint "accuracy>=0.97"] ...`` is one job run:

1. **Input** is validated before anything heavy (exit code 2 and one line naming the field).
2. **Lock**: one ``fcntl`` lock per job (storage, config's study name, registered model). A second run of the same
   job while one is running does not wait: it exits 2 at once (``'registered_model' ... in use``), so a scheduler
   never piles up runs; the next tick runs normally. The lock guards one machine (or a shared cache folder,
   ``METACOMPRESS_CACHE``); across machines use the scheduler's own (``concurrencyPolicy: Forbid``,
   ``max_active_runs``).
3. **Study** ``f"{study_name}-{run_key}"`` (``run_key``: ``--run-key`` or today's UTC date ``YYYYMMDD``), outputs
   in ``out/<run_key>``: a rerun after a crash resumes it (finished trials are never repeated).
4. **Warm start** (``warm_start.mode: auto``): the Pareto policies of the latest earlier study of this job (same
   search space) run first, then the meta-learned predictor's proposals fitted on the whole history in the
   tracking store (``History.collect(tracking_uri)``), one at a time against the front the finished trials
   observed (:class:`~.warmstart.SequentialWarmStart`), on either backend.
5. **Select** among Pareto models that meet every constraint (all re-measured here on this run's validation data):
   the smallest ``size_bytes``; ties by higher accuracy, then lower latency, then lower trial number. None: exit 3.
6. **Compare** with the model under alias ``champion``, re-measured on the *same* validation data, loaded from the
   configured store as its packed export (``export/trial-N.mcz`` of its run; no pickle) on the retrained teacher's
   skeleton. :func:`is_better` is the rule. Better: a new version (tags ``metacompress.run_key`` = study name,
   trial, metrics) is created, ``previous`` moves to the old champion and ``champion`` to the new version.
7. **Never twice**: a version tagged with this run's key marks a promotion decided; a rerun only finishes moving
   the aliases (when a crash came in between) and otherwise reports "already promoted".

The decision is logged as tags ``metacompress.retrain.*`` on the search's parent run and as ``retrain.json`` in
the output folder (and as an artifact of the parent run).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metacompress.spaces import ConfigError, MetacompressError, invalid_value, unknown_key

__all__ = [
    "CONSTRAINT_METRICS", "Constraint", "RetrainResult", "default_run_key", "is_better", "parse_constraint",
    "retrain", "select_candidate", "validate_name",
]

#: Metrics a constraint may name (every one is measured for each model).
CONSTRAINT_METRICS = ("accuracy", "size_bytes", "latency_ms", "compression_ratio", "bitops", "speedup")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_CONSTRAINT_RE = re.compile(rf"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*({_NUMBER})\s*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CONSTRAINT_WANT = ("'<metric><=<number>' or '<metric>>=<number>' with a metric among "
                    + ", ".join(CONSTRAINT_METRICS))
CHAMPION, PREVIOUS = "champion", "previous"
RUN_KEY_TAG, TRIAL_TAG, PACKED_TAG = "metacompress.run_key", "metacompress.trial_number", "metacompress.packed"


@dataclass(frozen=True)
class Constraint:
    """``metric <= value`` or ``metric >= value``."""

    metric: str
    op: str
    value: float

    def ok(self, metrics: Mapping[str, float]) -> bool:
        """Whether ``metrics`` meets the constraint (a missing or non-finite metric does not)."""
        got = metrics.get(self.metric)
        if not isinstance(got, (int, float)) or not math.isfinite(got):
            return False
        return got <= self.value if self.op == "<=" else got >= self.value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_constraint(text: Any) -> Constraint:
    """Parse ``"accuracy>=0.97"``; bad text raises ``ConfigError`` naming ``constraint``."""
    match = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise invalid_value("constraint", _CONSTRAINT_WANT, text)
    metric, op, value = match.group(1), match.group(2), float(match.group(3))
    if metric not in CONSTRAINT_METRICS:
        raise unknown_key("constraint", metric, CONSTRAINT_METRICS)
    if not math.isfinite(value) or value < 0 or (metric == "accuracy" and value > 1):
        bound = "a number in [0, 1]" if metric == "accuracy" else "a number >= 0"
        raise invalid_value("constraint", f"a bound on {metric} that is {bound}", text)
    return Constraint(metric, op, value)


def validate_name(name_field: str, value: Any) -> str:
    """A registered-model name or run key: letters, digits, ``.``, ``_``, ``-`` (1-100, not starting with a sign)."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise invalid_value(name_field, "1-100 letters, digits, '.', '_' or '-' starting with a letter or digit",
                            value)
    return value


def default_run_key(now: dt.datetime | None = None) -> str:
    """Today's UTC date as ``YYYYMMDD``: one study per job and day."""
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d")


def meets(metrics: Mapping[str, float] | None, constraints: Sequence[Constraint]) -> bool:
    """Whether ``metrics`` exist and meet every constraint."""
    return metrics is not None and all(c.ok(metrics) for c in constraints)


def select_candidate(candidates: Sequence[Mapping[str, Any]], constraints: Sequence[Constraint]
                     ) -> Mapping[str, Any] | None:
    """The model to propose: among ``candidates`` (``{"number", "metrics"}``) meeting every constraint, the
    smallest ``size_bytes``; ties by higher accuracy, lower ``latency_ms``, lower trial number. None: none meets."""
    ok = [c for c in candidates if meets(c["metrics"], constraints)]
    if not ok:
        return None
    return min(ok, key=lambda c: (c["metrics"]["size_bytes"], -c["metrics"]["accuracy"],
                                  c["metrics"].get("latency_ms", 0.0), c["number"]))


def is_better(new: Mapping[str, float], champion: Mapping[str, float] | None, constraints: Sequence[Constraint],
              tolerance: float = 0.005) -> tuple[bool, str]:
    """The promotion rule; both models measured on the same validation data.

    ``new`` is better iff it meets every constraint AND one of:
    (a) there is no champion, or it cannot be measured on this task, or it fails a constraint;
    (b) it is strictly smaller (``size_bytes``) and at most ``tolerance`` less accurate;
    (c) it is no larger and strictly more accurate.
    Equal size and accuracy keep the champion (a rerun never flips a tie).

    Returns:
        ``(better, one-line reason)``.
    """
    if not meets(new, constraints):
        return False, "the new model fails the constraints"
    if champion is None:
        return True, "no measurable champion"
    if not meets(champion, constraints):
        failed = ", ".join(str(c) for c in constraints if not c.ok(champion))
        return True, f"the champion fails {failed} on the new validation data"
    d_acc = new["accuracy"] - champion["accuracy"]
    d_size = new["size_bytes"] - champion["size_bytes"]
    if d_size < 0 and d_acc >= -tolerance:
        return True, f"smaller by {-d_size:.0f} B at accuracy {d_acc:+.4f} (tolerance {tolerance:g})"
    if d_size <= 0 and d_acc > 0:
        return True, f"more accurate by {d_acc:.4f} at no larger size"
    return False, f"not better: size {d_size:+.0f} B, accuracy {d_acc:+.4f} (tolerance {tolerance:g})"


@dataclass
class RetrainResult:
    """What one job run decided. ``outcome``: ``promoted``, ``kept``, ``already_promoted`` or ``no_candidate``."""

    outcome: str
    reason: str
    study_name: str
    registered_model: str
    candidate: dict[str, Any] | None = None
    champion: dict[str, Any] | None = None
    version: str | None = None
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def exit_code(self) -> int:
        """0 promoted or kept, 3 no model met the constraints."""
        return 3 if self.outcome == "no_candidate" else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record (``retrain.json``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "summary"}


def job_config(cfg: Any, run_key: str) -> Any:
    """``cfg`` with the run's study name ``f"{study_name}-{run_key}"`` and output folder ``out/<run_key>``."""
    return dataclasses.replace(cfg, study_name=f"{cfg.study_name}-{run_key}", out=str(Path(cfg.out) / run_key))


def retrain(
    cfg: Any, registered_model: str, constraints: Sequence[Constraint] = (), *, run_key: str | None = None,
    tolerance: float = 0.005, say: Callable[[str], None] = print, on_trial_end: Callable[..., None] | None = None,
) -> RetrainResult:
    """One scheduled job run (see the module docstring); returns the decision.

    Args:
        cfg: The validated config (its ``study_name`` and ``out`` are the job's base names).
        registered_model: The registered model whose ``champion`` alias is compared and moved.
        constraints: Every Pareto model considered must meet these.
        run_key: Names this run's study (default: today's UTC date).
        tolerance: Accuracy a smaller model may lose and still be better (:func:`is_better`).
        say: Prints one progress line.
        on_trial_end: Passed to :func:`~metacompress.search.runner.run_search` (progress bars).

    Raises:
        ConfigError: Bad input, no tracking store, or another run of this job holds the lock (exit code 2).
        MetacompressError: The tracking store stayed unreachable (rerun the same command to finish).
    """
    from .local import file_lock, lock_path
    from .runner import prepare, run_search
    from .study import study_line
    from .sync import make_tracker
    from .warmstart import resumed_warm_start

    validate_name("registered_model", registered_model)
    run_key = validate_name("run_key", default_run_key() if run_key is None else run_key)  # "" is a typo, not today
    if cfg.tracking_uri == "none":
        raise invalid_value("tracking_uri", "an MLflow tracking URI with a model registry (retrain compares with "
                            "and promotes in it)", "none")
    job = job_config(cfg, run_key)
    tracker = make_tracker(job, registry=True)
    _ = tracker.client  # a new sqlite store is created atomically before anything else opens it
    lock = lock_path(cfg.storage, f"retrain-{cfg.study_name}-{registered_model}", "job")
    with file_lock(lock, blocking=False) as owned:
        if not owned:
            raise ConfigError(f"The 'registered_model' value must not be in use by another running retrain job of "
                              f"this config (lock {lock}). Got {registered_model!r}.", "registered_model")
        if job.backend == "ray":  # an address where nothing answers, resources the local Ray lacks
            from .ray_backend import check_ray

            check_ray(job)
        try:
            p = prepare(job)
        except ConfigError as exc:  # a resume refused: a job run starts a new study with another run key
            if "--study-name" not in str(exc):
                raise
            raise ConfigError(str(exc).replace("--study-name", "--run-key"), exc.field) from None
        say(study_line(p.study, job.n_trials, job.storage))  # new, resumed, or its budget spent
        points = []
        info = resumed_warm_start(p.study, job.n_trials, job.warm_start.n_points, sequential=True)
        if info is None:  # a rerun of a finished run fits no predictor
            points, info = _warm_start(job, p, cfg.study_name)
            info["reason"] = f"warm start: {info['n_points']} points ({info.get('reason', info['mode'])})"
        say(info["reason"])
        if not any(c.metric == "accuracy" for c in constraints):
            say("no accuracy constraint: the smallest Pareto model may be promoted, whatever its accuracy "
                "(e.g. --constraint 'accuracy>=0.97')")
        summary = run_search(job, warm_points=points, warm_info=info, prepared=p, tracker=tracker,
                             on_trial_end=on_trial_end)
        if not summary.get("tracking_flushed", True):
            raise MetacompressError(f"the tracking store {job.tracking_uri} is unreachable: the search is saved; "
                                    "rerun the same command to log it and decide the promotion")
        result = _decide(p, tracker, summary, registered_model, constraints, tolerance)
        _record(p, tracker, result)
    return result


def _warm_start(job: Any, p: Any, base: str) -> tuple[list[dict[str, Any]] | Any, dict[str, Any]]:
    """Earlier Pareto policies of this job first, then predictor proposals from the whole tracked history, one at a
    time against the front the earlier policies observed (as a search does)."""
    from .warmstart import SequentialWarmStart, resolve_warm_start

    mode, n_points = job.warm_start.mode, min(job.warm_start.n_points, job.n_trials)  # no more than can run
    if mode == "off" or job.warm_start.file:
        return resolve_warm_start(mode, p.space, p.task, n_points=n_points, seed=job.seed, file=job.warm_start.file)
    previous = _previous_pareto(p, base)[:n_points]
    k = n_points - len(previous)
    if k <= 0:
        return previous, {"mode": "auto", "n_points": len(previous),
                          "reason": f"{len(previous)} from the previous run; no predictor points needed"}
    from metacompress.learners.meta import History
    from metacompress.learners.meta.sequential import sequential_for_task

    history = History.collect(job.tracking_uri)
    proposer, source = sequential_for_task(p.space, p.task, history=history, seed=job.seed,
                                           objectives=job.objectives, batch_size=p.cfg.train.batch_size)
    if proposer is not None:
        return SequentialWarmStart(proposer, k, p.reference, first=previous), {
            "mode": "auto", "n_points": len(previous) + k, "sequential": True,
            "reason": f"{len(previous)} from the previous run; {k} one at a time against the observed front, "
                      f"from {source}"}
    return previous, {"mode": "auto", "n_points": len(previous),
                      "reason": f"{len(previous)} from the previous run; {source}"}


def _previous_pareto(p: Any, base: str) -> list[dict[str, Any]]:
    """Pareto policies of this job's latest earlier run (studies named ``f"{base}-*"`` in the same storage, the
    newest with any) as params of this run's space, each only where the space holds it exactly (a widened space
    keeps them all; a policy with a value the space lacks, a constant it fixes otherwise, a group it shares that
    the policy set apart, or other layers is left out)."""
    import optuna

    from metacompress.spaces import CompressionPolicy

    here = p.study.study_name
    mine = [s for s in optuna.get_all_study_summaries(p.study._storage, include_best_trial=False)
            if s.study_name.startswith(f"{base}-") and s.study_name != here]
    for summary in sorted(mine, key=lambda s: -s._study_id):
        study = optuna.load_study(study_name=summary.study_name, storage=p.study._storage)
        points = []
        for t in study.best_trials:
            try:
                policy = CompressionPolicy.from_dict(t.user_attrs.get("policy") or {})
                params = p.space.encode(policy)
                if p.space.decode(params).to_dict() == policy.to_dict():  # the same policy, not a neighbour
                    points.append(params)
            except ConfigError:  # other layers, a value this space lacks, or no policy recorded
                continue
        if points:
            return points
    return []


def _measure(p: Any, path: str | Path) -> dict[str, float]:
    """Load a packed export on the task's teacher skeleton and measure it on this run's validation data."""
    from metacompress.learners import evaluate, load_compressed

    model = load_compressed(path, p.task.teacher)
    return evaluate(model, p.task.val, p.task.example_input(1), reference=p.reference,
                    latency_repeats=p.cfg.train.latency_repeats, baseline=p.objective.baseline())


def _champion(p: Any, client: Any, name: str) -> tuple[Any, dict[str, float] | None, str]:
    """The ``champion`` version (None when there is none), its metrics now, and a note."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None, "no champion yet"
    packed = (version.tags or {}).get(PACKED_TAG)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(version.run_id, packed, tmp)
            return version, _measure(p, local), f"champion version {version.version}"
    except Exception as exc:  # noqa: BLE001 - an unusable champion cannot block a usable new model
        return version, None, f"champion version {version.version} cannot be measured here ({type(exc).__name__})"


def _decide(p: Any, tracker: Any, summary: Mapping[str, Any], name: str, constraints: Sequence[Constraint],
            tolerance: float) -> RetrainResult:
    """Select, compare, and promote (idempotently)."""
    result = RetrainResult("no_candidate", "", p.cfg.study_name, name, summary=dict(summary))
    entries = [e for e in summary["pareto"] if e.get("artifact") and Path(e["artifact"]).is_file()]
    measured = [{**e, "metrics": _measure(p, e["artifact"])} for e in entries]
    chosen = select_candidate(measured, constraints)
    client = tracker.client
    done = _versions_of_run(client, name, p.cfg.study_name)
    if done:  # this run registered its choice before: that decision stands, whatever a rerun's constraints say
        trial = (done[-1].tags or {}).get(TRIAL_TAG)
        chosen = next((e for e in measured if str(e["number"]) == trial), chosen)
    if chosen is None and done:
        champ, _, _ = _champion(p, client, name)
        result.reason = f"this run registered version {done[-1].version} before"
        return _finish_promotion(client, name, done, champ, result)
    if chosen is None:
        shown = ", ".join(map(str, constraints)) or "none"
        result.reason = f"none of {len(measured)} Pareto models meets the constraints ({shown})"
        if not summary.get("n_complete"):  # not a question of constraints: the search has no model at all
            failed = summary.get("failures") or {}
            first = next(iter(failed), "no reason recorded")
            stopped = f", {summary['n_pruned']} stopped early by ASHA" if summary.get("n_pruned") else ""
            result.reason = (f"no trial finished: {summary.get('n_failed', 0)} failed{stopped} ({len(failed)} "
                             f"{'reason' if len(failed) == 1 else 'reasons'}; the most frequent: {first})")
        return result
    result.candidate = {"number": chosen["number"], "metrics": chosen["metrics"], "model_uri": chosen["model_uri"]}
    champ, champ_metrics, note = _champion(p, client, name)
    result.champion = None if champ is None else {"version": str(champ.version), "metrics": champ_metrics,
                                                  "note": note}
    better, why = is_better(chosen["metrics"], champ_metrics, constraints, tolerance)
    result.reason = why if champ_metrics is not None or champ is None else f"{why} ({note})"
    if done:  # registered before a crash: finish the promotion, for the reason it was decided (same champion)
        return _finish_promotion(client, name, done, champ, result)
    if not better:
        result.outcome = "kept"
        return result
    with tracker._fluent_uri():  # MLflow resolves a logged model's ``models:/m-…`` source in the global store
        version = _register(client, name, chosen, p.cfg.study_name)
    return _finish_promotion(client, name, [version], champ, result)


def _versions_of_run(client: Any, name: str, run_key: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{RUN_KEY_TAG}` = '{run_key}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda v: int(v.version))


def _register(client: Any, name: str, chosen: Mapping[str, Any], run_key: str) -> Any:
    """A new version of ``name`` for the chosen Pareto model (same logged model and run as its Pareto version)."""
    from mlflow.exceptions import MlflowException

    uri = chosen.get("model_uri")
    if not uri:
        raise MetacompressError(f"Pareto trial {chosen['number']} has no registered model; rerun the same command")
    pareto_name, pareto_version = uri.removeprefix("models:/").rsplit("/", 1)
    src = client.get_model_version(pareto_name, pareto_version)
    try:
        client.create_registered_model(name, description="Managed by `metacompress retrain`.")
    except MlflowException:
        pass  # it exists
    tags = {RUN_KEY_TAG: run_key, TRIAL_TAG: str(chosen["number"]),
            PACKED_TAG: f"export/{Path(chosen['artifact']).name}",
            **{k: f"{v:.6g}" for k, v in chosen["metrics"].items() if isinstance(v, (int, float))}}
    return client.create_model_version(name, source=src.source, run_id=src.run_id, tags=tags,
                                       model_id=getattr(src, "model_id", None))


def _finish_promotion(client: Any, name: str, versions: list[Any], champ: Any, result: RetrainResult
                      ) -> RetrainResult:
    """Move ``previous`` and ``champion`` to promote ``versions[-1]``, unless it is (or was superseded by) the
    champion."""
    version = versions[-1]
    result.version = str(version.version)
    if champ is not None and int(champ.version) >= int(version.version):
        result.outcome = "already_promoted"
        result.reason = (f"version {version.version} was promoted by this run before" if champ.version ==
                         version.version else f"this run's version {version.version} was superseded by version "
                         f"{champ.version}")
        return result
    if champ is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(champ.version))
    client.set_registered_model_alias(name, CHAMPION, str(version.version))
    result.outcome = "promoted"
    return result


def _record(p: Any, tracker: Any, result: RetrainResult) -> None:
    """``retrain.json`` in the output folder and on the parent run; ``metacompress.retrain.*`` tags.

    A rerun of a run that promoted (``already_promoted``) keeps the record of that decision: it writes only what the
    first run did not get to (a crash between the promotion and its record).
    """
    path = Path(p.cfg.out) / "retrain.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = result.to_dict()
    if result.outcome == "already_promoted" and path.is_file():
        record = json.loads(path.read_text())  # the decision, as the run that made it recorded it
    else:
        path.write_text(json.dumps(record, indent=2, default=float))
    if tracker.parent_run_id is None:
        return
    if result.outcome == "already_promoted" and \
            "metacompress.retrain.outcome" in tracker.client.get_run(tracker.parent_run_id).data.tags:
        return
    tags = {"outcome": record["outcome"], "reason": record["reason"], "registered_model": record["registered_model"],
            "version": record.get("version") or "",
            "trial": "" if not record.get("candidate") else record["candidate"]["number"]}
    for key, value in tags.items():
        tracker.client.set_tag(tracker.parent_run_id, f"metacompress.retrain.{key}", str(value)[:5000])
    tracker.client.log_artifact(tracker.parent_run_id, str(path))
