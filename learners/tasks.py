"""The :class:`Task` type and the built-in task zoo.

A task is what a search compresses: a trained teacher, the training data the student learns from, the validation
data it is scored on, and the number of classes. Built-in tasks are described by a :class:`TaskSpec` in
:data:`BUILTIN_TASKS` and materialised by :func:`load_task`, which trains the teacher once and caches it on disk
(see :mod:`metacompress.learners.teachers`). A config may instead name a factory, ``"my_pkg.my_module:make_task"``,
that returns a :class:`Task` (:mod:`metacompress.learners.plugins` imports, calls and checks it).

Few-shot variants (``digits-5w5s``, ``mnist1d-5w10s`` and :func:`fewshot_task`) choose ``n_way`` classes by seed,
train the teacher on all training data of those classes, and give the student only ``k_shot`` labelled samples per
class (it learns from those plus the teacher's soft labels); validation is the held-out data of those classes.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from metacompress.learners.data import ArraySplit, fewshot_split, load_dataset, model_input
from metacompress.learners.models import count_parameters
from metacompress.learners.teachers import (
    TeacherSpec,
    cached_accuracy,
    get_teacher,
    resolve_cache_dir,
    teacher_cache_key,
)
from metacompress.spaces.errors import invalid_value, unknown_key

__all__ = ["Task", "TaskSpec", "BUILTIN_TASKS", "SYNTHETIC_TASKS", "list_tasks", "load_task", "fewshot_task"]



@dataclass
class Task:
    """A teacher to compress and the data to compress it with.

    Attributes:
        name: Task name, e.g. ``"digits-cnn"``.
        teacher: The trained model (eval mode).
        train: Data the student is fine-tuned/distilled on; built-ins use ``TensorDataset(x_float32, y_int64)``.
        val: Data the student is scored on, same format.
        n_classes: Number of classes (logits of the teacher).
        info: JSON-safe facts: ``input_shape``, ``n_train``, ``n_val``, ``teacher_accuracy``, ``arch``,
            ``dataset``, ``seed``, ``n_params`` and, for few-shot tasks, ``n_way``, ``k_shot``, ``classes``.
    """

    name: str
    teacher: nn.Module
    train: Dataset
    val: Dataset
    n_classes: int
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, nn.Module):
            raise invalid_value("task.teacher", "a torch.nn.Module", type(self.teacher).__name__)
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise invalid_value("task.n_classes", "an integer >= 2", self.n_classes)
        if not isinstance(self.name, str) or not self.name.strip():
            raise invalid_value("task.name", "a non-empty string", self.name)
        for part in ("train", "val"):
            data = getattr(self, part)
            if not hasattr(data, "__getitem__") or not hasattr(data, "__len__") or len(data) == 0:
                raise invalid_value(f"task.{part}", "a non-empty map-style Dataset of (x, y) pairs", data)
            item = data[0]  # one item, as a DataLoader would fetch it: every trial would fail on another shape
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                got = (f"items of {len(item)} part{'' if len(item) == 1 else 's'}" if isinstance(item, (tuple, list))
                       else f"{type(item).__name__} items")
                raise invalid_value(f"task.{part}", "a non-empty map-style Dataset of (x, y) pairs", got)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, without the batch dimension."""
        if "input_shape" in self.info:
            return tuple(int(d) for d in self.info["input_shape"])
        return tuple(torch.as_tensor(self.val[0][0]).shape)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Return ``batch`` real validation inputs (cycled if ``val`` is smaller), shape ``(batch, *input_shape)``."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise invalid_value("batch", "a positive integer", batch)
        tensors = getattr(self.val, "tensors", None)
        n = len(self.val)
        if tensors is not None:
            x = tensors[0]
            return model_input(x[torch.arange(batch) % n]).clone()
        return model_input(torch.stack([torch.as_tensor(self.val[i % n][0]) for i in range(batch)]))


