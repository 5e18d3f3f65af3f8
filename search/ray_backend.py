"""Where it runs, on Ray: a Ray Tune ``Tuner`` whose searcher is ``OptunaSearch`` on the search's own study.

The Optuna study stays the single source of truth. :class:`StudySearch` (an ``OptunaSearch`` on the same storage
and study name, with the study's sampler) asks the study for every trial, so enqueued warm-start points and trials
re-queued after an interruption (both ``WAITING``) are picked up first, local and Ray runs add to one history, and
only the budget still open (``n_trials`` less the counted trials) is launched. Before each ask it enqueues the next
sequential warm-start point when one is due (:func:`~metacompress.search.warmstart.enqueue_next_warm_point`), so
a Ray search chooses its warm points against the front its finished trials observed, as a local one does.

Each trial runs :class:`~metacompress.search.objective.Objective` in a Ray worker. The objective (teacher, data,
teacher logits) is put into the object store once and cached per worker process, so with ``reuse_actors`` a
worker deserializes it once, not once per trial. The trainable reports one Tune result per epoch
(``epoch``, ``loss``, ``val_accuracy``) — the ASHA scheduler's single metric is ``val_accuracy`` over ``epoch`` —
and then one final result with every objective plus a JSON payload (metrics, history, policy, timing, artefact
path). The searcher runs in the driver and writes that payload as the trial's user attributes before telling the
study, exactly as :func:`~metacompress.search.local.record_outcome` does, so the summary and the MLflow sync work
unchanged. A trial stopped by ASHA is told ``PRUNED``, a failed one ``FAIL``, each with a ``fail_reason``.

Resume is the study's: :func:`~metacompress.search.runner.run_search` re-queues interrupted trials, and every call
starts a fresh Tune experiment for the open budget. ``Tuner.restore`` is deliberately not used: a restored
searcher would tell trials the study has already failed and re-queued, and would run the old budget.

Artefacts (``.mcz``) are written by the workers to ``out/trials``; on a multi-machine cluster ``out`` must be on
shared storage, and the Optuna storage must be reachable from the driver (an RDB server for ``ray://`` clients).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

for _key, _value in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                     "RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
                     "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
                     "RAY_DEDUP_LOGS": "0",
                     # Ctrl-C ends the search as on the local backend (KeyboardInterrupt: exit 130, rerun to
                     # resume); Tune's own handler would end the run quietly and return as if it had finished.
                     "TUNE_DISABLE_SIGINT_HANDLER": "1"}.items():
    os.environ.setdefault(_key, _value)
# Per-epoch results carry the scheduler's metric only; the objectives come with the final result.
os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from metacompress.spaces import ConfigError, MetacompressError, Terminated, invalid_value  # noqa: E402

from .checks import writable_folder  # noqa: E402
from .objective import Objective, TrialFailed, resolve_device  # noqa: E402
from .study import counted_trials, remaining_budget  # noqa: E402

__all__ = ["StudySearch", "TrialEndCallback", "check_ray", "run_ray", "init_ray"]

_LOG = logging.getLogger(__name__)
# Tune's result loggers are off (the study and MLflow are the records): its analysis would warn about each trial.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
logging.getLogger("ray.tune.tune").setLevel(logging.WARNING)  # "Wrote the latest version of all result files..."
# Every local Ray says that it turned token authentication on, as it should; the warning that it is *off* stays.
logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
    lambda record: not str(record.msg).startswith("Token authentication is enabled"))
#: Keys the searcher adds to each Tune config: the Optuna trial's storage id and number.
TRIAL_ID_KEY, NUMBER_KEY = "_mc_trial_id", "_mc_number"
#: Keys of the final Tune result: the JSON payload of a finished trial, or the reason it failed.
PAYLOAD_KEY, FAILED_KEY = "mc_payload", "mc_failed"
#: The scheduler's metric and time attribute (the per-epoch results only carry them).
SCHEDULER_METRIC, SCHEDULER_TIME = "val_accuracy", "epoch"
_WORKER_OBJECTIVE: dict[str, Objective] = {}  # per worker process: object ref hex -> deserialized objective


class StudySearch(OptunaSearch):
    """``OptunaSearch`` on an existing study that records trials the way the local backend does.

    Args:
        study: The search's study (its storage, name and sampler are reused).
        distributions: The Optuna distributions of the space.
        objectives: Objective name -> ``maximize`` | ``minimize``, in the study's order.
        before_ask: Called with the study before each ask, in the driver (the sequential warm start enqueues its
            next point there: Tune asks one trial at a time, so no lock is needed).
    """

    def __init__(self, study: optuna.Study, distributions: Mapping[str, Any], objectives: Mapping[str, str],
                 before_ask: Callable[[optuna.Study], Any] | None = None):
        super().__init__(space=dict(distributions), metric=list(objectives),
                         mode=["max" if d == "maximize" else "min" for d in objectives.values()],
                         sampler=study.sampler, study_name=study.study_name, storage=study._storage)
        self._objectives = dict(objectives)
        self._histories: dict[str, list[dict[str, float]]] = {}
        self._before_ask = before_ask

    def save(self, checkpoint_path: str) -> None:
        """Tune's experiment checkpoint, without the warm-start hook (it holds the task and the predictor, and a
        resumed search builds its own: the study is what resumes, not Tune's state)."""
        hook, self._before_ask = self._before_ask, None
        try:
            super().save(checkpoint_path)
        finally:
            self._before_ask = hook

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Ask the study (``WAITING`` trials first, after ``before_ask``); the config also names the Optuna trial."""
        if self._before_ask is not None:
            self._before_ask(self._ot_study)
        config = super().suggest(trial_id)
        if config is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        return {**config, TRIAL_ID_KEY: ot_trial._trial_id, NUMBER_KEY: ot_trial.number}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Keep the per-epoch records (the history of a trial ASHA stops)."""
        if SCHEDULER_TIME not in result:
            return
        record = {k: float(result[k]) for k in (SCHEDULER_TIME, "loss", SCHEDULER_METRIC) if k in result}
        history = self._histories.setdefault(trial_id, [])
        while history and history[-1][SCHEDULER_TIME] >= record[SCHEDULER_TIME]:
            history.pop()  # the same result again, or the trial was restarted after a failure
        history.append(record)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Write the trial's user attributes, then tell the study ``COMPLETE``, ``PRUNED`` or ``FAIL``."""
        ot_trial = self._ot_trials.get(trial_id)
        if trial_id in self._completed_trials or ot_trial is None:
            return
        storage, tid, result = self._ot_study._storage, ot_trial._trial_id, result or {}
        if SCHEDULER_TIME in result:  # the result ASHA stopped the trial on never reached on_trial_result
            self.on_trial_result(trial_id, result)
        history = self._histories.pop(trial_id, [])
        try:
            if result.get(PAYLOAD_KEY) and not error:
                data = json.loads(result[PAYLOAD_KEY])
                for key in ("metrics", "history", "policy", "timing", "artifact", "ray"):
                    storage.set_trial_user_attr(tid, key, data.get(key))
                self._ot_study.tell(ot_trial, [float(data["metrics"][k]) for k in self._objectives])
            else:
                state, reason = _unfinished(result, error, history)
                storage.set_trial_user_attr(tid, "fail_reason", reason)
                storage.set_trial_user_attr(tid, "history", history)
                self._ot_study.tell(ot_trial, state=state)
        except Exception as exc:  # noqa: BLE001 - a bad record must not end the Tune run
            _LOG.warning("could not record trial %s in the study: %s", ot_trial.number, exc)
        self._completed_trials.add(trial_id)


