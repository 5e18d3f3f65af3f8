"""Tests of the task zoo: datasets, teacher architectures, cached teacher training, the Task type and plugins."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from metacompress.learners import data, tasks
from metacompress.learners.models import MODELS, count_parameters, make_model
from metacompress.learners.tasks import BUILTIN_TASKS, Task, fewshot_task, list_tasks, load_task
from metacompress.learners.teachers import TeacherSpec, get_teacher, resolve_cache_dir
from metacompress.spaces.errors import ConfigError

HERE = Path(__file__).parent

MODEL_CASES = {
    "mlp": ({"in_features": 40, "hidden": [32, 16], "n_classes": 10, "dropout": 0.1}, (40,)),
    "digits-cnn": ({"n_classes": 10}, (1, 8, 8)),
    "mnist1d-cnn": ({"n_classes": 10}, (1, 40)),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Train on one thread: the models are tiny, and the test machine's few cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def cheap_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every built-in teacher train for one epoch (a different cache key from the real recipe)."""
    for name, spec in BUILTIN_TASKS.items():
        monkeypatch.setitem(BUILTIN_TASKS, name, dataclasses.replace(spec, epochs=1))


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_model_is_fx_traceable_and_traces_to_the_same_function(arch: str) -> None:
    kwargs, shape = MODEL_CASES[arch]
    model = make_model(arch, **kwargs).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(4, *shape)
    torch.testing.assert_close(traced(x), model(x))
    assert model(x).shape == (4, 10)


def test_digits_cnn_is_big_enough_to_compress() -> None:
    assert count_parameters(make_model("digits-cnn", n_classes=10)) >= 50_000


