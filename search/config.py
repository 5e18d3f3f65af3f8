"""The experiment YAML, validated into a :class:`SearchConfig`.

:func:`load_config` reads the file, applies CLI overrides (dotted keys such as ``space.bits`` or ``n_trials``, with
``None`` values ignored), then validates every section. Every problem raises
:class:`~metacompress.spaces.errors.ConfigError` with the dotted field in the message, e.g.
``The 'space.prune.high' value must be a number in [0, 1). Got 1.2.``

Each dataclass field carries its default and, in its metadata, the check for a user value. Shorthands: ``task: x``
(= ``{name: x}``), ``warm_start: off`` (= ``{mode: off}``), ``objectives: [accuracy, size_bytes]`` (natural
directions), a scalar for a range (``epochs: 2`` = ``{low: 2, high: 2}``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metacompress.search.pareto import check_objectives
from metacompress.spaces.errors import ConfigError, invalid_value, unknown_key
from metacompress.spaces.policy import ALLOWED_BITS, PRUNE_METHODS

__all__ = [
    "BUILTIN_TASKS", "FloatRange", "IntRange", "TaskConfig", "WarmStartConfig", "SpaceConfig", "TrainConfig",
    "RayConfig", "ParallelConfig", "SearchConfig", "config_from_dict", "load_config",
]

BUILTIN_TASKS = ("digits-mlp", "digits-cnn", "mnist1d-mlp", "mnist1d-cnn", "wine-mlp", "breast-cancer-mlp",
                 "digits-5w5s", "mnist1d-5w10s")
_SHORTHAND = {"task": "name", "warm_start": "mode"}  # `task: digits-cnn` == `task: {name: digits-cnn}`
_FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_STORAGE_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://.+|.+\.log)$")
_STORAGE_WANT = "an RDB URL like 'sqlite:///metacompress.db', a path ending in '.log', or 'journal:///path'"
Check = Callable[[str, Any], Any]


@dataclass(frozen=True)
class FloatRange:
    """A closed float interval ``[low, high]``, sampled on a log scale when ``log`` is true."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """A closed integer interval ``[low, high]``."""

    low: int
    high: int


def _number(kind: str = "float", lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
            hi_open: bool = False, nullable: bool = False, allow: Sequence[int] = ()) -> Check:
    """A check for an int (``kind="int"``) or float within bounds; ``allow`` lists extra accepted ints."""
    if hi == math.inf:
        bounds = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        bounds = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    want = f"{'an integer' if kind == 'int' else 'a number'} {bounds}" + "".join(f" or {a}" for a in allow)
    want += " or null" if nullable else ""

    def check(name: str, v: Any) -> Any:
        if (v is None and nullable) or (type(v) is int and v in allow):
            return v
        typed = isinstance(v, int if kind == "int" else (int, float)) and not isinstance(v, bool)
        if not typed or not lo <= v <= hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise invalid_value(name, want, v)
        return float(v) if kind == "float" else int(v)

    return check


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise invalid_value(name, "true or false", v)


def _str(nullable: bool = False, pattern: re.Pattern[str] | None = None, want: str = "a non-empty string") -> Check:
    def check(name: str, v: Any) -> str | None:
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v.strip() or (pattern is not None and not pattern.match(v)):
            raise invalid_value(name, want + (" or null" if nullable else ""), v)
        return v

    return check


def _choice(*choices: str) -> Check:
    def check(name: str, v: Any) -> str:
        if v not in choices:
            raise unknown_key(name, v, choices)
        return v

    return check


def _mapping(name: str, v: Any) -> Mapping[str, Any]:
    if isinstance(v, Mapping):
        return v
    raise invalid_value(name, "a mapping", v)


def _opt(default: Any, check: Check, *, factory: bool = False) -> Any:
    """A dataclass field with a default and the ``check`` that validates user values for it."""
    return field(**{"default_factory" if factory else "default": default}, metadata={"check": check})


def _validate(name: str, raw: Any, cls: type) -> dict[str, Any]:
    """Check mapping ``raw`` key by key against the checks in ``cls``'s field metadata."""
    checks = {f.name: f.metadata["check"] for f in dataclasses.fields(cls) if "check" in f.metadata}
    values = {}
    for key, value in ({} if raw is None else _mapping(name or "config", raw)).items():
        dotted = f"{name}.{key}" if name else str(key)
        if key not in checks:
            raise unknown_key(dotted, key, checks)
        values[key] = checks[key](dotted, value)
    return values


