"""One search from a validated config to a Pareto front: prepare, run a backend, sync MLflow, summarize.

The Optuna study is the single source of truth. Trials are run by a backend (local worker processes or Ray Tune)
that only writes to the study; :func:`~.sync.sync_tracking` copies every finished trial to MLflow idempotently (a
child run per trial number), so a killed search, a resumed one, or one whose tracking server was down for a while
ends with exactly one child run per counted trial.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from metacompress.learners import Task, describe_layers, load_task, pruned_share, unsearched_weights
from metacompress.learners.measure import LATENCY_TIMING
from metacompress.spaces import CompressionPolicy, CompressionSpace, ConfigError
from metacompress.spaces.adapters import to_optuna

from .checks import writable_folder
from .config import SearchConfig, warn_once
from .local import file_lock, lock_path, run_worker
from .objective import Objective, resolve_device, teacher_metrics
from .warmstart import ATTR_EXPECTED, ATTR_PREDICTED, SequentialWarmStart, enqueue_next_warm_point
from .pareto import hypervolume, hypervolume_history, max_hypervolume, pareto_front
from .study import (
    ATTR_REFERENCE,
    ATTR_TIMING,
    ATTR_WARM_SOURCE,
    check_setup,
    counted_trials,
    enqueue_points,
    make_sampler,
    open_study,
    recover_interrupted,
    remaining_budget,
)
from .sync import flush_tracking, log_meta, log_pareto_models, make_tracker, parent_tags, sync_tracking

_LOG = logging.getLogger(__name__)

# flush_tracking, make_tracker and sync_tracking live in .sync; re-exported for callers of this module
__all__ = ["Prepared", "flush_tracking", "make_tracker", "prepare", "run_search", "summarize", "sync_tracking"]


@dataclass
class Prepared:
    """Everything a worker needs, built from one config."""

    cfg: SearchConfig
    task: Task
    space: CompressionSpace
    reference: dict[str, float]
    study: optuna.Study
    objective: Objective
    #: Sequential warm points (:class:`~.warmstart.SequentialWarmStart`), enqueued by this process's worker.
    warm: Any = None

    @property
    def distributions(self) -> dict[str, Any]:
        return to_optuna(self.space)

    @property
    def before_ask(self) -> Callable[[optuna.Study], bool] | None:
        """What runs before each ask in the process that enqueues (the local worker here, Ray's driver): the next
        sequential warm point, when there is a sequential warm start."""
        return None if self.warm is None else functools.partial(enqueue_next_warm_point, plan=self.warm)

    @property
    def artifact_dir(self) -> Path:
        path = Path(self.cfg.out) / "trials"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _task_spec(cfg: SearchConfig) -> dict[str, Any]:
    t = cfg.task
    if not t.factory:
        return {"name": t.name, "seed": t.seed}
    _make_importable([Path(cfg.config_path).parent] if cfg.config_path else [])
    return {"factory": t.factory, "kwargs": t.kwargs, "seed": t.seed}  # a factory with a seed parameter gets it


def load_config_task(cfg: SearchConfig, *, progress: bool = False) -> Task:
    """The config's task. A factory's task takes the config's ``task.name`` when one is given: that name, not the
    one the factory returns, names the task in the history (and the experiment)."""
    task = load_task(_task_spec(cfg), progress=progress)
    if cfg.task.factory and cfg.task.name and task.name != cfg.task.name:
        task = dataclasses.replace(task, name=cfg.task.name)
    return task


def _make_importable(folders: list[Path]) -> None:
    """Let a task factory's module be found next to the config file and in the working directory, in this process
    and the workers it starts (local processes and a local Ray inherit ``PYTHONPATH``). Appended to the path, so an
    installed module of the same name wins; on a Ray cluster the module must be importable on every node."""
    for folder in [*folders, Path.cwd()]:
        entry = str(folder.resolve())
        if entry not in sys.path:
            sys.path.append(entry)
        parts = [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]
        if entry not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([*parts, entry])


def build_space(cfg: SearchConfig, task: Task) -> CompressionSpace:
    """The search space over the teacher's compressible layers, bounded by the config; says once which weights it
    leaves float when they are 5 % or more of the model's (:func:`unsearched_line`; `layers` lists any)."""
    line = unsearched_line(task.teacher, at_least=0.05)
    if line:
        warn_once(_LOG, line)
    return cfg.space.build(describe_layers(task.teacher, task.example_input(2)))


def unsearched_line(teacher: nn.Module, at_least: float = 0.0) -> str | None:
    """One line naming the weights no searched layer holds (they stay float in every student), or None when there
    are none or they are less than ``at_least`` of the weights."""
    left = unsearched_weights(teacher)
    weights = sum(p.numel() for p in teacher.parameters() if p.dim() >= 2)  # each Parameter once, tied or not
    share = sum(left.values()) / max(weights, 1)
    if not left or share < at_least:
        return None
    names = ", ".join(f"{name} ({count:,})" for name, count in list(left.items())[:4])
    more = f" and {len(left) - 4} more" if len(left) > 4 else ""
    return (f"not searched, kept float in every student: {names}{more}, {share:.0%} of the weights (searched are "
            "Linear, Conv1d, Conv2d and Embedding layers; see `metacompress layers`)")


def study_setup(cfg: SearchConfig) -> dict[str, Any]:
    """What a study's trials depend on, by config field (``study.ATTR_SETUP``): the task (its data and teacher),
    the space's bounds, and the fine-tuning's seed and batch size. (The model's layers and the objectives are
    checked by their own attributes.)"""
    task = {"task.factory": cfg.task.factory, "task.kwargs": cfg.task.kwargs} if cfg.task.factory else {
        "task.name": cfg.task.name}
    space = {f"space.{key}": value for key, value in cfg.to_dict()["space"].items()}
    return {**task, "task.seed": cfg.task.seed, **space, "seed": cfg.seed, "train.batch_size": cfg.train.batch_size}


def sampler_seed(seed: int, n_existing: int, worker: int) -> int:
    """The sampler seed of one worker: a resumed study or a second worker must not replay the same draws."""
    return seed if n_existing == 0 and worker == 0 else (seed * 1_000_003 + n_existing * 7919 + worker) % 2**31


def open_worker_study(cfg: SearchConfig, space: CompressionSpace, worker: int = 0) -> optuna.Study:
    """Open (or create) the config's study with a sampler seeded for this worker and the trials already in it."""
    study = open_study(cfg.storage, cfg.study_name, cfg.objectives, make_sampler(cfg.sampler, cfg.seed),
                       space.fingerprint(), study_setup(cfg))
    n_existing = len(study.get_trials(deepcopy=False))
    if n_existing or worker:
        study.sampler = make_sampler(cfg.sampler, sampler_seed(cfg.seed, n_existing, worker))
    return study


def prepare(cfg: SearchConfig, *, progress: bool = False, worker: int = 0) -> Prepared:
    """Load the task (teacher cached), build the space, open or resume the study, build the objective.

    Args:
        cfg: The validated config.
        progress: Show teacher training progress.
        worker: Index of the local worker process (its sampler gets its own seed).
    """
    torch.set_num_threads(max(1, cfg.train.num_threads))
    # a local search trains here: a device this machine lacks stops it now, before the teacher; on Ray each trial
    # resolves the device in its worker, and this process only computes the teacher's logits, where it can
    device = resolve_device(cfg.train.device) if cfg.backend == "optuna" else "auto"
    check_setup(cfg.storage, cfg.study_name, study_setup(cfg))
    task = load_config_task(cfg, progress=progress)
    space = build_space(cfg, task)
    study = open_worker_study(cfg, space, worker)
    reference = study.user_attrs.get(ATTR_REFERENCE)
    if reference is None:  # measured once per study, so every worker and every resume compares the same way
        reference = teacher_metrics(task, latency_repeats=cfg.train.latency_repeats)
        study.set_user_attr(ATTR_REFERENCE, reference)
    if worker == 0:
        check_timing(study)
    objective = Objective(task, space, reference, batch_size=cfg.train.batch_size, device=device,
                          latency_repeats=cfg.train.latency_repeats,
                          trial_timeout_s=cfg.train.trial_timeout_s or float("inf"), seed=cfg.seed)
    return Prepared(cfg, task, space, reference, study, objective)


def check_timing(study: optuna.Study) -> None:
    """Record how this version times latency on a study with no trial yet; on a study whose trials were timed
    another way (an older version timed each student alone, so load on the machine moved its latency), say once
    that its earlier latencies and the new ones are not comparable."""
    recorded = study.user_attrs.get(ATTR_TIMING)
    if recorded == LATENCY_TIMING:
        return
    timed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if "latency_ms" in (t.user_attrs.get("metrics") or {})]
    if not timed:
        study.set_user_attr(ATTR_TIMING, LATENCY_TIMING)
        return
    how = f"timed {recorded!r}" if recorded else "timed by an older metacompress (each student alone)"
    warn_once(_LOG, f"study {study.study_name!r}: its {len(timed)} earlier trials' latencies were {how}; new trials "
                    f"are {LATENCY_TIMING}, so latencies of the two are not comparable (a new --study-name starts a "
                    "front timed alike)")


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in a child process
    """End this worker when the search process ends, ``kill -9`` included.

    An orphaned worker would go on running trials that nobody logs to MLflow, and hold the study's run lock so the
    rerun is refused until it finishes. Its trial in flight is left ``RUNNING`` and re-queued by the rerun.
    """
    try:  # Linux: the kernel sends SIGKILL when the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        watch = not sys.platform.startswith("linux")
    except (OSError, AttributeError):
        watch = True
    if os.getppid() != parent:  # the parent died before we got here
        os._exit(1)

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if watch:
        threading.Thread(target=poll, daemon=True, name="metacompress-parent-watch").start()


