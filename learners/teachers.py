"""Teacher training and the on-disk teacher cache.

:func:`train_teacher` trains any classifier on a ``TensorDataset`` (AdamW + one-cycle schedule, deterministic for
a given seed on a given device). :func:`get_teacher` wraps it with a cache: a teacher is identified by a
:class:`TeacherSpec` (data, architecture, training recipe, seed) plus the torch version, hashed with sha1, and
stored as ``<key>.pt`` (a ``state_dict``, loaded with ``weights_only=True``) next to ``<key>.json`` (its validation
accuracy and the spec). Both files are written to a temporary name and moved with ``os.replace``, so processes
that train the same teacher at the same time never see half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from metacompress.learners.data import dataset_tensors
from metacompress.learners.models import count_parameters, make_model
from metacompress.spaces.errors import invalid_value

__all__ = [
    "TeacherSpec",
    "train_teacher",
    "evaluate_accuracy",
    "get_teacher",
    "cached_accuracy",
    "teacher_cache_key",
    "resolve_cache_dir",
    "default_device",
]

CACHE_ENV = "METACOMPRESS_CACHE"


@dataclass(frozen=True)
class TeacherSpec:
    """Everything that determines a trained teacher.

    Attributes:
        arch: Architecture name for :func:`~metacompress.learners.models.make_model`.
        arch_kwargs: Keyword arguments of that architecture (JSON-safe).
        data: JSON-safe description of the training data (dataset name, its arguments, split seed, classes...).
        epochs: Training epochs.
        lr: Peak learning rate of the one-cycle schedule.
        batch_size: Mini-batch size.
        weight_decay: AdamW weight decay.
        label_smoothing: Label smoothing of the cross-entropy loss.
        seed: Seed of the initialisation and of the batch order.
    """

    arch: str
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    seed: int = 0

    def build(self) -> nn.Module:
        """Return a freshly initialised model of this spec's architecture (seeded with ``seed``).

        The global torch RNG is left as it was.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return make_model(self.arch, **dict(self.arch_kwargs))


def default_device() -> torch.device:
    """``cuda`` when available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir`` if given, else ``$METACOMPRESS_CACHE``, else ``~/.cache/metacompress``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metacompress"


def teacher_cache_key(spec: TeacherSpec) -> str:
    """sha1 of the spec (data, architecture, recipe, seed) and ``torch.__version__``."""
    payload = {"spec": asdict(spec), "torch": torch.__version__}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, computed in eval mode on the model's device."""
    x, y = dataset_tensors(dataset)
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(y), 1)


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, description: str) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def train_teacher(model: nn.Module, train: Dataset, val: Dataset, *, epochs: int, lr: float, batch_size: int,
                  seed: int, weight_decay: float = 1e-4, label_smoothing: float = 0.0,
                  device: str | torch.device | None = None, num_threads: int | None = None,
                  progress: bool = False) -> float:
    """Train ``model`` in place with AdamW and a one-cycle schedule; return its validation accuracy.

    The batch order comes from a generator seeded with ``seed``, so a run is reproducible on a given device.
    The model is trained on ``device`` (default: cuda when available) and moved back to the CPU in eval mode.

    Args:
        model: The classifier (logits out).
        train: Training ``TensorDataset(x, y)`` (any map-style dataset of ``(x, y)`` pairs works).
        val: Validation dataset, only evaluated at the end.
        epochs: Number of passes over ``train``.
        lr: Peak learning rate.
        batch_size: Mini-batch size.
        seed: Seed of the batch order.
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        device: Where to train.
        num_threads: Intra-op CPU threads while training (restored afterwards); ``None`` keeps torch's setting.
            One thread is often fastest for these small models on a busy machine.
        progress: Show a ``rich`` progress bar.

    Returns:
        Accuracy on ``val`` after the last epoch.
    """
    device = torch.device(device) if device is not None else default_device()
    with _threads(num_threads):
        _fit(model, train, device, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
             weight_decay=weight_decay, label_smoothing=label_smoothing, progress=progress)
    model.cpu().eval()
    return evaluate_accuracy(model, val)


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    if num_threads is None:
        yield
        return
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise invalid_value("num_threads", "a positive integer or None", num_threads)
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(model: nn.Module, train: Dataset, device: torch.device, *, epochs: int, lr: float, batch_size: int,
         seed: int, weight_decay: float, label_smoothing: float, progress: bool) -> None:
    x, y = dataset_tensors(train)
    x, y = x.to(device), y.to(device)
    model.to(device).train()
    steps = max((len(y) + batch_size - 1) // batch_size, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    gen = torch.Generator().manual_seed(seed)
    with _progress_bar(progress, epochs, "training teacher") as advance:
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen).to(device)
            for i in range(steps):
                idx = order[i * batch_size:(i + 1) * batch_size]
                if len(idx) < 2 and len(y) >= 2:  # batch norm cannot train on a single sample
                    continue
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
                sched.step()
            if advance is not None:
                advance()


def _paths(spec: TeacherSpec, cache_dir: str | Path | None) -> tuple[Path, Path]:
    folder = resolve_cache_dir(cache_dir) / "teachers"
    key = teacher_cache_key(spec)
    return folder / f"{spec.arch}-{key}.pt", folder / f"{spec.arch}-{key}.json"


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cached_accuracy(spec: TeacherSpec, cache_dir: str | Path | None = None) -> float | None:
    """The validation accuracy of the cached teacher of ``spec``, or ``None`` if it is not cached."""
    weights, meta = _paths(spec, cache_dir)
    if not (weights.exists() and meta.exists()):
        return None
    try:
        return float(json.loads(meta.read_text())["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def get_teacher(spec: TeacherSpec, train: Dataset, val: Dataset, cache_dir: str | Path | None = None, *,
                progress: bool = False) -> tuple[nn.Module, float]:
    """Load the teacher of ``spec`` from the cache, or train it and cache it.

    Args:
        spec: What to train.
        train: Training data (must match ``spec.data``; the cache key trusts the spec).
        val: Validation data for the reported accuracy.
        cache_dir: Cache folder (see :func:`resolve_cache_dir`).
        progress: Show a progress bar while training.

    Returns:
        ``(model, accuracy)``: the teacher on the CPU in eval mode, and its validation accuracy.
    """
    weights, meta = _paths(spec, cache_dir)
    model = spec.build()
    accuracy = cached_accuracy(spec, cache_dir)
    if accuracy is not None:
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return model.eval(), accuracy
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):  # unreadable: retrain
            model = spec.build()
    start = time.perf_counter()
    accuracy = train_teacher(model, train, val, epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size,
                             seed=spec.seed, weight_decay=spec.weight_decay,
                             label_smoothing=spec.label_smoothing, progress=progress)
    info = {"accuracy": accuracy, "train_seconds": round(time.perf_counter() - start, 3),
            "n_params": count_parameters(model), "torch": torch.__version__, "spec": asdict(spec)}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda fh: torch.save(state, fh))
    _atomic_write(meta, lambda fh: fh.write(json.dumps(info, indent=2, default=str).encode()))
    return model.eval(), accuracy