@dataclass(frozen=True)
class TaskSpec:
    """Recipe of a built-in task: data, architecture and teacher training.

    Attributes:
        name: Task name.
        dataset: Dataset name (a key of :data:`metacompress.learners.data.DATASETS`).
        arch: Architecture name (a key of :data:`metacompress.learners.models.MODELS`).
        n_classes: Number of classes of the dataset.
        description: One line for ``metacompress tasks``.
        dataset_kwargs: Extra arguments of the dataset builder.
        arch_kwargs: Architecture arguments; ``n_classes`` is filled in.
        epochs: Teacher training epochs.
        lr: Peak learning rate.
        batch_size: Mini-batch size.
        weight_decay: AdamW weight decay.
        n_way: Few-shot: number of classes drawn by seed; ``None`` for a regular task.
        k_shot: Few-shot: labelled training samples per class.
    """

    name: str
    dataset: str
    arch: str
    n_classes: int
    description: str
    dataset_kwargs: Mapping[str, Any] = field(default_factory=dict)
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    n_way: int | None = None
    k_shot: int | None = None

    def teacher_spec(self, seed: int = 0) -> TeacherSpec:
        """The :class:`TeacherSpec` (and hence cache key) of this task's teacher for ``seed``."""
        data: dict[str, Any] = {"dataset": self.dataset, "kwargs": dict(self.dataset_kwargs), "seed": seed}
        if self.n_way is not None:
            data["n_way"] = self.n_way  # the classes are drawn from the seed; k_shot does not change the teacher
        arch_kwargs = {**self.arch_kwargs, "n_classes": self.n_way or self.n_classes}
        return TeacherSpec(arch=self.arch, arch_kwargs=arch_kwargs, data=data, epochs=self.epochs, lr=self.lr,
                           batch_size=self.batch_size, weight_decay=self.weight_decay, seed=seed)


def _fewshot(base: TaskSpec, n_way: int, k_shot: int, name: str) -> TaskSpec:
    description = f"{base.description}; {n_way}-way {k_shot}-shot (teacher sees all data of the classes)"
    return dataclasses.replace(base, name=name,
                               description=description, n_way=n_way, k_shot=k_shot)


_DIGITS_CNN = TaskSpec("digits-cnn", "digits", "digits-cnn", 10, "sklearn 8x8 digits, residual CNN (170k params)",
                       epochs=10, lr=3e-3, batch_size=64)
_MNIST1D_CNN = TaskSpec("mnist1d-cnn", "mnist1d", "mnist1d-cnn", 10, "MNIST-1D (4000/1000), 1-D residual CNN",
                        epochs=15, lr=5e-3, batch_size=64)
BUILTIN_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _DIGITS_CNN,
        TaskSpec("digits-mlp", "digits", "mlp", 10, "sklearn 8x8 digits as 64 features, MLP 128-64",
                 dataset_kwargs={"flat": True}, arch_kwargs={"in_features": 64, "hidden": [128, 64]},
                 epochs=40, lr=3e-3, batch_size=64),
        _MNIST1D_CNN,
        TaskSpec("mnist1d-mlp", "mnist1d", "mlp", 10, "MNIST-1D (4000/1000) as 40 features, MLP 256-256",
                 dataset_kwargs={"channel": False}, arch_kwargs={"in_features": 40, "hidden": [256, 256]},
                 epochs=30, lr=3e-3, batch_size=100, weight_decay=1e-2),
        TaskSpec("wine-mlp", "wine", "mlp", 3, "sklearn wine (13 standardized features), MLP 32-16",
                 arch_kwargs={"in_features": 13, "hidden": [32, 16]}, epochs=60, lr=3e-3, batch_size=32),
        TaskSpec("breast-cancer-mlp", "breast-cancer", "mlp", 2,
                 "sklearn breast cancer (30 standardized features), MLP 64-32",
                 arch_kwargs={"in_features": 30, "hidden": [64, 32]}, epochs=40, lr=1e-3, batch_size=32,
                 weight_decay=1e-2),
        _fewshot(_DIGITS_CNN, 5, 5, "digits-5w5s"),
        _fewshot(_MNIST1D_CNN, 5, 10, "mnist1d-5w10s"),
    )
}
"""The built-in task zoo, by name."""


#: Tasks in the synthetic family (:data:`SYNTHETIC_TASKS`); each with at least five classes and 800 samples also
#: gets a few-shot variant.
N_SYNTHETIC = 64