def _worker_main(cfg: SearchConfig, worker: int, parent: int) -> None:  # pragma: no cover - runs in a child
    _die_with_parent(parent)
    p = prepare(cfg, worker=worker)
    run_worker(p.study, p.objective, cfg.n_trials, cfg.objectives, p.distributions,
               lock_path(cfg.storage, cfg.study_name, "budget"), artifact_dir=p.artifact_dir)


def _forked_worker(p: Prepared, worker: int, parent: int) -> None:  # pragma: no cover - runs in a child process
    _die_with_parent(parent)
    # A forked child shares the parent's task, teacher and objective (copy-on-write) but nothing that talks to
    # the outside: it opens its own storage (the parent's pooled connections are never touched) and writes to
    # fresh stdio objects (another thread of the parent, e.g. a progress bar, may have held their locks).
    sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115 - the child's stdio for its lifetime
    sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(sys.stderr)
    torch.set_num_threads(1)
    cfg = p.cfg
    study = open_worker_study(cfg, p.space, worker)
    run_worker(study, p.objective, cfg.n_trials, cfg.objectives, p.distributions,
               lock_path(cfg.storage, cfg.study_name, "budget"), artifact_dir=p.artifact_dir)


def start_method(cfg: SearchConfig) -> str:
    """How local workers start: ``fork`` where it is safe, else ``spawn``.

    Forking hands a worker the loaded task and teacher at once (a spawned one first imports torch and loads the
    task, seconds per worker). It is safe on Linux for CPU workers with one torch thread each: an OpenMP pool
    the parent used does not survive ``fork`` (a child with more threads would hang) and CUDA cannot be forked.
    """
    if (sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()
            and max(1, cfg.train.num_threads) == 1 and not torch.cuda.is_initialized()):
        return "fork"
    return "spawn"