def _sub(cls: type) -> Any:
    """A dataclass field holding a nested section ``cls`` (default: all of its defaults)."""
    return _opt(cls, lambda name, raw: cls(**_validate(name, raw, cls)), factory=True)


def _range(bound: Check, *, is_float: bool = True) -> Check:
    """A check for ``{low, high[, log]}`` (or a scalar = fixed value) whose ends pass ``bound``."""
    keys = ("low", "high", "log") if is_float else ("low", "high")

    def check(name: str, v: Any) -> FloatRange | IntRange:
        raw = v if isinstance(v, Mapping) else {"low": v, "high": v}
        for key in raw:
            if key not in keys:
                raise unknown_key(f"{name}.{key}", key, keys)
        low, high = bound(f"{name}.low", raw.get("low")), bound(f"{name}.high", raw.get("high"))
        if high < low:
            raise invalid_value(f"{name}.high", f">= {name}.low ({low:g})", raw["high"])
        if not is_float:
            return IntRange(low, high)
        log = _bool(f"{name}.log", raw.get("log", False))
        if log and low <= 0:
            raise invalid_value(f"{name}.low", "> 0 when log is true", raw["low"])
        return FloatRange(low, high, log)

    return check


def _subset(allowed: Sequence[Any], *, nullable: bool = False, sort: bool = False) -> Check:
    want = "a non-empty list drawn from [" + ", ".join(map(str, allowed)) + "]" + (" or null" if nullable else "")

    def check(name: str, v: Any) -> tuple[Any, ...] | None:
        if v is None and nullable:
            return None
        if not isinstance(v, (list, tuple)) or not v:
            raise invalid_value(name, want, v)
        for item in v:
            if type(item) is not type(allowed[0]) or item not in allowed:
                raise invalid_value(name, want, item)
        return tuple(sorted(set(v)) if sort else dict.fromkeys(v))

    return check


def _grouping(name: str, v: Any) -> str | dict[str, str]:
    if isinstance(v, str):
        return _choice("per-layer", "auto")(name, v)
    if not isinstance(v, Mapping) or not v:
        raise invalid_value(name, "'per-layer', 'auto' or a non-empty mapping {group_name: regex}", v)
    for group, pattern in v.items():
        try:
            re.compile(_str()(f"{name}.{group}", pattern))
        except re.error as exc:
            raise invalid_value(f"{name}.{group}", f"a valid regular expression ({exc})", pattern) from None
    return {str(k): str(p) for k, p in v.items()}


def _task(name: str, v: Any) -> TaskConfig:
    if v is None:
        raise invalid_value(name, "a built-in task name, {name: ..., seed: ...} or {factory: 'pkg.mod:fn'}", None)
    task = TaskConfig(**_validate(name, {"name": v} if isinstance(v, str) else v, TaskConfig))
    if task.factory is None and task.name not in BUILTIN_TASKS:
        raise unknown_key(name if isinstance(v, str) else f"{name}.name", task.name, BUILTIN_TASKS)
    task.kwargs = dict(task.kwargs)
    return task


def _tracking_uri(name: str, v: Any) -> str:
    v = _str()(name, "sqlite:///mlflow.db" if v is None else v)
    return "none" if v.lower() == "none" else v


def _warm_file(name: str, v: Any) -> str | None:
    if v is not None and not Path(_str()(name, v)).is_file():
        raise invalid_value(name, "an existing JSON file or null", v)
    return v


