"""Knowledge-distillation fine-tuning of a compressed student.

The loss of one batch is ``λ·CE(s, y) + (1−λ)·T²·KL(softmax(t/T) ‖ softmax(s/T))``, plus optionally
``β·Σ‖A_s − A_t‖²`` over the feature maps of named layers (every compressible layer but the last unless named)
and ``μ‖θ − θ*‖²`` toward a reference (a meta-learned initialisation, else the student's own starting weights,
i.e. L2-SP). A feature map does not depend on the layer's width, so a channel-pruned student still matches its
teacher: the attention map of a convolution's output (channel-mean of squares, Zagoruyko & Komodakis 2017) and
the batch similarity matrix of a Linear one (Tung & Mori 2019). The teacher's logits are computed once per call,
not once per step: the teacher is frozen and the data is not augmented, so they never change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from metacompress.spaces import CompressionPolicy, MetacompressError

from .compress import compressible_layers
from .measure import _tensors, accuracy, in_eval_mode, on_device, predict_logits

__all__ = ["FinetuneConfig", "NonFiniteLossError", "attention_map", "feature_map", "finetune", "kd_loss",
           "similarity_map"]

EpochCallback = Callable[[int, Mapping[str, float]], bool | None]


class NonFiniteLossError(MetacompressError, FloatingPointError):
    """The training loss became NaN or infinite; the trial should be recorded as failed."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(f"Non-finite loss {value} at epoch {epoch}, step {step}.")
        self.epoch, self.step, self.value = epoch, step, value


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, lam: float, temperature: float
) -> torch.Tensor:
    """λ·CE + (1−λ)·T²·KL(teacher ‖ student) on temperature-softened distributions."""
    ce = F.cross_entropy(student_logits, target)
    if lam >= 1.0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean", log_target=True,
    )
    return lam * ce + (1.0 - lam) * t * t * kl


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Spatial attention map (Zagoruyko & Komodakis): channel-mean of squares, flattened, L2-normalized."""
    a = features.pow(2).mean(1) if features.dim() > 2 else features.pow(2)
    return F.normalize(a.flatten(1), dim=1)


def similarity_map(features: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving map (Tung & Mori): the batch's ``N × N`` Gram matrix, rows L2-normalized."""
    f = features.flatten(1)
    return F.normalize(f @ f.T, dim=1)


def feature_map(features: torch.Tensor) -> torch.Tensor:
    """What the feature term matches: :func:`attention_map` for maps with spatial axes, :func:`similarity_map` for
    ``(N, C)`` features; neither depends on the number of channels."""
    return attention_map(features) if features.dim() > 2 else similarity_map(features)


def default_feature_layers(teacher: nn.Module) -> tuple[str, ...]:
    """Every compressible layer of ``teacher`` but the last (the logits are the KD term's)."""
    return tuple(compressible_layers(teacher))[:-1]


@dataclass
class FinetuneConfig:
    """How to fine-tune: everything not in the policy.

    Attributes:
        batch_size: Mini-batch size.
        device: ``"cpu"``, ``"cuda"`` ...
        seed: Seed of the batch order.
        feature_layers: Layer names whose feature maps are matched when ``policy.feature_beta > 0`` (empty:
            :func:`default_feature_layers` of the teacher).
        max_steps_per_epoch: Cap on steps per epoch (``None``: full passes).
        eval_every_epoch: Compute validation accuracy after each epoch (needed by early stopping).
        stop_after: Stop after this many optimizer steps in all (``None``: the full fine-tuning). The learning-rate
            schedule still spans the full fine-tuning, so the student is the full run's own after its first steps
            (the tuned proxy, :mod:`metacompress.learners.meta.proxy`); the last record may cover part of an epoch.
        on_step: Called as ``on_step(step)`` after each optimizer step (1-based, counted over epochs).
    """

    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    feature_layers: Sequence[str] = ()
    max_steps_per_epoch: int | None = None
    eval_every_epoch: bool = True
    stop_after: int | None = None
    on_step: Callable[[int], None] | None = None


class _FeatureTap:
    """Forward hooks that keep the outputs of named layers of one model."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(_m, _i, output):
            self.out[name] = output

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _prox(model: nn.Module, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    terms = [(p - reference[n]).pow(2).sum() for n, p in model.named_parameters() if n in reference]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class _BatchLoss:
    """The fine-tuning loss of one batch: KD, plus β × the feature-map term, plus μ × the proximal term."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, policy: CompressionPolicy,
                 teacher_logits: torch.Tensor, labels: torch.Tensor, layers: Sequence[str],
                 taps: tuple[_FeatureTap, _FeatureTap] | None, reference: Mapping[str, torch.Tensor]) -> None:
        self.student, self.teacher, self.policy = student, teacher, policy
        self.teacher_logits, self.labels, self.layers, self.taps, self.reference = (
            teacher_logits, labels, layers, taps, reference)

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        p = self.policy
        loss = kd_loss(self.student(x), self.teacher_logits[idx], self.labels[idx], p.kd_lambda, p.temperature)
        if self.taps is not None:
            with torch.no_grad():
                self.teacher(x)  # fills the teacher's tap
            student_out, teacher_out = self.taps[0].out, self.taps[1].out
            loss = loss + p.feature_beta * sum(
                (feature_map(student_out[n]) - feature_map(teacher_out[n])).pow(2).sum(1).mean() for n in self.layers)
        if self.reference:
            loss = loss + p.prox_mu * _prox(self.student, self.reference)
        return loss