def run_local(p: Prepared, on_trial_end: Callable[[FrozenTrial], None] | None = None) -> None:
    """Run the budget with ``parallel.n_jobs`` worker processes (this process is one of them)."""
    cfg = p.cfg
    n_jobs = cfg.parallel.n_jobs if cfg.parallel.n_jobs > 0 else (mp.cpu_count() or 1)
    method = start_method(cfg)
    ctx = mp.get_context(method)
    target, arg = (_forked_worker, p) if method == "fork" else (_worker_main, cfg)
    workers = [ctx.Process(target=target, args=(arg, i, os.getpid()), daemon=True) for i in range(1, n_jobs)]
    if workers and p.before_ask is not None:  # the first warm point waits for whichever worker asks first
        with file_lock(lock_path(cfg.storage, cfg.study_name, "budget")):
            if remaining_budget(p.study, cfg.n_trials) > 0:
                p.before_ask(p.study)
    for w in workers:
        w.start()
    stop = threading.Event()
    # only this process enqueues sequential warm points: forked workers must not run the predictor's OpenMP pool,
    # which the fork left in an undefined state. While it trains, a thread keeps the next point waiting for them.
    keeper = threading.Thread(target=_keep_warm_point_waiting, args=(p, stop), daemon=True) if workers and \
        p.warm is not None else None
    if keeper is not None:
        keeper.start()
    try:
        run_worker(p.study, p.objective, cfg.n_trials, cfg.objectives, p.distributions,
                   lock_path(cfg.storage, cfg.study_name, "budget"), artifact_dir=p.artifact_dir,
                   on_trial_end=on_trial_end, before_ask=p.before_ask)
    finally:
        stop.set()
        if keeper is not None:
            keeper.join()
        for w in workers:
            w.join()


