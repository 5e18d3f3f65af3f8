"""Offline datasets of the built-in task zoo and few-shot episode construction.

Every builder returns an :class:`ArraySplit` of numpy arrays (``float32`` features, ``int64`` labels); turn one
into ``TensorDataset`` objects with :meth:`ArraySplit.tensors`. Nothing here touches the network: the data come
from scikit-learn's bundled sets and from the ``mnist1d`` package's generator (never its downloader).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from metacompress.spaces.errors import invalid_value, unknown_key

__all__ = [
    "ArraySplit",
    "DATASETS",
    "load_dataset",
    "load_digits_data",
    "load_mnist1d_data",
    "load_wine_data",
    "load_breast_cancer_data",
    "load_synthetic_data",
    "fewshot_split",
    "to_dataset",
    "model_input",
    "dataset_tensors",
]


@dataclass(frozen=True)
class ArraySplit:
    """A train/validation split held as numpy arrays.

    Attributes:
        x_train: Training features, ``float32``, shape ``(n_train, *input_shape)``.
        y_train: Training labels, ``int64`` in ``[0, n_classes)``.
        x_val: Validation features, same trailing shape as ``x_train``.
        y_val: Validation labels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def n_classes(self) -> int:
        """Number of classes, taken from the largest label seen."""
        return int(max(self.y_train.max(), self.y_val.max())) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def tensors(self) -> tuple[TensorDataset, TensorDataset]:
        """Return ``(train, val)`` as ``TensorDataset(x_float32, y_int64)``."""
        return to_dataset(self.x_train, self.y_train), to_dataset(self.x_val, self.y_val)


def to_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """Wrap arrays as ``TensorDataset(float32 features, int64 labels)``."""
    return TensorDataset(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32),
                         torch.as_tensor(np.ascontiguousarray(y), dtype=torch.int64))


def _stratified_split(x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float = 0.2) -> ArraySplit:
    from sklearn.model_selection import train_test_split

    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, stratify=y, random_state=seed)
    return ArraySplit(x_tr.astype(np.float32), y_tr.astype(np.int64), x_va.astype(np.float32), y_va.astype(np.int64))


def _standardize(split: ArraySplit) -> ArraySplit:
    mean = split.x_train.mean(axis=0)
    std = split.x_train.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return ArraySplit(((split.x_train - mean) / std).astype(np.float32), split.y_train,
                      ((split.x_val - mean) / std).astype(np.float32), split.y_val)


