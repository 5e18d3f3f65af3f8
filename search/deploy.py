"""From a finished trial to a file that serves without metacompress: ``metacompress export``.

The trial's packed export (``.mcz``, written by the search) is loaded back onto the teacher's architecture
(:func:`~metacompress.learners.load_compressed`) and made deployable (:func:`~metacompress.learners.deployable`:
compressed layers become plain layers, BatchNorm folded, split LSTM/GRU/RNN fused again, and, when the trial's
latency was timed on them, int8 dynamic Linear (and LSTM/GRU) kernels for weights of 8 bits or fewer). The output's
suffix picks the format:

* ``.pt2``: a ``torch.export`` program (the batch dimension dynamic), loaded with
  ``torch.export.load(path).module()``; float kernels only (``torch.export`` cannot hold ``torch.ao``'s dynamic
  int8 Linear). The default for a float runtime.
* ``.pt``: TorchScript, traced and frozen, loaded with ``torch.jit.load(path)`` (PyTorch 2.13 deprecates
  TorchScript in favour of ``torch.export``); float or int8 kernels. The default for an int8 runtime.

Either file loads with PyTorch alone and is checked before this returns: reloaded, a float file must predict the
validation data as the packed model does; an int8 file's agreement is measured and reported (its kernels also
quantize activations). It is the runtime form: pruned weights are stored as zeros in dense tensors, so the file is
larger than the trial's ``size_bytes`` (the packed storage form).
"""

from __future__ import annotations

import os
import warnings

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from metacompress.learners import deployable, load_compressed, predict_logits
from metacompress.learners.data import dataset_tensors
from metacompress.learners.measure import _freeze, _Frozen
from metacompress.spaces import ConfigError, MetacompressError, invalid_value

from .checks import writable_folder
from .config import SearchConfig
from .study import ATTR_SPACE, counted_trials, make_storage, storage_file

__all__ = ["ExportResult", "export_trial"]