#: How often the warm-point keeper looks whether the waiting point was taken (seconds).
KEEPER_POLL_S = 0.1


def _keep_warm_point_waiting(p: Prepared, stop: threading.Event) -> None:
    """With several local workers: enqueue the next sequential warm point as soon as none is waiting, until all are
    out or the budget is, so the other workers' asks get warm points too (as on Ray, each chosen against the
    observed front and the points still running). Under the budget lock, as an ask."""
    lock = lock_path(p.cfg.storage, p.cfg.study_name, "budget")
    while not stop.wait(KEEPER_POLL_S) and not p.warm.done:
        try:
            with file_lock(lock):
                if remaining_budget(p.study, p.cfg.n_trials) <= 0:
                    return
                enqueue_next_warm_point(p.study, p.warm)
        except Exception as exc:  # noqa: BLE001 - the warm start is a help: its failure never ends the search
            _LOG.warning("warm start stopped: %s: %s", type(exc).__name__, exc)
            return


def trial_points(trials: list[FrozenTrial]) -> list[dict[str, float] | None]:
    """Metrics of each trial (``None`` for failed ones), in trial order."""
    return [t.user_attrs.get("metrics") if t.state == TrialState.COMPLETE else None for t in trials]


def warm_points(trials: list[FrozenTrial], teacher_accuracy: float) -> dict[int, float | None]:
    """Index (into ``trials``) -> the accuracy the predictor expected of each warm-start trial (``None`` where it
    recorded no prediction: a batch or a file's points)."""
    out: dict[int, float | None] = {}
    for i, t in enumerate(trials):
        if ATTR_WARM_SOURCE in t.user_attrs:
            predicted = t.user_attrs.get(ATTR_EXPECTED, t.user_attrs.get(ATTR_PREDICTED))  # older: the model's
            out[i] = None if predicted is None else min(max(float(predicted), 0.0), 1.0) * teacher_accuracy
    return out