def load_digits_data(seed: int = 0, *, flat: bool = False) -> ArraySplit:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), pixels scaled to ``[0, 1]``.

    Args:
        seed: Seed of the stratified 80/20 train/validation split.
        flat: Return samples of shape ``(64,)`` instead of ``(1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    x = x if flat else x.reshape(-1, 1, 8, 8)
    return _stratified_split(x, bunch.target, seed)


def load_wine_data(seed: int = 0) -> ArraySplit:
    """scikit-learn's wine data (178 samples, 13 features, 3 classes), standardized with train statistics.

    Args:
        seed: Seed of the stratified 80/20 train/validation split.
    """
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return _standardize(_stratified_split(bunch.data, bunch.target, seed))


def load_breast_cancer_data(seed: int = 0) -> ArraySplit:
    """scikit-learn's breast-cancer data (569 samples, 30 features, 2 classes), standardized with train statistics.

    Args:
        seed: Seed of the stratified 80/20 train/validation split.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return _standardize(_stratified_split(bunch.data, bunch.target, seed))


def load_synthetic_data(seed: int = 0, *, problem: int = 0, n_samples: int = 400, n_features: int = 20,
                        n_informative: int = 8, n_classes: int = 3, class_sep: float = 1.0,
                        flip_y: float = 0.0) -> ArraySplit:
    """A tabular problem from scikit-learn's ``make_classification``, standardized with train statistics.

    The meta-training family of :data:`metacompress.learners.tasks.SYNTHETIC_TASKS` is built from these: every
    ``problem`` is another draw of clusters, so tasks differ in data, not only in size.

    Args:
        seed: Seed of the stratified 80/20 train/validation split.
        problem: Seed of the generator (which problem).
        n_samples: Total samples, split 80/20.
        n_features: Features, of which ``n_informative`` informative and 2 redundant (the rest noise).
        n_informative: Informative features.
        n_classes: Classes (one cluster each).
        class_sep: Cluster separation: smaller is harder.
        flip_y: Share of labels assigned at random (label noise, in training and validation alike).
    """
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n_samples, n_features=n_features, n_informative=n_informative,
                               n_redundant=min(2, n_features - n_informative), n_classes=n_classes,
                               n_clusters_per_class=1, class_sep=class_sep, flip_y=flip_y, random_state=problem)
    return _standardize(_stratified_split(x, y, seed))


def load_mnist1d_data(seed: int = 0, num_samples: int = 5000, *, channel: bool = True,
                      cache_dir: str | Path | None = None) -> ArraySplit:
    """MNIST-1D generated offline with ``mnist1d.data.make_dataset`` (80/20 split, 10 classes, length 40).

    The generator's seed is ``42 + seed``, so ``seed=0`` reproduces the paper's default arguments. Generating
    5000 samples takes a few seconds, so the arrays are cached as ``.npz`` under ``cache_dir`` when one is given.
    The global ``random``/``numpy`` RNG states, which the generator reseeds, are restored afterwards.

    Args:
        seed: Offset added to the generator's default seed.
        num_samples: Total number of samples (at least 5000: 4000 train / 1000 validation by default).
        channel: Return samples of shape ``(1, 40)`` (for CNNs) instead of ``(40,)`` (for MLPs).
        cache_dir: Folder for the generated arrays; ``None`` generates them every time.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 5000:
        raise invalid_value("task.num_samples", "an integer >= 5000", num_samples)
    arrays = _mnist1d_cached(int(seed), num_samples, cache_dir)
    split = ArraySplit(*(arrays[k] for k in ("x", "y", "x_test", "y_test")))
    if channel:
        split = ArraySplit(split.x_train[:, None, :], split.y_train, split.x_val[:, None, :], split.y_val)
    return split


def _mnist1d_cached(seed: int, num_samples: int, cache_dir: str | Path | None) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = 42 + seed
    args_dict = {k: v for k, v in vars(args).items() if k != "url"}
    key = hashlib.sha1(json.dumps(args_dict, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "data" / f"mnist1d-{key}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64),
              "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    return arrays


DATASETS: dict[str, Callable[..., ArraySplit]] = {
    "digits": load_digits_data,
    "mnist1d": load_mnist1d_data,
    "wine": load_wine_data,
    "breast-cancer": load_breast_cancer_data,
    "synthetic": load_synthetic_data,
}
"""Registry of dataset names accepted by :func:`load_dataset`."""


def load_dataset(name: str, seed: int = 0, **kwargs: Any) -> ArraySplit:
    """Build a registered dataset by name.

    Args:
        name: A key of :data:`DATASETS`.
        seed: Seed of the split (or of the generator, for MNIST-1D).
        **kwargs: Extra arguments of that dataset's builder (e.g. ``flat=True`` for digits).

    Raises:
        ConfigError: If ``name`` is unknown.
    """
    if name not in DATASETS:
        raise unknown_key("task.dataset", name, DATASETS)
    return DATASETS[name](seed, **kwargs)


def fewshot_split(split: ArraySplit, n_way: int, k_shot: int, seed: int = 0) -> tuple[list[int], ArraySplit,
                                                                                     ArraySplit]:
    """Build an N-way K-shot episode from a full split.

    The ``n_way`` classes are drawn with ``seed`` and relabelled ``0..n_way-1`` in sorted order of their original
    labels. Then ``k_shot`` training samples per class are drawn with the same seed.

    Args:
        split: The full dataset.
        n_way: Number of classes in the episode.
        k_shot: Number of labelled training samples per class.
        seed: Seed of the class choice and the shot choice.

    Returns:
        ``(classes, full, shots)``: the original labels of the chosen classes; all data of those classes
        (relabelled; the teacher trains on its train part); and the episode, whose train part holds exactly
        ``n_way * k_shot`` samples and whose validation part is ``full``'s validation part.

    Raises:
        ConfigError: If ``n_way`` or ``k_shot`` is out of range for this dataset.
    """
    n_classes = split.n_classes
    if isinstance(n_way, bool) or not isinstance(n_way, int) or not 2 <= n_way <= n_classes:
        raise invalid_value("task.n_way", f"an integer in [2, {n_classes}]", n_way)
    rng = np.random.default_rng(seed)
    classes = sorted(int(c) for c in rng.choice(n_classes, size=n_way, replace=False))
    relabel = np.full(n_classes, -1, dtype=np.int64)
    relabel[classes] = np.arange(n_way)
    tr, va = np.isin(split.y_train, classes), np.isin(split.y_val, classes)
    full = ArraySplit(split.x_train[tr], relabel[split.y_train[tr]], split.x_val[va], relabel[split.y_val[va]])
    min_count = int(np.bincount(full.y_train, minlength=n_way).min())
    if isinstance(k_shot, bool) or not isinstance(k_shot, int) or not 1 <= k_shot <= min_count:
        raise invalid_value("task.k_shot", f"an integer in [1, {min_count}]", k_shot)
    shot_idx = np.concatenate([rng.choice(np.flatnonzero(full.y_train == c), size=k_shot, replace=False)
                               for c in range(n_way)])
    shots = ArraySplit(full.x_train[shot_idx], full.y_train[shot_idx], full.x_val, full.y_val)
    return classes, full, shots


def model_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a model takes it: floating point as float32, integers (token ids, category codes) kept as they are."""
    return x.to(torch.float32) if x.is_floating_point() else x


def dataset_tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a map-style dataset as ``(inputs, labels)``: inputs as a model takes them (:func:`model_input`),
    labels as int64. Items may be tensors, NumPy arrays or numbers; a ``TensorDataset`` is used as it is."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        return model_input(tensors[0]), tensors[1].long()
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return model_input(torch.stack([torch.as_tensor(x) for x in xs])), torch.as_tensor([int(y) for y in ys])
