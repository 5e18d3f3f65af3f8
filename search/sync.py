"""The MLflow side of a search: copy the study's trials to the tracking store, register the Pareto models, log
the parent run's ``meta.json``, and retry all of it with backoff when the store was down.

Everything here is idempotent (one child run per trial number, one registered version per Pareto trial of a
study), so a resumed search, or a rerun after a tracking outage, ends with exactly what one uninterrupted run logs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from metacompress.learners import deployable, load_compressed
from metacompress.spaces import ConfigError

from .config import SearchConfig
from .tracking import STUDY_TAG, TRIAL_TAG

if TYPE_CHECKING:
    from .runner import Prepared

__all__ = ["flush_tracking", "log_meta", "log_pareto_models", "make_tracker", "parent_tags", "sync_tracking"]

_LOG = logging.getLogger(__name__)


def sync_tracking(tracker: Any, trials: list[FrozenTrial], synced: set[int], space: Any = None) -> int:
    """Log every counted trial not in ``synced`` (the tracker itself skips trials already in MLflow).

    A trial's params are its policy (``layers.<name>.prune``, ...), as the trial applied it; a trial that recorded
    none (failed, or stopped early by ASHA) has its sampled params decoded by ``space`` into the policy it was
    given, so every child run of a study names its params alike.

    Returns:
        How many trials were handed to the tracker now (``synced`` is updated).
    """
    n = 0
    for t in trials:
        if t.number in synced:
            continue
        params = t.user_attrs.get("policy") or _policy_of(t, space)
        state = t.state.name if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else "FAIL"  # PRUNED: KILLED
        tracker.log_trial(t.number, params, t.user_attrs.get("metrics") or {}, t.user_attrs.get("history"),
                          state, t.user_attrs.get("fail_reason"))
        synced.add(t.number)
        n += 1
    return n


def _policy_of(trial: FrozenTrial, space: Any) -> dict[str, Any]:
    """The policy ``space`` decodes from a trial's sampled params (the raw params where it cannot)."""
    if space is not None:
        try:
            return space.decode(trial.params).to_dict()
        except ConfigError:
            pass
    return dict(trial.params)


def make_tracker(cfg: SearchConfig, *, registry: bool = False) -> Any:
    """The MLflow tracker of ``cfg``, checked to be reachable (fails fast, before any training); ``registry``: the
    caller needs a model registry, so an unreachable server's message does not offer ``none``."""
    from .tracking import NullTracker, Tracker

    if cfg.tracking_uri == "none":
        return NullTracker()
    tracker = Tracker(cfg.tracking_uri, cfg.experiment_name)
    tracker.check_reachable(instead="sqlite:///mlflow.db" if registry else "sqlite:///mlflow.db or none")
    return tracker