def summarize(p: Prepared, trials: list[FrozenTrial], warm: dict[str, Any]) -> dict[str, Any]:
    """The ``summary.json`` contract of DESIGN.md (plus the hypervolume history)."""
    cfg = p.cfg
    points = trial_points(trials)
    front = pareto_front(points, cfg.objectives)
    pareto = []
    for i in sorted(front, key=lambda i: -points[i]["accuracy"]):
        t = trials[i]
        keep = ("accuracy", "size_bytes", "compression_ratio", "latency_ms", "bitops", "speedup")
        pareto.append({"number": t.number, "params": t.user_attrs.get("policy", t.params),
                       "metrics": {k: points[i][k] for k in keep if k in points[i]},
                       "artifact": t.user_attrs.get("artifact"), "model_uri": None})
    return {
        "study_name": cfg.study_name, "task": cfg.task_name, "backend": cfg.backend,
        "n_trials": cfg.n_trials, "n_complete": sum(pt is not None for pt in points),
        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),  # stopped early by Ray's ASHA scheduler
        "objectives": dict(cfg.objectives),
        "teacher": {k: p.reference[k] for k in ("accuracy", "size_bytes", "latency_ms", "bitops") if k in p.reference},
        "warm_start": {**warm, "points": [
            {"number": trials[i].number, "accuracy": None if points[i] is None else points[i]["accuracy"],
             "predicted_accuracy": predicted}
            for i, predicted in warm_points(trials, float(p.reference["accuracy"])).items()]},
        "hypervolume": hypervolume(points, p.reference, cfg.objectives),
        "hypervolume_history": hypervolume_history(points, p.reference, cfg.objectives),
        "pareto": pareto,
        "failures": failures(trials),
    }


def failures(trials: list[FrozenTrial]) -> dict[str, list[int]]:
    """The failed trials' numbers by failure reason, the most frequent reason first."""
    out: dict[str, list[int]] = {}
    for t in trials:
        if t.state == TrialState.FAIL:
            out.setdefault(str(t.user_attrs.get("fail_reason") or "no reason recorded"), []).append(t.number)
    return dict(sorted(out.items(), key=lambda item: -len(item[1])))


