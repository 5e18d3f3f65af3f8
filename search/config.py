"""The experiment YAML, validated into a :class:`SearchConfig`.

:func:`load_config` reads the file, applies CLI overrides (dotted keys such as ``space.bits`` or ``n_trials``, with
``None`` values ignored), then validates every section. Every problem raises
:class:`~metacompress.spaces.errors.ConfigError` with the dotted field in the message, e.g.
``The 'space.prune.high' value must be a number in [0, 1). Got 1.2.``

Each dataclass field carries its default and, in its metadata, the check for a user value. Shorthands: ``task: x``
(= ``{name: x}``), ``warm_start: off`` (= ``{mode: off}``), ``objectives: [accuracy, size_bytes]`` (natural
directions), a scalar for a range (``epochs: 2`` = ``{low: 2, high: 2}``). The field checks themselves are in
:mod:`.checks`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metacompress.search.checks import (
    FloatRange,
    IntRange,
    boolean,
    choice,
    mapping,
    number,
    option,
    section,
    string,
    subset,
    validate,
    value_range,
)
from metacompress.search.pareto import check_objectives
from metacompress.spaces.errors import ConfigError, close_hint, invalid_value, unknown_key
from metacompress.spaces.policy import ALLOWED_BITS, PRUNE_METHODS

_LOG = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_TASKS", "FloatRange", "IntRange", "TaskConfig", "WarmStartConfig", "SpaceConfig", "TrainConfig",
    "RayConfig", "ParallelConfig", "SearchConfig", "config_from_dict", "load_config", "tracking_uri_value",
]

BUILTIN_TASKS = ("digits-mlp", "digits-cnn", "mnist1d-mlp", "mnist1d-cnn", "wine-mlp", "breast-cancer-mlp",
                 "digits-5w5s", "mnist1d-5w10s")
_SHORTHAND = {"task": "name", "warm_start": "mode"}  # `task: digits-cnn` == `task: {name: digits-cnn}`
_FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_STORAGE_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://.+|.+\.log)$")
_STORAGE_WANT = "an RDB URL like 'sqlite:///metacompress.db', a path ending in '.log', or 'journal:///path'"
def _grouping(name: str, v: Any) -> str | dict[str, str]:
    if isinstance(v, str) and v in ("per-layer", "auto"):
        return v
    if isinstance(v, str):
        raise ConfigError(f"The '{name}' value must be 'per-layer', 'auto' or a non-empty mapping {{group_name: "
                          f"regex}}. Got {v!r}.{close_hint(v, ('per-layer', 'auto'))}", name)
    if not isinstance(v, Mapping) or not v:
        raise invalid_value(name, "'per-layer', 'auto' or a non-empty mapping {group_name: regex}", v)
    for group, pattern in v.items():
        try:
            re.compile(string()(f"{name}.{group}", pattern))
        except re.error as exc:
            raise invalid_value(f"{name}.{group}", f"a valid regular expression ({exc})", pattern) from None
    return {str(k): str(p) for k, p in v.items()}


def _task(name: str, v: Any) -> TaskConfig:
    if v is None:
        raise invalid_value(name, "a built-in task name, {name: ..., seed: ...} or {factory: 'pkg.mod:fn'}", None)
    task = TaskConfig(**validate(name, {"name": v} if isinstance(v, str) else v, TaskConfig))
    if task.factory is None and task.name not in BUILTIN_TASKS:
        raise unknown_key(name if isinstance(v, str) else f"{name}.name", task.name, BUILTIN_TASKS)
    task.kwargs = dict(task.kwargs)
    return task


def tracking_uri_value(name: str, v: Any) -> str:
    """The tracking URI check: ``null`` is the default store, any case of ``none`` turns tracking off."""
    v = string()(name, "sqlite:///mlflow.db" if v is None else v)
    return "none" if v.lower() == "none" else v


def _warm_file(name: str, v: Any) -> str | None:
    if v is not None and not Path(string()(name, v)).is_file():
        raise invalid_value(name, "an existing JSON file or null", v)
    return v


def _warm_start(name: str, v: Any) -> WarmStartConfig:
    return WarmStartConfig(**validate(name, {"mode": v} if isinstance(v, (str, bool)) else v, WarmStartConfig))


def _warm_mode(name: str, v: Any) -> str:  # YAML 1.1 reads a bare `off` as false
    return choice("auto", "off")(name, ("auto" if v else "off") if isinstance(v, bool) else v)


#: Warm-start points at most (a config's ``warm_start.n_points``, ``suggest --n``): beyond it the proposals are
#: no longer a warm start but a search of their own (each is chosen against a pool of 10 000 candidates).
MAX_WARM_POINTS = 256


@dataclass
class TaskConfig:
    """Which task to compress: a built-in ``name`` or a ``factory`` ``"pkg.mod:fn"`` called with ``kwargs``."""

    name: str | None = option(None, string(nullable=True))
    seed: int = option(0, number("int", 0))
    factory: str | None = option(None, string(True, _FACTORY_RE, "an import path like 'my_pkg.my_module:make_task'"))
    kwargs: dict[str, Any] = option(dict, mapping, factory=True)


@dataclass
class WarmStartConfig:
    """Meta-learned warm start: ``mode`` auto|off, ``n_points`` enqueued trials, optional JSON ``file``."""

    mode: str = option("auto", _warm_mode)
    n_points: int = option(8, number("int", 1, MAX_WARM_POINTS))  # none: mode off
    file: str | None = option(None, _warm_file)


@dataclass
class SpaceConfig:
    """Bounds of the compression search space, as plain data (see :meth:`build`)."""

    grouping: str | dict[str, str] = option("per-layer", _grouping)
    prune: FloatRange = option(FloatRange(0.0, 0.9), value_range(number("float", 0.0, 1.0, hi_open=True)))
    prune_method: tuple[str, ...] = option(("unstructured",), subset(PRUNE_METHODS))
    bits: tuple[int, ...] = option((2, 3, 4, 6, 8), subset(ALLOWED_BITS, sort=True))
    act_bits: tuple[int, ...] | None = option(None, subset(ALLOWED_BITS, nullable=True, sort=True))
    kd_lambda: FloatRange = option(FloatRange(0.0, 1.0), value_range(number("float", 0.0, 1.0)))
    temperature: FloatRange = option(FloatRange(1.0, 8.0), value_range(number("float", 0.0, lo_open=True)))
    epochs: IntRange = option(IntRange(1, 3), value_range(number("int", 0), is_float=False))
    lr: FloatRange = option(FloatRange(1e-4, 1e-2, log=True), value_range(number("float", 0.0, lo_open=True)))
    feature_beta: FloatRange = option(FloatRange(0.0, 0.0), value_range(number("float", 0.0)))  # feature-map KD weight
    prox_mu: FloatRange = option(FloatRange(0.0, 0.0), value_range(number("float", 0.0)))  # proximal-term weight

    def build(self, layers: Any) -> Any:
        """Build a ``metacompress.spaces.CompressionSpace`` over ``layers`` (the teacher's compressible layers)."""
        from metacompress.spaces import Categorical, CompressionSpace, Float, Int, Ordinal

        def real(r: FloatRange) -> Any:
            return Float(r.low, r.high, log=True) if r.log else Float(r.low, r.high)

        return CompressionSpace(
            layers, grouping=self.grouping, prune=real(self.prune), bits=Ordinal(tuple(self.bits)),
            prune_method=Categorical(self._prune_methods(layers)), kd_lambda=real(self.kd_lambda),
            act_bits=Ordinal(tuple(self.act_bits)) if self.act_bits else None, temperature=real(self.temperature),
            epochs=Int(self.epochs.low, self.epochs.high), lr=real(self.lr), feature_beta=real(self.feature_beta),
            prox_mu=real(self.prox_mu))


    def _prune_methods(self, layers: Any) -> tuple[str, ...]:
        """``prune_method`` without ``structured`` when no layer can lose whole output channels: such trials would
        prune nothing (with ``structured`` alone that is bad input)."""
        methods = tuple(self.prune_method)
        if "structured" not in methods or any(info.structured for info in layers):
            return methods
        if methods == ("structured",):
            raise ConfigError("The 'space.prune_method' value must include 'unstructured' for this model: none of "
                              "its layers can lose whole output channels, so structured pruning would prune nothing. "
                              "Got ['structured'].", "space.prune_method")
        warn_once(_LOG, "space.prune_method: no layer of this model can lose whole output channels; 'structured' "
                        "is left out (it would prune nothing)")
        return tuple(m for m in methods if m != "structured")


_SAID: set[str] = set()


def warn_once(logger: logging.Logger, message: str) -> None:
    """Log ``message`` as a warning the first time this process meets it (some commands build a space twice)."""
    if message not in _SAID:
        _SAID.add(message)
        logger.warning(message)


@dataclass
class TrainConfig:
    """Per-trial training and measurement settings (``trial_timeout_s: null`` = no timeout)."""

    batch_size: int = option(64, number("int", 1))
    device: str = option("auto", string(pattern=_DEVICE_RE, want="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"))
    latency_repeats: int = option(20, number("int", 1))
    trial_timeout_s: float | None = option(600.0, number("float", 0.0, lo_open=True, nullable=True))
    num_threads: int = option(1, number("int", 1))


@dataclass
class RayConfig:
    """Ray Tune backend settings (ignored by the Optuna backend; ``max_failures: -1`` = retry forever)."""

    address: str | None = option(None, string(nullable=True))
    cpus_per_trial: float = option(1.0, number("float", 0.0, lo_open=True))
    gpus_per_trial: float = option(0.0, number("float", 0.0))
    max_concurrent: int = option(2, number("int", 1))
    asha: bool = option(True, boolean)
    grace_period: int = option(1, number("int", 1))
    max_failures: int = option(2, number("int", 0, allow=(-1,)))
    storage_path: str = option("ray_results", string())
    reuse_actors: bool = option(True, boolean)


@dataclass
class ParallelConfig:
    """Local parallelism of the Optuna backend (``n_jobs`` worker processes; -1 = all cores)."""

    n_jobs: int = option(1, number("int", 1, allow=(-1,)))


@dataclass
class SearchConfig:
    """One validated search experiment. Build it with :func:`load_config`."""

    task: TaskConfig = field(metadata={"check": _task})
    study_name: str = field(metadata={"check": string(nullable=True)})
    experiment_name: str = field(metadata={"check": string(nullable=True)})
    out: str = field(metadata={"check": string(nullable=True)})
    n_trials: int = option(20, number("int", 1))
    seed: int = option(0, number("int", 0))
    backend: str = option("optuna", choice("optuna", "ray"))
    sampler: str = option("tpe", choice("tpe", "nsga2", "gp", "random"))
    objectives: dict[str, str] = option(lambda: {"accuracy": "maximize", "size_bytes": "minimize"},
                                      check_objectives, factory=True)
    storage: str = option("sqlite:///metacompress.db", string(pattern=_STORAGE_RE, want=_STORAGE_WANT))
    tracking_uri: str = option("sqlite:///mlflow.db", tracking_uri_value)
    warm_start: WarmStartConfig = option(WarmStartConfig, _warm_start, factory=True)
    space: SpaceConfig = section(SpaceConfig)
    train: TrainConfig = section(TrainConfig)
    ray: RayConfig = section(RayConfig)
    parallel: ParallelConfig = section(ParallelConfig)
    config_path: str | None = None

    @property
    def task_name(self) -> str:
        """The task's name: the built-in name, else the factory's function name."""
        return self.task.name or str(self.task.factory).rsplit(":", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe nested dict of every resolved value (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


# --------------------------------------------------------------------------- loading


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Set each dotted key of ``overrides`` in ``data`` (in place); ``None`` values are skipped."""
    for dotted, value in overrides.items():
        parts = str(dotted).replace("-", "_").split(".")
        if value is None:
            continue
        if parts == ["warm_start"] and isinstance(value, (str, bool)):
            parts = ["warm_start", "mode"]  # --warm-start off keeps the file's n_points
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, (str, bool)) and i == 0 and part in _SHORTHAND:
                child = {_SHORTHAND[part]: child}
            elif child is not None and not isinstance(child, Mapping):
                raise invalid_value(".".join(parts[: i + 1]), "a mapping to override a key inside", child)
            node[part] = node = dict(child or {})
        node[parts[-1]] = value


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    def error(want: str) -> ConfigError:
        return ConfigError(f"The 'config' value must be {want}. Got {str(path)!r}.", field="config")

    if not path.is_file():
        raise error("an existing YAML file")
    if path.suffix.lower() in (".toml", ".ini", ".cfg"):  # would parse as a YAML string: say what is read
        raise error(f"a YAML file (configs are YAML, not {path.suffix.lower()[1:].upper()})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise error(f"a readable YAML file ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, Mapping):
        raise error("a YAML mapping of keys to values, not an empty file" if data is None else
                    f"a YAML mapping of keys to values, not {type(data).__name__}")
    return dict(data)


def config_from_dict(data: Mapping[str, Any], *, stem: str = "search",
                     overrides: Mapping[str, Any] | None = None, config_path: str | None = None) -> SearchConfig:
    """Validate an already-parsed config mapping (see :func:`load_config`); ``stem`` is the default study name."""
    data = dict(mapping("config", data))
    _beside_config(data, config_path)
    _apply_overrides(data, overrides or {})
    values = validate("", data, SearchConfig)
    values["task"] = values.get("task") or _task("task", None)
    values["study_name"] = values.get("study_name") or stem
    task_name = values["task"].name or str(values["task"].factory).rsplit(":", 1)[-1]
    values["experiment_name"] = values.get("experiment_name") or f"metacompress-{task_name}"
    if not values.get("out"):  # out/<study_name>: a name that stays one folder inside out/
        name = values["study_name"]
        if Path(name).is_absolute() or ".." in Path(name).parts or name.strip(" ./") == "":
            raise invalid_value("study_name", "a name that stays inside out/ when 'out' is not given (the default "
                                "out is out/<study_name>: no '..', no leading '/')", name)
        values["out"] = str(Path("out") / name)
    train, ray = values.get("train") or TrainConfig(), values.get("ray") or RayConfig()
    if values.get("backend") == "ray" and train.device.startswith("cuda") and ray.gpus_per_trial <= 0:
        raise invalid_value("ray.gpus_per_trial", "> 0 when train.device is 'cuda' (Ray hides the GPUs from a "
                            "trial that reserves none)", ray.gpus_per_trial)
    return SearchConfig(**values, config_path=config_path)


def _beside_config(data: dict[str, Any], config_path: str | None) -> None:
    """A relative ``warm_start.file`` that is not in the working folder but next to the YAML means that one (as a
    task factory's module is looked up there too)."""
    warm = data.get("warm_start")
    file = warm.get("file") if isinstance(warm, dict) else None
    if config_path is None or not isinstance(file, str) or Path(file).is_absolute() or Path(file).exists():
        return
    beside = Path(config_path).parent / file
    if beside.is_file():
        data["warm_start"] = {**warm, "file": str(beside)}


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SearchConfig:
    """Read, override and validate an experiment YAML.

    Args:
        path: The YAML file. Its stem is the default ``study_name``.
        overrides: CLI flags as dotted keys, e.g. ``{"n_trials": 6, "space.bits": [4, 8]}``, applied after the
            file; ``None`` values are ignored.

    Returns:
        The validated :class:`SearchConfig`.

    Raises:
        ConfigError: Missing/unreadable file, unknown key, wrong type or out-of-range value.
    """
    path = Path(path)
    return config_from_dict(_read_yaml(path), stem=path.stem, overrides=overrides, config_path=str(path))