def _warm_start(name: str, v: Any) -> WarmStartConfig:
    return WarmStartConfig(**_validate(name, {"mode": v} if isinstance(v, (str, bool)) else v, WarmStartConfig))


def _warm_mode(name: str, v: Any) -> str:  # YAML 1.1 reads a bare `off` as false
    return _choice("auto", "off")(name, ("auto" if v else "off") if isinstance(v, bool) else v)


@dataclass
class TaskConfig:
    """Which task to compress: a built-in ``name`` or a ``factory`` ``"pkg.mod:fn"`` called with ``kwargs``."""

    name: str | None = _opt(None, _str(nullable=True))
    seed: int = _opt(0, _number("int", 0))
    factory: str | None = _opt(None, _str(True, _FACTORY_RE, "an import path like 'my_pkg.my_module:make_task'"))
    kwargs: dict[str, Any] = _opt(dict, _mapping, factory=True)


@dataclass
class WarmStartConfig:
    """Meta-learned warm start: ``mode`` auto|off, ``n_points`` enqueued trials, optional JSON ``file``."""

    mode: str = _opt("auto", _warm_mode)
    n_points: int = _opt(8, _number("int", 0))
    file: str | None = _opt(None, _warm_file)


@dataclass
class SpaceConfig:
    """Bounds of the compression search space, as plain data (see :meth:`build`)."""

    grouping: str | dict[str, str] = _opt("per-layer", _grouping)
    prune: FloatRange = _opt(FloatRange(0.0, 0.9), _range(_number("float", 0.0, 1.0, hi_open=True)))
    prune_method: tuple[str, ...] = _opt(("unstructured",), _subset(PRUNE_METHODS))
    bits: tuple[int, ...] = _opt((2, 3, 4, 6, 8), _subset(ALLOWED_BITS, sort=True))
    act_bits: tuple[int, ...] | None = _opt(None, _subset(ALLOWED_BITS, nullable=True, sort=True))
    kd_lambda: FloatRange = _opt(FloatRange(0.0, 1.0), _range(_number("float", 0.0, 1.0)))
    temperature: FloatRange = _opt(FloatRange(1.0, 8.0), _range(_number("float", 0.0, lo_open=True)))
    epochs: IntRange = _opt(IntRange(1, 3), _range(_number("int", 0), is_float=False))
    lr: FloatRange = _opt(FloatRange(1e-4, 1e-2, log=True), _range(_number("float", 0.0, lo_open=True)))
    feature_beta: FloatRange = _opt(FloatRange(0.0, 0.0), _range(_number("float", 0.0)))  # feature-map KD weight
    prox_mu: FloatRange = _opt(FloatRange(0.0, 0.0), _range(_number("float", 0.0)))  # proximal-term weight

    def build(self, layers: Any) -> Any:
        """Build a ``metacompress.spaces.CompressionSpace`` over ``layers`` (the teacher's compressible layers)."""
        from metacompress.spaces import Categorical, CompressionSpace, Float, Int, Ordinal

        def real(r: FloatRange) -> Any:
            return Float(r.low, r.high, log=True) if r.log else Float(r.low, r.high)

        return CompressionSpace(
            layers, grouping=self.grouping, prune=real(self.prune), bits=Ordinal(tuple(self.bits)),
            prune_method=Categorical(tuple(self.prune_method)), kd_lambda=real(self.kd_lambda),
            act_bits=Ordinal(tuple(self.act_bits)) if self.act_bits else None, temperature=real(self.temperature),
            epochs=Int(self.epochs.low, self.epochs.high), lr=real(self.lr), feature_beta=real(self.feature_beta),
            prox_mu=real(self.prox_mu))


@dataclass
class TrainConfig:
    """Per-trial training and measurement settings (``trial_timeout_s: null`` = no timeout)."""

    batch_size: int = _opt(64, _number("int", 1))
    device: str = _opt("auto", _str(pattern=_DEVICE_RE, want="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"))
    latency_repeats: int = _opt(20, _number("int", 1))
    trial_timeout_s: float | None = _opt(600.0, _number("float", 0.0, lo_open=True, nullable=True))
    num_threads: int = _opt(1, _number("int", 1))


