"""Tests of the experiment-config schema: defaults, overrides, shipped configs and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacompress.search.config import (
    BUILTIN_TASKS,
    FloatRange,
    IntRange,
    config_from_dict,
    load_config,
)
from metacompress.spaces.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "task: digits-cnn\n", name="my-study.yaml"))
    assert cfg.task_name == "digits-cnn" and cfg.task.seed == 0
    assert cfg.study_name == "my-study"
    assert cfg.experiment_name == "metacompress-digits-cnn"
    assert cfg.out == str(Path("out") / "my-study")
    assert (cfg.n_trials, cfg.seed, cfg.backend, cfg.sampler) == (20, 0, "optuna", "tpe")
    assert cfg.objectives == {"accuracy": "maximize", "size_bytes": "minimize"}
    assert cfg.storage == "sqlite:///metacompress.db" and cfg.tracking_uri == "sqlite:///mlflow.db"
    assert (cfg.warm_start.mode, cfg.warm_start.n_points, cfg.warm_start.file) == ("auto", 8, None)
    assert cfg.space.prune == FloatRange(0.0, 0.9) and cfg.space.epochs == IntRange(1, 3)
    assert cfg.space.lr == FloatRange(1e-4, 1e-2, log=True) and cfg.space.bits == (2, 3, 4, 6, 8)
    assert cfg.train.batch_size == 64 and cfg.ray.max_concurrent == 2 and cfg.parallel.n_jobs == 1


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.task_name == path.stem == cfg.study_name
    assert 1 <= cfg.n_trials <= 40


def test_every_builtin_task_has_a_config() -> None:
    assert {p.stem for p in CONFIGS.glob("*.yaml")} >= set(BUILTIN_TASKS)


def test_digits_cnn_budget_fits_the_demo() -> None:
    cfg = load_config(CONFIGS / "digits-cnn.yaml")
    assert 12 <= cfg.n_trials <= 16 and cfg.space.epochs == IntRange(1, 2)


def test_overrides_apply_after_file_and_none_is_ignored(tmp_path: Path) -> None:
    path = _write(tmp_path, "task: digits-cnn\nn_trials: 10\nwarm_start: {mode: auto, n_points: 3}\n")
    cfg = load_config(path, {"n_trials": 6, "backend": "ray", "storage": "sqlite:///x.db", "seed": None,
                             "warm-start": "off", "task.seed": 4, "space.bits": [8, 4, 4], "out": None})
    assert (cfg.n_trials, cfg.backend, cfg.storage, cfg.seed) == (6, "ray", "sqlite:///x.db", 0)
    assert (cfg.warm_start.mode, cfg.warm_start.n_points) == ("off", 3)
    assert cfg.task.seed == 4 and cfg.task_name == "digits-cnn"
    assert cfg.space.bits == (4, 8)
    assert cfg.out == str(Path("out") / "exp")


def test_override_of_study_name_moves_default_out(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "task: wine-mlp\n"), {"study_name": "s2"})
    assert cfg.study_name == "s2" and cfg.out == str(Path("out") / "s2")


def test_shorthands(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "task: {name: wine-mlp, seed: 3}\nwarm_start: off\n"
                                       "objectives: [accuracy, latency_ms]\nspace: {epochs: 2}\n"
                                       "tracking_uri: None\n"))
    assert cfg.task.seed == 3 and cfg.warm_start.mode == "off"
    assert cfg.objectives == {"accuracy": "maximize", "latency_ms": "minimize"}
    assert cfg.space.epochs == IntRange(2, 2) and cfg.tracking_uri == "none"


def test_factory_task_and_grouping(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "task: {factory: 'my_pkg.tasks:make_task', kwargs: {width: 8}}\n"
                                       "space: {grouping: {convs: '^conv', head: 'fc.*'}}\n"))
    assert cfg.task.factory == "my_pkg.tasks:make_task" and cfg.task.kwargs == {"width": 8}
    assert cfg.task_name == "make_task" and cfg.experiment_name == "metacompress-make_task"
    assert cfg.space.grouping == {"convs": "^conv", "head": "fc.*"}
    dotted = config_from_dict({"task": {"factory": "my_pkg.tasks:Zoo.make", "name": "zoo"}})
    assert dotted.task.factory == "my_pkg.tasks:Zoo.make" and dotted.task_name == "zoo"


def test_storage_forms() -> None:
    for storage in ("sqlite:///a.db", "postgresql://u@h/db", "runs/journal.log", "journal:///tmp/j"):
        assert config_from_dict({"task": "wine-mlp", "storage": storage}).storage == storage


def test_to_dict_is_json_safe_and_round_trips() -> None:
    cfg = config_from_dict({"task": "digits-cnn", "space": {"act_bits": [8, 32], "grouping": "auto"}})
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["space"]["bits"] == [2, 3, 4, 6, 8] and data["space"]["prune"] == {"low": 0.0, "high": 0.9,
                                                                                    "log": False}
    data.pop("config_path")
    assert config_from_dict(data) == cfg


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("space.prun", {"space": {"prun": {"low": 0.1}}}, "Did you mean 'prune'?"),
    ("bakend", {"bakend": "ray"}, "Did you mean 'backend'?"),
    ("backend", {"backend": "rya"}, "Did you mean 'ray'?"),
    ("task", {"task": "digits-cn"}, "Did you mean 'digits-cnn'?"),
    ("train.batch_sise", {"train": {"batch_sise": 3}}, "Did you mean 'batch_size'?"),
    ("space.prune.high", {"space": {"prune": {"low": 0.0, "high": 1.0}}}, "in [0, 1). Got 1.0."),
    ("space.prune.high", {"space": {"prune": {"low": 0.5, "high": 0.2}}}, ">= space.prune.low"),
    ("space.kd_lambda.low", {"space": {"kd_lambda": {"low": -0.1, "high": 1}}}, "in [0, 1]"),
    ("space.temperature.low", {"space": {"temperature": {"low": 0, "high": 2}}}, "> 0"),
    ("space.epochs.low", {"space": {"epochs": {"low": 1.5, "high": 2}}}, "an integer"),
    ("space.lr.log", {"space": {"lr": {"low": 0.1, "high": 1, "log": "yes"}}}, "true or false"),
    ("space.bits", {"space": {"bits": [4, 9]}}, "Got 9."),
    ("space.bits", {"space": {"bits": []}}, "non-empty list"),
    ("space.prune_method", {"space": {"prune_method": ["magnitude"]}}, "unstructured"),
    ("space.grouping", {"space": {"grouping": "per_layer"}},
     "or a non-empty mapping {group_name: regex}. Got 'per_layer'. Did you mean 'per-layer'?"),
    ("space.grouping.g", {"space": {"grouping": {"g": "("}}}, "regular expression"),
    ("n_trials", {"n_trials": 0}, "an integer >= 1. Got 0."),
    ("n_trials", {"n_trials": "6"}, "an integer >= 1. Got '6'."),
    ("n_trials", {"n_trials": True}, "an integer"),
    ("objectives", {"objectives": {"size_bytes": "minimize"}}, "includes 'accuracy'"),
    ("objectives.accuracy", {"objectives": {"accuracy": "minimize"}}, "'maximize'"),
    ("objectives", {"objectives": {"accuracy": "maximize", "flops": "minimize"}}, "bitops"),
    ("storage", {"storage": "metacompress.db"}, "RDB URL"),
    ("train.device", {"train": {"device": "gpu"}}, "'cuda:N'"),
    ("ray.max_failures", {"ray": {"max_failures": -2}}, "or -1"),
    ("ray.gpus_per_trial", {"backend": "ray", "train": {"device": "cuda"}}, "Ray hides the GPUs"),
    ("warm_start.mode", {"warm_start": {"mode": "on"}}, "'auto', 'off'"),
    ("warm_start.file", {"warm_start": {"file": "/nonexistent/policies.json"}}, "existing JSON file"),
    ("task.factory", {"task": {"factory": "my_pkg.tasks.make_task"}}, "import path"),
    ("task.name", {"task": {"name": "nope"}}, "'wine-mlp'"),
    ("study_name", {"study_name": "../../elsewhere"}, "stays inside out/"),  # the default out: out/<study_name>
    ("warm_start.n_points", {"warm_start": {"n_points": 0}}, "Got 0."),  # none: mode off
]


UNKNOWN_KEYS = {"space.prun", "bakend", "train.batch_sise"}


@pytest.mark.parametrize(("field", "data", "fragment"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_values_name_the_dotted_field(field: str, data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"task": "digits-cnn", **data})
    message = str(info.value)
    assert info.value.field == field
    what = "key" if field in UNKNOWN_KEYS else "value"  # an unknown key is named as a key
    assert message.startswith(f"The '{field}' {what} must be ") and fragment in message
    assert "\n" not in message


def test_missing_task_is_reported() -> None:
    with pytest.raises(ConfigError, match="The 'task' value must be a built-in task name"):
        config_from_dict({"n_trials": 3})


def test_bad_override_is_reported_like_a_file_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"The 'n_trials' value must be an integer >= 1\. Got -1\."):
        load_config(_write(tmp_path, "task: digits-cnn\n"), {"n_trials": -1})
    with pytest.raises(ConfigError, match=r"'space.prune_max'.*Did you mean 'prune'\?"):
        load_config(_write(tmp_path, "task: digits-cnn\n"), {"space.prune_max": 0.5})


@pytest.mark.parametrize(("text", "fragment"), [
    (None, "an existing YAML file"),
    ("task: [unclosed\n", "a readable YAML file"),
    ("- task\n- digits-cnn\n", "a YAML mapping"),
    ("", "a YAML mapping"),
])
def test_unreadable_files_name_config(tmp_path: Path, text: str | None, fragment: str) -> None:
    path = tmp_path / "c.yaml" if text is None else _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == "config" and fragment in str(info.value) and "\n" not in str(info.value)


@settings(max_examples=60, deadline=None)
@given(low=st.floats(-0.5, 1.5, allow_nan=False), high=st.floats(-0.5, 1.5, allow_nan=False))
def test_prune_range_valid_iff_ordered_inside_unit_interval(low: float, high: float) -> None:
    ok = 0.0 <= low <= high < 1.0
    try:
        cfg = config_from_dict({"task": "digits-cnn", "space": {"prune": {"low": low, "high": high}}})
    except ConfigError as exc:
        assert not ok and exc.field in ("space.prune.low", "space.prune.high")
    else:
        assert ok and cfg.space.prune == FloatRange(low, high)


def test_space_build_makes_a_compression_space() -> None:
    spaces = pytest.importorskip("metacompress.spaces")
    cfg = config_from_dict({"task": "digits-cnn", "space": {"bits": [4, 8], "epochs": 2,
                                                            "prune_method": ["unstructured", "structured"]}})
    layers = [spaces.LayerInfo("conv1", "conv2d", 144, (16, 1, 3, 3)),
              spaces.LayerInfo("fc", "linear", 640, (10, 64), structured=False)]
    space = cfg.space.build(layers)
    assert isinstance(space, spaces.CompressionSpace)


def test_structured_pruning_is_left_out_when_no_layer_can_lose_channels(caplog: pytest.LogCaptureFixture) -> None:
    """A model whose layers cannot lose whole output channels (a head only, a Transformer's feed-forward) would
    waste every structured trial on pruning nothing."""
    from metacompress import spaces

    heads = [spaces.LayerInfo("fc", "linear", 640, (10, 64), structured=False)]
    both = config_from_dict({"task": "digits-cnn", "space": {"prune_method": ["unstructured", "structured"]}})
    with caplog.at_level("WARNING"):
        space = both.space.build(heads)
    assert space.domains["prune_method"].choices == ("unstructured",) and "'structured' is left out" in caplog.text
    only = config_from_dict({"task": "digits-cnn", "space": {"prune_method": ["structured"]}})
    with pytest.raises(ConfigError) as info:
        only.space.build(heads)
    assert info.value.field == "space.prune_method"
    prunable = [spaces.LayerInfo("conv1", "conv2d", 144, (16, 1, 3, 3)), *heads]
    assert both.space.build(prunable).domains["prune_method"].choices == ("unstructured", "structured")


def test_a_relative_warm_start_file_is_found_next_to_the_config_too(tmp_path, monkeypatch) -> None:
    """As a task factory's module is: ``file: pts.json`` beside ``sub/cfg.yaml``, run from the parent folder."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pts.json").write_text("[]")
    (tmp_path / "sub" / "cfg.yaml").write_text("task: digits-mlp\nwarm_start: {file: pts.json}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("sub/cfg.yaml").warm_start.file == str(Path("sub") / "pts.json")
    (tmp_path / "pts.json").write_text("[]")  # one in the working folder wins, as before
    assert load_config("sub/cfg.yaml").warm_start.file == "pts.json"