def _synthetic(i: int) -> TaskSpec:
    """Synthetic task ``i``: its problem, size, noise and MLP drawn by ``random.Random(i)`` (a test pins the
    draws the shipped rows were built from), spread over what the zoo covers thinly: tiny and small tabular sets,
    label noise, over-parameterized MLPs on little data (where pruning can regularize), deeper and wider MLPs,
    many classes."""
    r = random.Random(i)
    n = r.choice((120, 160, 200, 300, 400, 600, 800, 1200, 2000, 3000))
    f = r.choice((4, 6, 8, 12, 16, 24, 32, 48, 64))
    c = r.choice((2, 2, 3, 3, 4, 5, 6, 8, 10))
    inf = max(2, round(f * r.uniform(0.25, 0.8)))
    while c > 2**inf:  # make_classification needs n_classes <= 2 ** n_informative
        inf += 1
    f = max(f, inf)
    sep, flip = round(r.uniform(0.4, 2.0), 2), r.choice((0.0, 0.0, 0.02, 0.05, 0.1, 0.15, 0.2))
    hidden = r.choice(((16,), (32,), (64,), (32, 16), (64, 32), (128, 64), (256, 128), (64, 64, 32),
                       (128, 128, 64), (256, 256)))
    wd = r.choice((1e-4, 1e-3, 1e-2))
    return TaskSpec(f"synth-{i:02d}-mlp", "synthetic", "mlp", c,
                    f"make_classification #{i}: {n} samples, {f} features ({inf} informative), {c} classes, "
                    f"separation {sep}, label noise {flip:.0%}; MLP {'-'.join(map(str, hidden))}",
                    dataset_kwargs={"problem": i, "n_samples": n, "n_features": f, "n_informative": inf,
                                    "n_classes": c, "class_sep": sep, "flip_y": flip},
                    arch_kwargs={"in_features": f, "hidden": list(hidden)},
                    epochs=60 if n < 500 else 40 if n < 1500 else 25, lr=3e-3, batch_size=32 if n < 1000 else 64,
                    weight_decay=wd)


def _synthetic_family(n: int) -> dict[str, TaskSpec]:
    specs = {}
    for i in range(1, n + 1):
        spec = specs[f"synth-{i:02d}-mlp"] = _synthetic(i)
        if spec.n_classes >= 5 and spec.dataset_kwargs["n_samples"] >= 800:
            k_shot = random.Random(-i).choice((5, 10))
            name = f"synth-{i:02d}-5w{k_shot}s"
            specs[name] = _fewshot(spec, 5, k_shot, name)
    return specs


SYNTHETIC_TASKS: dict[str, TaskSpec] = _synthetic_family(N_SYNTHETIC)
"""Meta-training tasks: tabular problems drawn with scikit-learn's ``make_classification``, each with its own
teacher. They exist to widen the shipped meta-dataset (``experiments/build_metadataset.py --synthetic``), so
the warm-start predictor learns from more than the zoo's few tasks; :func:`load_task` accepts their names, search
configs do not."""