def _unfinished(result: Mapping[str, Any], error: bool, history: list[dict[str, float]]) -> tuple[TrialState, str]:
    """State and reason of a trial that produced no final metrics."""
    if result.get(FAILED_KEY):
        return TrialState.FAIL, str(result[FAILED_KEY])
    if error:
        return TrialState.FAIL, "Ray Tune reported an error after the allowed retries (ray.max_failures); see " \
                                "error.txt in the trial's folder under ray.storage_path"
    if history:
        last = history[-1]
        return TrialState.PRUNED, (f"stopped early by the ASHA scheduler after epoch {int(last[SCHEDULER_TIME])} "
                                   f"({SCHEDULER_METRIC}={last.get(SCHEDULER_METRIC, float('nan')):.4f})")
    return TrialState.PRUNED, "stopped by Ray Tune before its first epoch ended"


class TrialEndCallback(tune.Callback):
    """Calls ``on_trial_end(frozen_trial)`` after the searcher has recorded a trial (progress bar, MLflow sync).

    The hook and the study stay in the driver: they are dropped when Tune pickles its run config.
    """

    def __init__(self, study: optuna.Study, on_trial_end: Callable[[FrozenTrial], None] | None) -> None:
        self._study, self._on_trial_end = study, on_trial_end

    def __getstate__(self) -> dict[str, Any]:
        return {"_study": None, "_on_trial_end": None}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._emit(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._emit(trial)

    def _emit(self, trial: Any) -> None:
        tid = (trial.config or {}).get(TRIAL_ID_KEY)
        if self._on_trial_end is None or self._study is None or tid is None:
            return
        try:
            self._on_trial_end(self._study._storage.get_trial(tid))
        except Exception as exc:  # noqa: BLE001 - progress/tracking must not end the Tune run
            _LOG.warning("trial-end hook failed: %s", exc)


def _worker_objective(ref: Any, device: str, num_threads: int) -> Objective:
    """The objective behind ``ref``, fetched from the object store once per worker process."""
    import ray
    import torch

    key = ref.hex()
    objective = _WORKER_OBJECTIVE.get(key)
    if objective is None:
        objective = ray.get(ref)
        objective.device = resolve_device(device)
        torch.set_num_threads(max(1, num_threads))
        _WORKER_OBJECTIVE.clear()
        _WORKER_OBJECTIVE[key] = objective
    return objective


def _epochs(objective: Objective, params: Mapping[str, Any]) -> int:
    try:
        return int(objective.space.decode(params).epochs)
    except Exception:  # noqa: BLE001 - the objective reports the bad point as a failed trial
        return 0


def _make_trainable(holder: list, artifact_dir: str, device: str, num_threads: int) -> Callable[[dict], None]:
    """A function trainable closing over small things only (``holder`` wraps the objective's object ref)."""

    def metacompress_trial(config: dict[str, Any]) -> None:
        import ray

        objective = _worker_objective(holder[0], device, num_threads)
        params = {k: v for k, v in config.items() if k not in (TRIAL_ID_KEY, NUMBER_KEY)}
        epochs = _epochs(objective, params)

        def report(epoch: int, record: Mapping[str, float]) -> bool:
            if epoch < epochs:  # the last epoch is judged by nobody: stopping it would save nothing
                tune.report({k: float(v) for k, v in record.items() if isinstance(v, (int, float))
                             and math.isfinite(float(v))} | {SCHEDULER_TIME: int(epoch)})
            return False  # Tune stops the trial itself (ASHA)

        try:
            outcome = objective(params, report=report)
            artifact = Path(artifact_dir) / f"trial-{config[NUMBER_KEY]}.mcz"
            artifact.parent.mkdir(parents=True, exist_ok=True)
            objective.save(outcome, artifact)
        except TrialFailed as exc:
            tune.report({FAILED_KEY: str(exc) or type(exc).__name__})
            return
        ctx = ray.get_runtime_context()
        payload = {"metrics": outcome.metrics, "history": outcome.history, "policy": outcome.policy.to_dict(),
                   "timing": outcome.timing, "artifact": str(artifact),
                   "ray": {"node_id": ctx.get_node_id(), "pid": os.getpid(), "gpu_ids": list(ray.get_gpu_ids()),
                           "device": objective.device}}
        finals = {k: float(v) for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
        tune.report(finals | {PAYLOAD_KEY: json.dumps(payload, default=float)})

    return metacompress_trial


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[Callable[[], None]]:
    """SIGTERM raises :class:`Terminated` in the driver from the moment the block calls the function it yields
    (right after ``ray.init``, which installs a handler of its own: the process then exits 15 without a word, or
    the Ray core worker's crash handler pre-empts it: a native stack dump, exit 134) until the block ends, when
    the handler from before the block is back (the CLI's, for the end of the search)."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = signal.getsignal(signal.SIGTERM)

    def ours() -> None:
        signal.signal(signal.SIGTERM, Terminated.raise_for)

    try:
        yield ours
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _storage_path(path: str) -> str:
    """Tune's ``storage_path``: a URI (``s3://``, ``gs://``) as it is, a local folder absolute."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


#: Seconds a Ray address has to answer before the search is refused.
ADDRESS_TIMEOUT_S = 3.0


def _address_endpoint(address: str) -> tuple[str, int]:
    """The ``(host, port)`` a Ray address connects to first (``auto`` resolved as ``ray.init`` resolves it)."""
    want = "auto, ray://HOST[:PORT] or HOST:PORT of a running Ray cluster"
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die  # noqa: PLC0415
        except ImportError:  # pragma: no cover - another Ray: ray.init says it later
            return "", 0
        try:
            address = canonicalize_bootstrap_address_or_die("auto")
        except (ConnectionError, ValueError) as exc:
            raise invalid_value("ray.address", f"{want} ({str(exc).split('. ')[0]})", address) from None
    rest, default_port = (address[len("ray://"):], 10001) if address.startswith("ray://") else (address, None)
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not port and default_port:
        host, port = rest, str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise invalid_value("ray.address", want, address)
    return host.strip("[]"), int(port)


def check_ray(cfg: Any) -> None:
    """Refuse a Ray search that could never run, before any work: an address where nothing answers (``ray.init``
    would retry for minutes), or resources per trial the local Ray this search starts does not have (Tune would
    wait for them forever), or a local ``ray.storage_path`` that cannot be written (Tune would fail after Ray
    started)."""
    if "://" not in cfg.ray.storage_path:  # a URI (s3://, gs://) is the cluster's to reach
        writable_folder("ray.storage_path", Path(cfg.ray.storage_path).expanduser())
    address = cfg.ray.address
    if address:
        host, port = _address_endpoint(address)
        if host:
            try:
                socket.create_connection((host, port), timeout=ADDRESS_TIMEOUT_S).close()
            except OSError as exc:
                raise invalid_value("ray.address", f"the address of a running Ray cluster (nothing answers at "
                                    f"{host}:{port}: {exc.strerror or type(exc).__name__})", address) from None
        return
    import ray  # noqa: PLC0415

    if ray.is_initialized():  # a Ray the caller started: its resources
        have = {k: float(v) for k, v in ray.cluster_resources().items()}
        cpus, gpus, where = have.get("CPU", 0.0), have.get("GPU", 0.0), "the running Ray"
    else:
        import torch  # noqa: PLC0415

        cpus = float(os.cpu_count() or 1)
        gpus = float(torch.cuda.device_count())
        where = "the local Ray this search starts; pass --address for a cluster"
    for name, unit, want, have in (("ray.cpus_per_trial", "CPUs", cfg.ray.cpus_per_trial, cpus),
                                   ("ray.gpus_per_trial", "GPUs", cfg.ray.gpus_per_trial, gpus)):
        if float(want) > have:
            raise ConfigError(f"The '{name}' value must be at most {have:g} (the {unit} of {where}). Got {want}.",
                              name)


def init_ray(address: str | None) -> bool:
    """Connect to ``address`` (``auto``, ``ray://…``, ``host:port``) or start a local Ray on every core.

    Returns:
        True when this call started or connected Ray (so the caller shuts it down), False when Ray was already up.
    """
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address and address.startswith("ray://"):
        ray.init(address=address, **quiet)
    elif address:
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, **quiet)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, ignore_reinit_error=True, **quiet)
    return True