#: Share of validation predictions a float file must agree on with the packed model (the same arithmetic, up to
#: rounding; a near tie may flip). Int8 kernels also quantize activations, so an int8 file may differ more: it is
#: written and its agreement reported.
MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_trial` wrote and how it checked it."""

    path: Path
    size_bytes: int
    trial_accuracy: float
    accuracy: float
    agreement: float
    int8: bool
    format: str  # "torch.export" (.pt2) or "TorchScript" (.pt)

    @property
    def load_hint(self) -> str:
        """The one line of Python that loads the file."""
        if self.format == "torch.export":
            return f"torch.export.load({str(self.path)!r}).module()"
        return f"torch.jit.load({str(self.path)!r})"


def _trial_artifact(cfg: SearchConfig, number: int) -> tuple[Path, dict[str, float], str | None]:
    """The packed export and the recorded metrics of finished trial ``number`` of the config's study, and the
    study's space fingerprint."""
    file = storage_file(cfg.storage)
    if file is not None and not file.is_file():  # never create a database to read one
        raise invalid_value("storage", "the storage of a finished search (no such file)", cfg.storage)
    try:
        study = optuna.load_study(study_name=cfg.study_name, storage=make_storage(cfg.storage))
    except KeyError:
        raise invalid_value("study_name", f"a study in {cfg.storage} (run `metacompress search` first)",
                            cfg.study_name) from None
    done = {t.number: t for t in counted_trials(study) if t.state == TrialState.COMPLETE}
    trial = done.get(number)
    if trial is None:
        shown = ", ".join(map(str, sorted(done)[:20])) + (", ..." if len(done) > 20 else "")
        raise invalid_value("trial", f"a finished trial of study {cfg.study_name!r} ({shown or 'none yet'})", number)
    artifact = trial.user_attrs.get("artifact")
    if not artifact or not Path(artifact).is_file():
        raise invalid_value("trial", "a trial whose packed export (.mcz) still exists", f"{number} ({artifact})")
    return Path(artifact), dict(trial.user_attrs["metrics"]), study.user_attrs.get(ATTR_SPACE)


def _output_path(cfg: SearchConfig, number: int, output: str | Path | None, int8: bool) -> Path:
    """Where to write: ``output`` (``.pt2`` or ``.pt``), by default ``<out>/trial-<number>.pt2`` (``.pt`` for int8)."""
    path = Path(output) if output is not None else Path(cfg.out) / f"trial-{number}.{'pt' if int8 else 'pt2'}"
    if path.suffix not in (".pt", ".pt2") or path.is_dir():
        raise ConfigError(f"The 'output' value must be a file path ending in .pt2 (torch.export) or .pt "
                          f"(TorchScript). Got '{path}'.", "output")
    if int8 and path.suffix == ".pt2":
        raise ConfigError(f"The 'output' value must end in .pt for int8 kernels (torch.export cannot hold "
                          f"torch.ao's dynamic int8 Linear; --no-int8 writes .pt2). Got '{path}'.", "output")
    writable_folder("output" if output is not None else "out", path.parent)  # before the trial is rebuilt
    return path


def _write(model: torch.nn.Module, example: torch.Tensor, path: Path, number: int, int8: bool) -> Any:
    """Write ``model`` to ``path`` in the format its suffix names; returns the reloaded callable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt2":
        try:
            with warnings.catch_warnings():  # nn.LSTM/GRU re-assign their weight list while traced: harmless
                warnings.filterwarnings("ignore", message="The tensor attributes .*_flat_weights")
                program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds; the message says what failed
            raise MetacompressError(f"trial {number} does not export with torch.export ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]}); --output FILE.pt writes TorchScript") \
                from None
        torch.export.save(program, str(path))
        return torch.export.load(str(path)).module()
    frozen = _freeze(model, example)
    if not isinstance(frozen, _Frozen):
        way_out = ("--no-int8 writes float kernels" if int8 else "load its packed export with "
                   "metacompress.learners.load_compressed(path, skeleton=teacher) instead")
        raise MetacompressError(f"trial {number} does not trace to TorchScript{' with int8 kernels' if int8 else ''}; "
                                f"{way_out}")
    torch.jit.save(frozen.graph, str(path))
    return torch.jit.load(str(path))


def export_trial(cfg: SearchConfig, number: int, output: str | Path | None = None, *, int8: bool | None = None
                 ) -> ExportResult:
    """Write trial ``number`` of ``cfg``'s study as a ``torch.export`` (``.pt2``) or TorchScript (``.pt``) file and
    check it.

    Args:
        cfg: The search's config (its task, storage and study name).
        number: A finished trial's number (``metacompress report`` lists the Pareto ones).
        output: Where to write it; its suffix picks the format (default ``<out>/trial-<number>.pt2``, ``.pt`` when
            the runtime is int8).
        int8: Run Linear layers of 8 bits or fewer with int8 kernels (``None``: as the trial's latency was
            measured, its ``int8_runtime`` metric: the faster of the two; float for a ``.pt2`` output).
            TorchScript only.

    Raises:
        ConfigError: No such study or finished trial, its export is gone, or an output this runtime cannot take.
        MetacompressError: The model does not export, or the reloaded float file predicts differently.
    """
    from .runner import build_space, load_config_task  # noqa: PLC0415 (runner imports the heavy backends)

    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise invalid_value("trial", "a trial number >= 0", number)
    artifact, metrics, fingerprint = _trial_artifact(cfg, number)
    if int8 is None:  # the trial's runtime, unless the output names a format that has only float kernels
        int8 = bool(metrics.get("int8_runtime", 0.0)) and not str(output or "").endswith(".pt2")
    path = _output_path(cfg, number, output, bool(int8))
    task = load_config_task(cfg)
    if fingerprint is not None and fingerprint != build_space(cfg, task).fingerprint():
        raise ConfigError(f"The 'config' value must be the config the study {cfg.study_name!r} searched with (its "
                          f"task, model and space; this one builds another, e.g. another task or a changed "
                          f"model). Got '{cfg.config_path or cfg.task_name}'.", "config")
    model = load_compressed(artifact, task.teacher).eval()
    # written next to its place and moved there once checked: an export stopped half-way (Ctrl-C, kill) or refused
    # leaves any earlier file of that name as it was
    part = path.with_name(f".{path.name}.part{path.suffix}")  # the suffix still names the format
    try:
        reloaded = _write(deployable(model, int8=bool(int8)), task.example_input(2), part, number, bool(int8))
        x, y = dataset_tensors(task.val)
        with torch.no_grad():  # a frozen graph is not an nn.Module (no train/eval mode): called as a plain function
            theirs = torch.cat([reloaded(x[i : i + 1024]) for i in range(0, len(x), 1024)]).argmax(1)
        agreement = float((predict_logits(model, x).argmax(1) == theirs).float().mean())
        if agreement < MIN_AGREEMENT and not int8:
            raise MetacompressError(f"the exported file of trial {number} agreed with the packed model on only "
                                    f"{agreement:.1%} of the validation predictions; nothing was written")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return ExportResult(path, path.stat().st_size, float(metrics["accuracy"]), float((theirs == y).float().mean()),
                        agreement, bool(int8), "torch.export" if path.suffix == ".pt2" else "TorchScript")
