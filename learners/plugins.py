"""Task plugins: a config's ``task: {factory: "pkg.module:function", kwargs: {...}}`` imported, called and checked.

The factory returns a :class:`~metacompress.learners.Task` (the user's trained teacher and data); it is checked
here, before any search starts, so that a model that does not map a batch to ``(batch, n_classes)`` logits is one
``ConfigError`` naming ``task.teacher`` (CLI exit 2), not a failure inside every trial. Its
``nn.MultiheadAttention`` modules are rewritten with one ``nn.Linear`` per projection
(:func:`~metacompress.learners.attention.split_attention`) and its ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` modules
with one per weight matrix (:func:`~metacompress.learners.recurrent.split_recurrent`), so that the search compresses
them too; each rewrite is checked to compute what the teacher did.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Mapping
from typing import Any

import torch

from metacompress.learners.attention import split_attention
from metacompress.learners.measure import layer_forwards, module_device
from metacompress.learners.models import count_parameters
from metacompress.learners.recurrent import split_recurrent
from metacompress.learners.teachers import evaluate_accuracy
from metacompress.spaces.errors import MetacompressError, invalid_value

from .tasks import Task

__all__ = ["from_factory"]

_LOG = logging.getLogger(__name__)
#: Tolerance, relative to the logits' scale, within which a rewritten teacher must reproduce the teacher.
SPLIT_TOLERANCE = 1e-4

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _resolve_factory(path: Any) -> Any:
    """Import ``"pkg.module:function"`` and return the callable (ConfigError on ``task.factory`` otherwise)."""
    allowed = "an import path like 'my_pkg.my_module:make_task'"
    if not isinstance(path, str) or not _FACTORY_RE.match(path):
        raise invalid_value("task.factory", allowed, path)
    module_name, attr = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise invalid_value("task.factory", f"{allowed} whose module imports ({exc})", path) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise invalid_value("task.factory", f"{allowed} naming an attribute of {module_name!r}", path)
        obj = getattr(obj, part)
    if not callable(obj):
        raise invalid_value("task.factory", f"{allowed} naming a callable", path)
    return obj


def _accepts_seed(factory: Any) -> bool:
    try:
        return "seed" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def from_factory(path: str, kwargs: Any, seed: int) -> Task:
    """Call the factory; ``seed`` is passed on when the factory has a ``seed`` parameter not set in ``kwargs``."""
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise invalid_value("task.kwargs", "a mapping of keyword arguments", kwargs)
    factory = _resolve_factory(path)
    kwargs = dict(kwargs)
    if "seed" not in kwargs and _accepts_seed(factory):
        kwargs["seed"] = seed
    try:
        task = factory(**kwargs)
    except TypeError as exc:
        raise invalid_value("task.kwargs", f"arguments accepted by {path!r} ({exc})", kwargs) from None
    except MetacompressError:
        raise
    except Exception as exc:  # the user's code failed (a missing file, a data source down): say whose, exit 1
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise MetacompressError(f"the task factory {path!r} raised {type(exc).__name__}: {first}") from exc
    if not isinstance(task, Task):
        raise invalid_value("task.factory", "a function returning metacompress.learners.Task",
                            f"{path} returned {type(task).__name__}")
    task.teacher.eval()
    _check_logits(task, path)
    task.teacher = _split_layers(task)
    task.info.setdefault("factory", path)
    task.info.setdefault("input_shape", list(task.input_shape))
    task.info.setdefault("n_train", len(task.train))
    task.info.setdefault("n_val", len(task.val))
    task.info.setdefault("n_params", count_parameters(task.teacher))
    if "teacher_accuracy" not in task.info:
        task.info["teacher_accuracy"] = evaluate_accuracy(task.teacher, task.val)
    accuracy = task.info["teacher_accuracy"]
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not accuracy > 0:
        # every student is scored relative to it: nothing to compare with
        raise invalid_value("task.teacher", "a trained model: its accuracy on the validation data is 0, so no "
                            "student can be compared with it", f"{path} (accuracy {accuracy})")
    return task


def _check_logits(task: Task, path: str) -> None:
    """A factory's teacher must map a batch of its validation inputs to ``(batch, n_classes)`` logits."""
    try:
        with torch.no_grad():
            out = task.teacher(task.example_input(2).to(module_device(task.teacher)))
    except Exception as exc:  # noqa: BLE001 - the user's model: any failure is bad input, named in one line
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise invalid_value("task.teacher", f"a model that runs on the task's validation inputs "
                            f"({type(exc).__name__}: {first})", path) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, task.n_classes):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise invalid_value("task.teacher", f"a model returning class logits of shape (batch, {task.n_classes})",
                            f"{path} returned {got} for a batch of 2")


def _split_layers(task: Task) -> torch.nn.Module:
    """The teacher with its attention projections and recurrent weight matrices as Linear layers, each rewrite
    kept only if it reproduces the teacher's logits."""
    model, split, kept = split_attention(task.teacher)
    if kept:
        _LOG.warning("task.teacher: %d attention module(s) use add_bias_kv or add_zero_attn; their projections are "
                     "not searched", kept)
    if split:
        model = _checked(task, task.teacher, model, "its attention rewritten as one Linear layer per projection",
                         "its projections are not searched")
    rewritten, split = split_recurrent(model)
    if split:
        model = _checked(task, model, rewritten, "its LSTM/GRU/RNN layers rewritten as one Linear layer per weight "
                         "matrix", "their weights are not searched")
    return model


def _checked(task: Task, before: torch.nn.Module, after: torch.nn.Module, what: str, why: str) -> torch.nn.Module:
    """``after`` if it computes ``before``'s logits on 8 validation inputs (else ``before``, with one warning)."""
    x = task.example_input(8).to(module_device(before))
    try:
        with torch.no_grad(), layer_forwards():
            ref, out = before(x), after(x)
    except Exception as exc:  # noqa: BLE001 - e.g. a forward that reads the packed in_proj_weight itself
        _LOG.warning("task.teacher: with %s, the model fails (%s: %s); %s", what, type(exc).__name__,
                     str(exc).splitlines()[0][:120] if str(exc) else "", why)
        return before
    gap = float((ref - out).abs().max()) / max(float(ref.abs().max()), 1.0)
    if not gap <= SPLIT_TOLERANCE:
        _LOG.warning("task.teacher: %s changes the logits (by %.2g of their scale); %s", what, gap, why)
        return before
    return after