def _scheduler(p: Any) -> Any:
    """ASHA on per-epoch ``val_accuracy``; trials are never stopped just for reaching ``max_t``."""
    from ray.tune.schedulers import ASHAScheduler

    cfg = p.cfg
    max_t = int(cfg.space.epochs.high) - 1  # a trial's last epoch is not reported per epoch
    if not cfg.ray.asha or max_t < 1:
        return None
    return ASHAScheduler(time_attr=SCHEDULER_TIME, metric=SCHEDULER_METRIC, mode="max", max_t=max_t,
                         grace_period=min(cfg.ray.grace_period, max_t), stop_last_trials=False)


def run_ray(p: Any, on_trial_end: Callable[[FrozenTrial], None] | None = None) -> None:
    """Run the study's open budget as a Ray Tune experiment (see the module docstring).

    Args:
        p: The :class:`~metacompress.search.runner.Prepared` search.
        on_trial_end: Called in this process with each trial's frozen record once the study has it.
    """
    cfg = p.cfg
    n = remaining_budget(p.study, cfg.n_trials)
    if n <= 0:
        return
    with _sigterm_interrupts() as ours:
        _run_tuner(p, n, ours, on_trial_end)
    if remaining_budget(p.study, cfg.n_trials) > 0:  # Tune returned before its samples ran (stopped from outside)
        raise MetacompressError(f"the Ray run ended with {len(counted_trials(p.study))} of {cfg.n_trials} trials "
                                f"finished; rerun the same command to resume")