def _finite_mean(losses: list[torch.Tensor], epoch: int) -> float:
    """The epoch's mean loss; raises :class:`NonFiniteLossError` at its first non-finite step."""
    values = torch.stack(losses).double().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):  # the trial fails: nothing after it is kept
        step = int(bad[0])
        raise NonFiniteLossError(epoch, step, float(values[step]))
    return float(values.mean())


def finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    train: Dataset,
    policy: CompressionPolicy,
    *,
    val: Dataset | None = None,
    config: FinetuneConfig | None = None,
    teacher_logits: torch.Tensor | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
    callback: EpochCallback | None = None,
) -> list[dict[str, float]]:
    """Fine-tune ``student`` in place for ``policy.epochs`` epochs with distillation from ``teacher``.

    Args:
        student: The compressed student (from :func:`~metacompress.learners.compress`).
        teacher: The frozen teacher; may be ``None`` when ``teacher_logits`` are given and no feature term is used.
        train: Training data (a ``TensorDataset`` is fastest).
        policy: Supplies λ, T, epochs, learning rate, β and μ.
        val: Validation data for the per-epoch accuracy.
        config: Batch size, device, seed, feature layers.
        teacher_logits: Precomputed teacher logits on ``train`` (same order); computed here when omitted.
        reference: θ* for the proximal term (parameter name -> tensor); with ``policy.prox_mu > 0`` and no
            reference the student's own weights before fine-tuning (L2-SP: stay near the compressed teacher).
        callback: Called as ``callback(epoch, metrics)`` after each epoch; returning ``True`` stops training
            (early stopping, trial pruning).

    Returns:
        One dict per finished epoch: ``epoch``, ``loss`` and, with ``val``, ``val_accuracy``.

    Raises:
        NonFiniteLossError: The loss became NaN or infinite.
    """
    cfg = config or FinetuneConfig()
    x, y = _tensors(train)
    layers: tuple[str, ...] = ()
    if policy.feature_beta > 0:  # the default layers are looked up only when the term is on
        layers = tuple(cfg.feature_layers) or (default_feature_layers(teacher) if teacher is not None else ())
    if teacher_logits is None:
        teacher_logits = predict_logits(teacher, x, device=cfg.device)
    if policy.epochs <= 0:
        return []
    device = torch.device(cfg.device)
    student.to(device).train()
    x, y, t_logits = x.to(device), y.to(device), teacher_logits.to(device)
    if policy.prox_mu > 0 and reference is None:
        reference = {n: p.detach().clone() for n, p in student.named_parameters()}
    ref = {n: r.to(device) for n, r in (reference or {}).items()} if policy.prox_mu > 0 else {}
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=policy.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, policy.epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    with ExitStack() as stack:
        taps = None
        if layers:  # the frozen teacher runs on the device for the feature term, and goes back afterwards
            stack.enter_context(on_device(teacher, device))
            stack.enter_context(in_eval_mode(teacher))  # a teacher handed over in train mode stays unchanged
            taps = (_FeatureTap(student, layers), _FeatureTap(teacher, layers))
            for tap in taps:
                stack.callback(tap.close)
        loss_of = _BatchLoss(student, teacher, policy, t_logits, y, layers, taps, ref)
        done = 0  # optimizer steps so far
        for epoch in range(1, policy.epochs + 1):
            order = torch.randperm(len(x), generator=gen).to(device)
            losses = []  # kept on the device: reading each one back would wait for the GPU at every step
            for step in range(steps_per_epoch):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                loss = loss_of(x[idx], idx)
                losses.append(loss.detach())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                done += 1
                if cfg.on_step is not None:
                    cfg.on_step(done)
                if cfg.stop_after is not None and done >= cfg.stop_after:
                    break  # the record below then covers part of an epoch
            record = {"epoch": epoch, "loss": _finite_mean(losses, epoch)}
            if val is not None and cfg.eval_every_epoch:
                record["val_accuracy"] = accuracy(student, val, device=cfg.device)
            history.append(record)
            if callback is not None and callback(epoch, record):
                break
            if cfg.stop_after is not None and done >= cfg.stop_after:
                break
    student.eval()
    return history