@pytest.mark.parametrize(("arch", "kwargs", "field"), [
    ("resnet", {}, "task.arch"),
    ("mlp", {"in_features": 4, "hidden": [0], "n_classes": 2}, "model.hidden[0]"),
    ("mlp", {"in_features": 4, "hidden": [8], "n_classes": 2, "dropout": 1.5}, "model.dropout"),
    ("digits-cnn", {"n_classes": 10, "bogus": 1}, "task.arch_kwargs"),
])
def test_bad_model_arguments_name_the_field(arch: str, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_model(arch, **kwargs)
    assert info.value.field == field


def test_mnist1d_generation_leaves_global_rngs_alone(task_cache_dir: Path) -> None:
    # Runs before the task tests so that it generates (and caches) the session's MNIST-1D data.
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    data.load_mnist1d_data(0, cache_dir=task_cache_dir)
    assert (random.random(), np.random.rand()) == expected
    assert len(list((task_cache_dir / "data").glob("*.npz"))) == 1


@pytest.mark.usefixtures("cheap_builtins")
@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_every_builtin_loads(name: str, task_cache_dir: Path) -> None:
    task = load_task(name, cache_dir=task_cache_dir)
    spec = BUILTIN_TASKS[name]
    assert isinstance(task, Task) and task.name == name
    assert task.n_classes == (spec.n_way or spec.n_classes)
    assert not task.teacher.training
    for part in (task.train, task.val):
        assert isinstance(part, TensorDataset)
        x, y = part.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == task.input_shape
        assert set(y.unique().tolist()) == set(range(task.n_classes))
    example = task.example_input(3)
    assert example.shape == (3, *task.input_shape)
    assert task.teacher(example).shape == (3, task.n_classes)
    info = json.loads(json.dumps(task.info))
    assert info["n_train"] == len(task.train) and info["n_val"] == len(task.val)
    assert info["arch"] == spec.arch and info["dataset"] == spec.dataset and info["seed"] == 0
    assert 0.0 <= info["teacher_accuracy"] <= 1.0
    if spec.n_way is not None:
        assert len(task.train) == spec.n_way * spec.k_shot
        assert np.bincount(task.train.tensors[1].numpy()).tolist() == [spec.k_shot] * spec.n_way


def test_input_shapes_follow_the_brief(task_cache_dir: Path) -> None:
    assert data.load_digits_data(0).input_shape == (1, 8, 8)
    mnist = data.load_mnist1d_data(0, cache_dir=task_cache_dir)
    assert (len(mnist.y_train), len(mnist.y_val)) == (4000, 1000)
    assert mnist.input_shape == (1, 40)
    assert data.load_mnist1d_data(0, channel=False, cache_dir=task_cache_dir).input_shape == (40,)


def test_digits_cnn_reaches_097_and_the_cache_hits(tmp_path: Path) -> None:
    start = time.perf_counter()
    first = load_task("digits-cnn", cache_dir=tmp_path)
    cold = time.perf_counter() - start
    assert first.info["teacher_accuracy"] >= 0.97
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    start = time.perf_counter()
    second = load_task({"name": "digits-cnn", "seed": 0}, cache_dir=tmp_path)
    warm = time.perf_counter() - start
    assert warm < cold / 3
    assert second.info["teacher_accuracy"] == first.info["teacher_accuracy"]
    for (key, a), b in zip(first.teacher.state_dict().items(), second.teacher.state_dict().values()):
        assert torch.equal(a, b), key
    listed = {row["name"]: row for row in list_tasks(cache_dir=tmp_path)}
    assert listed["digits-cnn"]["teacher_accuracy"] == first.info["teacher_accuracy"]
    assert listed["mnist1d-cnn"]["teacher_accuracy"] is None


def test_mnist1d_mlp_reaches_060(task_cache_dir: Path) -> None:
    assert load_task("mnist1d-mlp", cache_dir=task_cache_dir).info["teacher_accuracy"] >= 0.60


@pytest.mark.slow
@pytest.mark.parametrize(("name", "threshold"), [("mnist1d-cnn", 0.90), ("mnist1d-5w10s", 0.90),
                                                 ("digits-mlp", 0.95), ("wine-mlp", 0.9),
                                                 ("breast-cancer-mlp", 0.9)])
def test_slow_teachers_reach_their_accuracy(name: str, threshold: float, task_cache_dir: Path) -> None:
    assert load_task(name, cache_dir=task_cache_dir).info["teacher_accuracy"] >= threshold


def test_digits_fewshot_task_has_k_shots_and_a_strong_teacher(task_cache_dir: Path) -> None:
    task = load_task("digits-5w5s", cache_dir=task_cache_dir)
    assert len(task.train) == 5 * 5 and task.n_classes == 5
    assert task.info["k_shot"] == 5 and len(task.info["classes"]) == 5
    assert len(task.val) > 5 * 25  # the held-out data of the five classes
    assert task.info["teacher_accuracy"] >= 0.95


def test_fewshot_task_generic_and_seeded(task_cache_dir: Path) -> None:
    task = fewshot_task("wine-mlp", n_way=2, k_shot=3, seed=1, cache_dir=task_cache_dir)
    assert task.name == "wine-mlp-2w3s" and len(task.train) == 6 and task.n_classes == 2
    with pytest.raises(ConfigError) as info:
        fewshot_task("wine-mlp", n_way=2, k_shot=10_000, cache_dir=task_cache_dir)
    assert info.value.field == "task.k_shot"
    with pytest.raises(ConfigError) as info:
        fewshot_task("digits-5w5s", n_way=2, k_shot=1, cache_dir=task_cache_dir)
    assert info.value.field == "task.base"


def test_fewshot_split_draws_classes_by_seed_and_relabels() -> None:
    split = data.load_digits_data(0, flat=True)
    drawn = {tuple(data.fewshot_split(split, 5, 3, seed)[0]) for seed in range(6)}
    assert len(drawn) > 1
    classes, full, shots = data.fewshot_split(split, 4, 3, seed=2)
    assert sorted(np.unique(full.y_train).tolist()) == [0, 1, 2, 3] == sorted(np.unique(full.y_val).tolist())
    assert len(full.y_train) == int(np.isin(split.y_train, classes).sum())
    assert np.bincount(shots.y_train).tolist() == [3, 3, 3, 3]
    assert shots.x_val is full.x_val


def test_tabular_features_are_standardized_with_train_statistics() -> None:
    for split in (data.load_wine_data(3), data.load_breast_cancer_data(3)):
        np.testing.assert_allclose(split.x_train.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(split.x_train.std(0), 1.0, atol=1e-3)
        assert abs(float(split.x_val.mean())) > 1e-6  # val is transformed, not re-fitted


def test_synthetic_data_is_seeded_per_problem_and_split_and_standardized() -> None:
    kwargs = {"n_samples": 300, "n_features": 12, "n_informative": 5, "n_classes": 3, "class_sep": 1.0}
    a, again = data.load_synthetic_data(0, problem=1, **kwargs), data.load_synthetic_data(0, problem=1, **kwargs)
    np.testing.assert_array_equal(a.x_train, again.x_train)
    other_split, other_problem = data.load_synthetic_data(1, problem=1, **kwargs), data.load_synthetic_data(
        0, problem=2, **kwargs)
    assert not np.array_equal(a.y_train, other_split.y_train)
    assert not np.allclose(a.x_train, other_problem.x_train)
    assert a.x_train.shape == (240, 12) and a.x_val.shape == (60, 12) and a.n_classes == 3
    np.testing.assert_allclose(a.x_train.mean(0), 0.0, atol=1e-4)
    assert np.bincount(a.y_val).tolist() == [20, 20, 20]


def test_synthetic_family_is_valid_and_diverse_and_loads(task_cache_dir: Path) -> None:
    specs = tasks.SYNTHETIC_TASKS
    assert len([s for s in specs.values() if s.n_way is None]) == tasks.N_SYNTHETIC
    assert not set(specs) & set(BUILTIN_TASKS)
    for spec in specs.values():
        kw = spec.dataset_kwargs
        assert 2 <= kw["n_informative"] <= kw["n_features"] and spec.n_classes <= 2 ** kw["n_informative"]
        assert spec.arch_kwargs["in_features"] == kw["n_features"]
    regular = [s for s in specs.values() if s.n_way is None]
    assert len({s.n_classes for s in regular}) >= 5 and len({s.dataset_kwargs["n_samples"] for s in regular}) >= 6
    assert any(s.dataset_kwargs["flip_y"] >= 0.1 for s in regular) and any(s.n_way for s in specs.values())
    # drawn by random.Random(i): pinned, so that a change of the draws (which the shipped rows were built from)
    # shows here
    assert specs["synth-01-mlp"].description == ("make_classification #1: 200 samples, 6 features (2 informative), "
                                                 "4 classes, separation 1.62, label noise 5%; MLP 256-128")
    fewshot = next(name for name, s in specs.items() if s.n_way)
    task = load_task(fewshot, cache_dir=task_cache_dir)
    assert len(task.train) == 5 * specs[fewshot].k_shot and task.n_classes == 5
    assert task.info["teacher_accuracy"] > 1 / 5
    with pytest.raises(ConfigError, match="digits-cnn"):  # a typo lists the zoo, not 77 synthetic names
        load_task("synth-999-mlp")


def test_splits_are_stratified_and_seeded() -> None:
    a, b = data.load_digits_data(0), data.load_digits_data(1)
    assert len(a.y_train) == len(b.y_train) and not np.array_equal(a.y_train, b.y_train)
    counts = np.bincount(a.y_val)
    assert counts.max() - counts.min() <= 2


def test_cache_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METACOMPRESS_CACHE", str(tmp_path / "env-cache"))
    assert resolve_cache_dir() == tmp_path / "env-cache"
    assert resolve_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    task = load_task("wine-mlp")
    assert len(list((tmp_path / "env-cache" / "teachers").glob("*.json"))) == 1
    assert task.info["teacher_accuracy"] >= 0.9


def test_a_corrupt_cache_entry_is_retrained(tmp_path: Path) -> None:
    split = data.load_wine_data(0)
    train, val = split.tensors()
    spec = TeacherSpec("mlp", {"in_features": 13, "hidden": [8], "n_classes": 3}, {"dataset": "wine"}, epochs=3)
    model, acc = get_teacher(spec, train, val, tmp_path)
    (weights,) = (tmp_path / "teachers").glob("*.pt")
    weights.write_bytes(b"not a checkpoint")
    again, acc_again = get_teacher(spec, train, val, tmp_path)
    assert acc_again == acc
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not list((tmp_path / "teachers").glob("*.tmp"))


def test_factory_import_string_builds_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    task = load_task({"factory": "plugin_task:make_task", "kwargs": {"n_classes": 4}})
    assert isinstance(task, Task) and task.n_classes == 4
    assert task.input_shape == (6,) and task.info["factory"] == "plugin_task:make_task"
    assert task.info["n_train"] == 40 and 0.0 <= task.info["teacher_accuracy"] <= 1.0
    json.dumps(task.info)
    seeded = load_task({"factory": "plugin_task:make_task", "seed": 3})
    assert not torch.equal(seeded.train.tensors[0], task.train.tensors[0])
    assert torch.equal(seeded.train.tensors[0], load_task({"factory": "plugin_task:make_task", "kwargs": {
        "seed": 3}}).train.tensors[0])


@pytest.mark.parametrize(("factory", "kwargs", "field"), [
    ("plugin_task", None, "task.factory"),
    ("plugin_task:", None, "task.factory"),
    ("no_such_module_for_metacompress:make", None, "task.factory"),
    ("plugin_task:missing", None, "task.factory"),
    ("plugin_task:NOT_CALLABLE", None, "task.factory"),
    ("plugin_task:not_a_task", None, "task.factory"),
    (42, None, "task.factory"),
    ("plugin_task:make_task", {"colour": "red"}, "task.kwargs"),
    ("plugin_task:make_task", [1, 2], "task.kwargs"),
    ("plugin_task:tuple_teacher", None, "task.teacher"),  # a tuple, not logits
    ("plugin_task:wrong_width_teacher", None, "task.teacher"),  # 3 logits, 5 classes declared
])
def test_bad_factories_name_the_field(factory: object, kwargs: object, field: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    with pytest.raises(ConfigError) as info:
        load_task({"factory": factory, "kwargs": kwargs})
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)


def test_a_factory_that_raises_is_named_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not bad input (exit 2) nor an internal error: the user's code failed, maybe for a while (exit 1, retry)."""
    from metacompress.spaces import MetacompressError

    monkeypatch.syspath_prepend(str(HERE))
    with pytest.raises(MetacompressError) as info:
        load_task({"factory": "plugin_task:raises"})
    assert not isinstance(info.value, ConfigError)
    assert str(info.value) == "the task factory 'plugin_task:raises' raised OSError: my data bucket is down"


@pytest.mark.parametrize(("data", "got"), [
    (torch.zeros(4, 6), "Tensor items"),  # a bare tensor: items are rows, not pairs
    (TensorDataset(torch.zeros(4, 6)), "items of 1 part'"),
    (TensorDataset(torch.zeros(4, 6), torch.zeros(4), torch.zeros(4)), "items of 3 parts"),
])
def test_a_task_whose_data_are_not_pairs_is_refused(data: object, got: str) -> None:
    """Every trial would fail on them (`not enough values to unpack`), and the search would exit 0."""
    teacher = torch.nn.Linear(6, 3)
    good = TensorDataset(torch.zeros(4, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match=got) as info:
        Task("pairs", teacher, data, good, 3)
    assert info.value.field == "task.train"
    with pytest.raises(ConfigError, match="'task.name'"):
        Task(None, teacher, good, good, 3)


def test_a_factory_task_with_numpy_pairs_trains_and_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Datasets that yield (NumPy array, int) pairs work wherever a TensorDataset does."""
    from metacompress.learners import compress, describe_layers, evaluate, finetune
    from metacompress.spaces import CompressionPolicy

    monkeypatch.syspath_prepend(str(HERE))
    task = load_task({"factory": "plugin_task:numpy_task"})
    layers = [i.name for i in describe_layers(task.teacher, task.example_input(2))]
    policy = CompressionPolicy.uniform(layers, 0.5, 4, epochs=1)
    student = compress(task.teacher, policy, task.example_input(2))
    assert len(finetune(student, task.teacher, task.train, policy, val=task.val)) == 1
    assert 0.0 <= evaluate(student, task.val, task.example_input(1), latency_repeats=1)["accuracy"] <= 1.0


@pytest.mark.parametrize(("spec", "field", "hint"), [
    ("digits-cnm", "task", "Did you mean 'digits-cnn'?"),
    ({"name": "mnist1d-cn"}, "task.name", "Did you mean 'mnist1d-cnn'?"),
    ({"nam": "digits-cnn"}, "task.nam", "Did you mean 'name'?"),
    ({"name": "digits-cnn", "seed": -1}, "task.seed", "non-negative"),
    ({"name": "digits-cnn", "seed": "0"}, "task.seed", "non-negative"),
    ({"name": "digits-cnn", "factory": "plugin_task:make_task"}, "task", "not both"),
    ({"name": "digits-cnn", "kwargs": {"a": 1}}, "task.kwargs", "factory"),
    ({"seed": 1}, "task", "'name' or a 'factory'"),
    (42, "task", "built-in task name"),
])
def test_bad_specs_name_the_field(spec: object, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_task(spec)  # type: ignore[arg-type]
    assert info.value.field == field
    assert hint in str(info.value)


def test_config_style_mapping_with_none_values_is_accepted(task_cache_dir: Path) -> None:
    spec = {"name": "breast-cancer-mlp", "seed": 0, "factory": None, "kwargs": {}}
    task = load_task(spec, cache_dir=task_cache_dir)
    assert task.n_classes == 2 and task.input_shape == (30,)


def test_task_validates_what_a_factory_returns() -> None:
    ds = TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ConfigError) as info:
        Task("t", "not a module", ds, ds, 2)  # type: ignore[arg-type]
    assert info.value.field == "task.teacher"
    with pytest.raises(ConfigError) as info:
        Task("t", torch.nn.Linear(2, 2), ds, ds, 1)
    assert info.value.field == "task.n_classes"
    with pytest.raises(ConfigError) as info:
        Task("t", torch.nn.Linear(2, 2), ds, TensorDataset(torch.zeros(0, 2), torch.zeros(0)), 2)
    assert info.value.field == "task.val"


def test_list_tasks_describes_every_builtin_without_training(tmp_path: Path) -> None:
    rows = list_tasks(cache_dir=tmp_path)
    assert [row["name"] for row in rows] == list(BUILTIN_TASKS)
    assert {"name", "dataset", "arch", "description", "teacher_accuracy"} <= set(rows[0])
    assert all(row["teacher_accuracy"] is None for row in rows)
    assert not (tmp_path / "teachers").exists()
    assert set(tasks.__all__) >= {"Task", "TaskSpec", "BUILTIN_TASKS", "list_tasks", "load_task", "fewshot_task"}