def _run_tuner(p: Any, n: int, ours: Callable[[], None], on_trial_end: Callable[[FrozenTrial], None] | None
               ) -> None:
    """Start (or join) Ray, call ``ours`` (SIGTERM handling after ``ray.init``), run ``n`` trials with Tune."""
    import copy

    import ray
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

    cfg = p.cfg
    started = init_ray(cfg.ray.address)
    ours()
    try:
        objective = copy.copy(p.objective)
        if objective.teacher_logits is not None:
            objective.teacher_logits = objective.teacher_logits.cpu()
        holder = [ray.put(objective)]
        trainable = tune.with_resources(
            _make_trainable(holder, str(p.artifact_dir.resolve()), cfg.train.device, cfg.train.num_threads),
            {"cpu": cfg.ray.cpus_per_trial, "gpu": cfg.ray.gpus_per_trial})
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(search_alg=StudySearch(p.study, p.distributions, cfg.objectives, p.before_ask),
                                   scheduler=_scheduler(p), num_samples=n,
                                   max_concurrent_trials=cfg.ray.max_concurrent, reuse_actors=cfg.ray.reuse_actors),
            run_config=RunConfig(
                name=f"{cfg.study_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                storage_path=_storage_path(cfg.ray.storage_path),
                failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                callbacks=[TrialEndCallback(p.study, on_trial_end)], verbose=0),
        )
        tuner.fit()
    finally:
        if started:
            ray.shutdown()