def _registered(tracker: Any, name: str) -> tuple[dict[int, str], set[int]]:
    """Trial number -> model URI of the versions of ``name`` already registered for *this* study (resume: never
    twice), and the trials whose version lacks its tags. Several studies share one experiment and its ``-pareto``
    model: a version counts when it was logged from this study's child run of a trial, tagged or not (a search
    stopped between registering a version and tagging it; the lowest such version of a trial counts)."""
    try:
        versions = tracker.client.search_model_versions(f"name = '{name}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return {}, set()
    trial_of_run = {child[0]: number for number, child in tracker._children.items()}
    out: dict[int, str] = {}
    untagged: set[int] = set()
    for v in sorted(versions, key=lambda v: int(v.version)):
        number = trial_of_run.get(v.run_id)
        if number is None or number in out:
            continue
        out[number] = f"models:/{name}/{v.version}"
        if (v.tags or {}).get(TRIAL_TAG) != str(number):
            untagged.add(number)
    return out, untagged


#: Model version tag: whether the version's trial is on its study's Pareto front now ("true"/"false"). A resumed
#: search can push a registered trial off the front; its version stays (it may be served) and says so.
PARETO_TAG = "metacompress.pareto"


def log_pareto_models(p: Prepared, tracker: Any, summary: dict[str, Any]) -> None:
    """Load each Pareto trial's packed export, log its float inference form (BatchNorm folded, plain ``torch.nn``
    layers holding the effective weights) with ``mlflow.pytorch`` and register it; tag every version of this
    study with :data:`PARETO_TAG`. MLflow saves it as a ``torch.export`` program with a signature and a dynamic
    batch dimension (``mlflow.pytorch.load_model`` needs no metacompress; pickled where it does not export). A
    student whose activations are quantized (``act_bits``) is logged as it is, pickled: the inference form drops
    that quantization, so it would not be the model the trial measured. The packed export (``export/*.mcz``, the
    stored size) is logged beside it."""
    if p.cfg.tracking_uri == "none":
        return
    name = f"{p.cfg.experiment_name}-pareto"
    done, untagged = _registered(tracker, name)
    for entry in summary["pareto"]:
        if entry["number"] in done:
            entry["model_uri"] = done[entry["number"]]
            if entry["number"] in untagged:  # registered by a search stopped before it tagged the version
                tracker.tag_model_version(name, done[entry["number"]].rsplit("/", 1)[-1],
                                          {TRIAL_TAG: str(entry["number"]), STUDY_TAG: p.cfg.study_name,
                                           **entry["metrics"]})
                untagged.discard(entry["number"])
            continue
        artifact = entry.get("artifact")
        if not artifact or not Path(artifact).exists():
            continue
        student = load_compressed(artifact, p.task.teacher).eval()
        if any(getattr(m, "act_quant", None) is not None for m in student.modules()):
            model, example = student, None  # its activations are quantized: the float form would be another model
        else:
            model, example = deployable(student, int8=False), p.task.example_input(2)  # plain torch layers
        entry["model_uri"] = tracker.log_pareto_model(entry["number"], model, entry["metrics"], name,
                                                      extra_artifacts=[artifact], input_example=example)
        if entry["model_uri"] is not None:  # None: the store went down (a rerun registers it)
            done[entry["number"]] = entry["model_uri"]
    for number in untagged:  # off the front now: its number at least
        tracker.tag_model_version(name, done[number].rsplit("/", 1)[-1], {TRIAL_TAG: str(number),
                                                                           STUDY_TAG: p.cfg.study_name})
    front = {entry["number"] for entry in summary["pareto"]}
    tracker.tag_model_versions(name, PARETO_TAG, {uri.rsplit("/", 1)[-1]: str(number in front).lower()
                                                  for number, uri in done.items()})


def flush_tracking(tracker: Any, step: Callable[[], None], restart: Callable[[], Any], timeout_s: float) -> bool:
    """Run ``step`` (the end-of-search MLflow logging) until the tracker stays enabled, with backoff.

    A tracking store that failed mid-search disabled the tracker (see :mod:`.tracking`); every trial is still in
    the Optuna study. This retries ``restart`` (re-find the parent run) + ``step`` every 1, 2, 4 … 30 s for at
    most ``timeout_s``. Everything it logs is idempotent, so a later rerun of the same command flushes whatever
    is still missing.

    Returns:
        True when everything reached MLflow (or tracking is off); False after one warning line otherwise.
    """
    step()  # with tracking off (NullTracker) this only writes the outputs
    if tracker.tracking_uri == "none":
        return True
    deadline, delay = time.monotonic() + timeout_s, 1.0
    while tracker.disabled and time.monotonic() + delay <= deadline:
        time.sleep(delay)
        delay = min(2 * delay, 30.0)
        tracker.disabled = False
        try:
            restart()
        except Exception as exc:  # noqa: BLE001 - still down: wait and try again
            _LOG.info("MLflow still unreachable (%r); retrying in %g s", exc, delay)
            tracker.disabled = True
            continue
        step()
    if tracker.disabled:
        _LOG.warning("MLflow at %s stayed unreachable for %g s: every trial is saved in the study; rerun the same "
                     "command when it is back to flush the results to MLflow.", tracker.tracking_uri, timeout_s)
        return False
    return True


def parent_tags(cfg: SearchConfig, warm_info: dict[str, Any] | None) -> dict[str, Any]:
    return {"task": cfg.task_name, "backend": cfg.backend, "sampler": cfg.sampler,
            "warm_start": (warm_info or {}).get("mode", "off"), "n_trials": cfg.n_trials}


def log_meta(p: Prepared, tracker: Any) -> None:
    """Parent artifact ``meta.json``: what the meta-learned history needs to learn from this search."""
    if p.cfg.tracking_uri == "none":
        return
    out = Path(p.cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    from metacompress.learners.meta import meta_artifact

    meta = {**meta_artifact(p.task, p.space.layers, p.reference, seed=p.cfg.seed),
            "study_name": p.cfg.study_name, "objectives": dict(p.cfg.objectives),
            "space_fingerprint": p.space.fingerprint(), "task_info": p.task.info}
    path = out / "meta.json"
    path.write_text(json.dumps(meta, indent=2, default=str))
    tracker.log_artifacts([path])