@dataclass
class RayConfig:
    """Ray Tune backend settings (ignored by the Optuna backend; ``max_failures: -1`` = retry forever)."""

    address: str | None = _opt(None, _str(nullable=True))
    cpus_per_trial: float = _opt(1.0, _number("float", 0.0, lo_open=True))
    gpus_per_trial: float = _opt(0.0, _number("float", 0.0))
    max_concurrent: int = _opt(2, _number("int", 1))
    asha: bool = _opt(True, _bool)
    grace_period: int = _opt(1, _number("int", 1))
    max_failures: int = _opt(2, _number("int", 0, allow=(-1,)))
    storage_path: str = _opt("ray_results", _str())
    reuse_actors: bool = _opt(True, _bool)


@dataclass
class ParallelConfig:
    """Local parallelism of the Optuna backend (``n_jobs`` worker processes; -1 = all cores)."""

    n_jobs: int = _opt(1, _number("int", 1, allow=(-1,)))


@dataclass
class SearchConfig:
    """One validated search experiment. Build it with :func:`load_config`."""

    task: TaskConfig = field(metadata={"check": _task})
    study_name: str = field(metadata={"check": _str(nullable=True)})
    experiment_name: str = field(metadata={"check": _str(nullable=True)})
    out: str = field(metadata={"check": _str(nullable=True)})
    n_trials: int = _opt(20, _number("int", 1))
    seed: int = _opt(0, _number("int", 0))
    backend: str = _opt("optuna", _choice("optuna", "ray"))
    sampler: str = _opt("tpe", _choice("tpe", "nsga2", "gp", "random"))
    objectives: dict[str, str] = _opt(lambda: {"accuracy": "maximize", "size_bytes": "minimize"},
                                      check_objectives, factory=True)
    storage: str = _opt("sqlite:///metacompress.db", _str(pattern=_STORAGE_RE, want=_STORAGE_WANT))
    tracking_uri: str = _opt("sqlite:///mlflow.db", _tracking_uri)
    warm_start: WarmStartConfig = _opt(WarmStartConfig, _warm_start, factory=True)
    space: SpaceConfig = _sub(SpaceConfig)
    train: TrainConfig = _sub(TrainConfig)
    ray: RayConfig = _sub(RayConfig)
    parallel: ParallelConfig = _sub(ParallelConfig)
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
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise error(f"a readable YAML file ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, Mapping):
        raise error(f"a YAML mapping of keys to values, not {type(data).__name__}")
    return dict(data)


def config_from_dict(data: Mapping[str, Any], *, stem: str = "search",
                     overrides: Mapping[str, Any] | None = None, config_path: str | None = None) -> SearchConfig:
    """Validate an already-parsed config mapping (see :func:`load_config`); ``stem`` is the default study name."""
    data = dict(_mapping("config", data))
    _apply_overrides(data, overrides or {})
    values = _validate("", data, SearchConfig)
    values["task"] = values.get("task") or _task("task", None)
    values["study_name"] = values.get("study_name") or stem
    task_name = values["task"].name or str(values["task"].factory).rsplit(":", 1)[-1]
    values["experiment_name"] = values.get("experiment_name") or f"metacompress-{task_name}"
    values["out"] = values.get("out") or str(Path("out") / values["study_name"])
    train, ray = values.get("train") or TrainConfig(), values.get("ray") or RayConfig()
    if values.get("backend") == "ray" and train.device.startswith("cuda") and ray.gpus_per_trial <= 0:
        raise invalid_value("ray.gpus_per_trial", "> 0 when train.device is 'cuda' (Ray hides the GPUs from a "
                            "trial that reserves none)", ray.gpus_per_trial)
    return SearchConfig(**values, config_path=config_path)


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