def list_tasks(cache_dir: str | Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Describe the built-in tasks without training anything.

    Args:
        cache_dir: Teacher cache to look in (see :func:`~metacompress.learners.teachers.resolve_cache_dir`).
        seed: Seed whose cached teacher accuracy is reported.

    Returns:
        One dict per task: ``name``, ``dataset``, ``arch``, ``description``, ``n_classes``, ``n_way``, ``k_shot``
        and ``teacher_accuracy`` (``None`` when that teacher is not cached yet).
    """
    return [{"name": s.name, "dataset": s.dataset, "arch": s.arch, "description": s.description,
             "n_classes": s.n_way or s.n_classes, "n_way": s.n_way, "k_shot": s.k_shot,
             "teacher_accuracy": cached_accuracy(s.teacher_spec(seed), cache_dir)}
            for s in BUILTIN_TASKS.values()]


def _build(spec: TaskSpec, seed: int, cache_dir: str | Path | None, progress: bool) -> Task:
    """Materialise ``spec``: build the data, get (train or load) the teacher, assemble the Task."""
    kwargs = dict(spec.dataset_kwargs)
    if spec.dataset == "mnist1d":
        kwargs["cache_dir"] = resolve_cache_dir(cache_dir)
    split: ArraySplit = load_dataset(spec.dataset, seed, **kwargs)
    extra: dict[str, Any] = {}
    teacher_split = task_split = split
    if spec.n_way is not None:
        classes, teacher_split, task_split = fewshot_split(split, spec.n_way, int(spec.k_shot or 0), seed)
        extra = {"n_way": spec.n_way, "k_shot": spec.k_shot, "classes": classes}
    teacher_spec = spec.teacher_spec(seed)
    teacher_train, val = teacher_split.tensors()
    teacher, accuracy = get_teacher(teacher_spec, teacher_train, val, cache_dir, progress=progress)
    train = task_split.tensors()[0] if spec.n_way is not None else teacher_train
    info = {"input_shape": list(split.input_shape), "n_train": len(train), "n_val": len(val),
            "teacher_accuracy": accuracy, "arch": spec.arch, "dataset": spec.dataset, "seed": seed,
            "n_params": count_parameters(teacher), "description": spec.description,
            "teacher_key": teacher_cache_key(teacher_spec), **extra}
    return Task(spec.name, teacher, train, val, spec.n_way or spec.n_classes, info)


def fewshot_task(base: str, n_way: int, k_shot: int, seed: int = 0, *, cache_dir: str | Path | None = None,
                 progress: bool = False) -> Task:
    """Build an N-way K-shot variant of a built-in task.

    Args:
        base: Name of a regular (not few-shot) built-in task, e.g. ``"digits-cnn"``.
        n_way: Number of classes, drawn with ``seed``.
        k_shot: Labelled training samples per class in the returned task's ``train``.
        seed: Seed of the class choice, the shots, the split and the teacher.
        cache_dir: Teacher cache folder.
        progress: Show a progress bar while training the teacher.

    Returns:
        A task named ``"<base>-<n_way>w<k_shot>s"`` whose ``train`` holds exactly ``n_way * k_shot`` samples.

    Raises:
        ConfigError: If ``base`` is unknown or few-shot already, or ``n_way``/``k_shot`` are out of range.
    """
    if base not in BUILTIN_TASKS:
        raise unknown_key("task.base", base, BUILTIN_TASKS)
    base_spec = BUILTIN_TASKS[base]
    if base_spec.n_way is not None:
        regular = [name for name, spec in BUILTIN_TASKS.items() if spec.n_way is None]
        raise unknown_key("task.base", base, regular)
    for field_name, value in (("n_way", n_way), ("k_shot", k_shot)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid_value(f"task.{field_name}", "a positive integer", value)
    spec = _fewshot(base_spec, n_way, k_shot, f"{base}-{n_way}w{k_shot}s")
    return _build(spec, _seed(seed), cache_dir, progress)


def _seed(seed: Any, field_name: str = "task.seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise invalid_value(field_name, "a non-negative integer", seed)
    return seed


def load_task(spec: str | Mapping[str, Any], *, cache_dir: str | Path | None = None, seed: int = 0,
              progress: bool = False) -> Task:
    """Build a task from a built-in name or a config mapping.

    Args:
        spec: A built-in name (``"digits-cnn"``), ``{"name": "digits-cnn", "seed": 1}``, or
            ``{"factory": "my_pkg.my_module:make_task", "kwargs": {...}}``. Keys whose value is ``None`` are
            ignored, so a validated ``TaskConfig`` turned into a dict works as is.
        cache_dir: Teacher cache folder; default ``$METACOMPRESS_CACHE`` or ``~/.cache/metacompress``.
        seed: Seed of the split, the few-shot classes and the teacher (a ``seed`` in ``spec`` wins). A factory
            that has a ``seed`` parameter receives it, unless ``kwargs`` sets ``seed`` itself.
        progress: Show a progress bar while a teacher trains.

    Returns:
        The task, with its teacher trained (or loaded from the cache) and in eval mode.

    Raises:
        ConfigError: On an unknown task name or key, a bad seed, or a factory that does not import or does not
            return a :class:`Task`; ``field`` names the offending key (``task``, ``task.factory``, ...).
    """
    name_field = "task" if isinstance(spec, str) else "task.name"
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise invalid_value("task", "a built-in task name or a mapping with 'name' or 'factory'", spec)
    allowed = ("name", "seed", "factory", "kwargs")
    for key in spec:
        if key not in allowed:
            raise unknown_key(f"task.{key}", str(key), allowed)
    values = {k: v for k, v in spec.items() if v is not None}
    seed = _seed(values.get("seed", seed))
    if "factory" in values:
        if "name" in values:
            raise invalid_value("task", "either a 'name' or a 'factory', not both", dict(spec))
        from .plugins import from_factory  # noqa: PLC0415 (plugins imports Task from here)

        return from_factory(values["factory"], values.get("kwargs"), seed)
    if "name" not in values:
        raise invalid_value("task", "a mapping with a 'name' or a 'factory'", dict(spec))
    if values.get("kwargs"):
        raise invalid_value("task.kwargs", "empty for a built-in task (kwargs go to a factory)", values["kwargs"])
    name = values["name"]
    specs = {**BUILTIN_TASKS, **SYNTHETIC_TASKS}
    if not isinstance(name, str) or name not in specs:
        raise unknown_key(name_field, str(name), BUILTIN_TASKS)
    return _build(specs[name], seed, cache_dir, progress)