def write_outputs(p: Prepared, summary: dict[str, Any], trials: list[FrozenTrial]) -> list[Path]:
    """``summary.json``, the Pareto table (Markdown), the Pareto, per-layer policy and hypervolume plots; returns
    their paths."""
    from .plots import hypervolume_plot, pareto_plot, policy_plot
    from .report import pareto_markdown

    out = Path(p.cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    points = trial_points(trials)
    front = pareto_front(points, p.cfg.objectives)
    paths = [out / "summary.json", out / "pareto.md", out / "pareto.png", out / "hypervolume.png"]
    paths[0].write_text(json.dumps(summary, indent=2))
    paths[1].write_text(pareto_markdown(summary))
    name = p.cfg.study_name
    warm = warm_points(trials, float(p.reference["accuracy"]))
    pareto_plot(points, front, p.reference, paths[2], title=name if name == p.cfg.task_name else f"{name}: "
                f"{p.cfg.task_name}", numbers=[t.number for t in trials], warm=warm)
    hypervolume_plot(summary["hypervolume_history"], paths[3], warm=list(warm),
                     maximum=max_hypervolume(p.cfg.objectives))
    if summary["pareto"]:
        paths.append(policy_plot(summary["pareto"], p.space.layers, out / "policies.png",
                                 title=f"{name}: per-layer policy of the Pareto models", teacher=p.reference,
                                 pruned=_pruned_shares(p, summary["pareto"])))
    return paths


def _pruned_shares(p: Prepared, pareto: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Trial number -> layer -> the share of its weights the Pareto student lost (``learners.pruned_share``), for
    the entries whose params are a policy of this model (the plot shows the others' ratios)."""
    example = p.task.example_input(2)
    out = {}
    for entry in pareto:
        try:
            policy = CompressionPolicy.from_dict(entry["params"], p.space.layer_names)
        except ConfigError:
            continue
        out[entry["number"]] = pruned_share(p.task.teacher, policy, example)
    return out


def _in_use(cfg: SearchConfig) -> ConfigError:
    return ConfigError(f"The 'study_name' value must not be in use by another running search (one search per "
                       f"study and storage at a time). Got {cfg.study_name!r}.", "study_name")


def check_not_running(cfg: SearchConfig) -> None:
    """Refuse, before any work, a study another search is running now (its run lock is held). The search itself
    takes the lock for good; this only says so before the study line, the teacher and the warm start."""
    with file_lock(lock_path(cfg.storage, cfg.study_name, "run"), blocking=False) as free:
        if not free:
            raise _in_use(cfg)


def check_out(out: str | Path) -> Path:
    """Check, before any work, that the output folder ``out`` can be created and written
    (:func:`~.checks.writable_folder`).

    Raises:
        ConfigError: naming ``out``.
    """
    return writable_folder("out", out)


def run_search(
    cfg: SearchConfig,
    *,
    warm_points: list[dict[str, Any]] | SequentialWarmStart | None = None,
    warm_info: dict[str, Any] | None = None,
    on_trial_end: Callable[[FrozenTrial, Prepared], None] | None = None,
    prepared: Prepared | None = None,
    tracker: Any = None,
    flush_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run (or resume) the search of ``cfg`` to its budget and return the summary.

    When the tracking store fails mid-search the search goes on (the study is the source of truth); at the end
    :func:`flush_tracking` retries the MLflow logging with backoff, and ``summary["tracking_flushed"]`` says
    whether it all arrived (when False, one warning line asks to rerun the same command, which flushes it).

    Args:
        cfg: The validated config.
        warm_points: Params to enqueue first (once per study), or a :class:`~.warmstart.SequentialWarmStart`
            whose points are enqueued one at a time (local backend).
        warm_info: What the summary says about the warm start.
        on_trial_end: Called after each trial this process ran (progress bars).
        prepared: A :func:`prepare` result to reuse.
        tracker: A :func:`make_tracker` result to reuse.
        flush_timeout_s: How long to retry an unreachable tracking store at the end (default: environment
            variable ``METACOMPRESS_TRACKING_FLUSH_S``, else 120 s).
    """
    if flush_timeout_s is None:
        flush_timeout_s = float(os.environ.get("METACOMPRESS_TRACKING_FLUSH_S", "120"))
    check_out(cfg.out)
    tracker = tracker or make_tracker(cfg)  # fail fast, before any training, when the tracking server is down
    if prepared is None and cfg.backend == "ray":  # a caller that prepares checks first (the CLI, retrain)
        from .ray_backend import check_ray

        check_ray(cfg)
    p = prepared or prepare(cfg)
    with file_lock(lock_path(cfg.storage, cfg.study_name, "run"), blocking=False) as owned:
        if not owned:
            raise _in_use(cfg)
        recover_interrupted(p.study)
        if isinstance(warm_points, SequentialWarmStart):
            enqueue_points(p.study, warm_points.first, source=(warm_info or {}).get("mode", "auto"))
            p.warm = warm_points
        else:
            enqueue_points(p.study, warm_points or [], source=(warm_info or {}).get("mode", "file"))

        def restart() -> None:  # the parent run and its meta.json; again after a tracking outage
            tracker.start_parent(cfg.study_name, tags=parent_tags(cfg, warm_info), params=cfg.to_dict())
            log_meta(p, tracker)

        restart()
        synced: set[int] = set()
        sync_tracking(tracker, counted_trials(p.study), synced, p.space)

        def after_trial(trial: FrozenTrial) -> None:
            sync_tracking(tracker, counted_trials(p.study), synced, p.space)
            if on_trial_end is not None:
                on_trial_end(trial, p)

        try:
            if cfg.backend == "ray":
                from .ray_backend import run_ray

                run_ray(p, on_trial_end=after_trial)
            else:
                run_local(p, on_trial_end=after_trial)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the parent run says so until a rerun resumes it
            tracker.finish("KILLED")
            raise
        trials = counted_trials(p.study)
        summary = summarize(p, trials, warm_info or {"mode": "off", "n_points": 0})

        def track_end() -> None:
            sync_tracking(tracker, trials, set(), p.space)  # a fresh set: trials handed over during an outage were lost
            log_pareto_models(p, tracker, summary)
            tracker.mark_pareto({e["number"] for e in summary["pareto"]})
            tracker.log_artifacts(write_outputs(p, summary, trials))
            tracker.finish("FINISHED")

        summary["tracking_flushed"] = flush_tracking(tracker, track_end, restart, flush_timeout_s)
        if not summary["tracking_flushed"]:
            write_outputs(p, summary, trials)
    return summary
