"""The GPU path: teachers, fine-tuning, trials and a whole search on CUDA (``make test-gpu`` on a GPU machine).

Skipped where CUDA is absent (CI has no GPU); the CPU suite covers the same code on the CPU. What these add is
what only a GPU shows: tensors on two devices at once (a CPU teacher serving a CUDA student), a forked or
spawned worker after CUDA started, and CPU-vs-CUDA agreement of the results.
"""

from __future__ import annotations

import random

import pytest
import torch

from metacompress.learners import (
    FinetuneConfig,
    NonFiniteLossError,
    accuracy,
    compress,
    finetune,
    load_compressed,
    predict_logits,
)
from metacompress.learners.measure import module_device
from metacompress.learners.tasks import load_task
from metacompress.search.config import load_config
from metacompress.search.objective import resolve_device, teacher_metrics
from metacompress.search.runner import prepare, run_search, start_method
from metacompress.spaces import CompressionPolicy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CI has none; `make test-gpu` on a GPU)"),
]

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """digits-cnn with its teacher trained here (on the GPU: the default device when CUDA is present)."""
    return load_task("digits-cnn", cache_dir=tmp_path_factory.mktemp("cache"))


def test_auto_resolves_to_cuda_and_the_teacher_trained_there_comes_back_on_the_cpu(cnn):
    assert resolve_device("auto") == "cuda"
    assert module_device(cnn.teacher) == CPU and not cnn.teacher.training
    assert cnn.info["teacher_accuracy"] > 0.95


def test_logits_on_cuda_match_the_cpu_and_leave_the_model_where_it_was(cnn, monkeypatch):
    x = cnn.val.tensors[0]
    on_cpu = predict_logits(cnn.teacher, x)
    on_gpu = predict_logits(cnn.teacher, x, device="cuda")
    assert on_gpu.device == CPU and module_device(cnn.teacher) == CPU
    # cuDNN convolutions run in TF32 by default (10-bit mantissa): ~1e-3 off, the same predictions
    assert float((on_gpu.argmax(1) == on_cpu.argmax(1)).float().mean()) >= 0.99
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.testing.assert_close(predict_logits(cnn.teacher, x, device="cuda"), on_cpu, rtol=1e-4, atol=1e-4)


def _policy(cnn, **kw) -> CompressionPolicy:
    names = [n for n, m in cnn.teacher.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return CompressionPolicy.uniform(names, **{"prune": 0.6, "bits": 4, "epochs": 2, "lr": 2e-3, **kw})


def test_finetune_on_cuda_keeps_masks_and_agrees_with_the_cpu(cnn):
    policy = _policy(cnn)
    results = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        student = compress(cnn.teacher, policy)
        history = finetune(student, cnn.teacher, cnn.train, policy, val=cnn.val,
                           config=FinetuneConfig(device=device, batch_size=64))
        assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
        assert module_device(student).type == device and module_device(cnn.teacher) == CPU
        masked = [m for m in student.modules() if getattr(m, "weight_mask", None) is not None]
        assert masked and all(  # pruned weights stayed at zero through the updates
            not m.effective_weight()[m.weight_mask == 0].any() for m in masked)
        results[device] = accuracy(student.cpu(), cnn.val)
    assert results["cuda"] > cnn.info["teacher_accuracy"] - 0.1
    assert abs(results["cuda"] - results["cpu"]) < 0.05  # same seed, same data order: the kernels differ only


def test_feature_distillation_on_cuda_runs_the_teacher_there_and_puts_it_back(cnn):
    policy = _policy(cnn, feature_beta=1.0, epochs=1)
    student = compress(cnn.teacher, policy)
    history = finetune(student, cnn.teacher, cnn.train, policy,
                       config=FinetuneConfig(device="cuda", feature_layers=("conv1", "conv2")))
    assert len(history) == 1 and module_device(cnn.teacher) == CPU


def test_a_non_finite_loss_on_cuda_names_its_first_step(cnn):
    policy = _policy(cnn, bits=8, epochs=1)
    student = compress(cnn.teacher, policy)
    head = [m for m in student.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError) as err:
        finetune(student, cnn.teacher, cnn.train, policy, config=FinetuneConfig(device="cuda", max_steps_per_epoch=3))
    assert (err.value.epoch, err.value.step) == (1, 0)


def test_a_trial_on_cuda_returns_a_cpu_student_with_cpu_latency(search_yaml, tmp_path):
    p = prepare(load_config(search_yaml(task="digits-cnn", train={"device": "auto", "latency_repeats": 3})))
    assert p.objective.device == "cuda" and p.objective.teacher_logits.device == CPU
    outcome = p.objective(p.space.sample(random.Random(0)))
    assert module_device(outcome.student) == CPU
    assert 0.0 < outcome.metrics["accuracy"] <= 1.0 and outcome.metrics["latency_ms"] > 0
    p.objective.save(outcome, tmp_path / "student.mcz")
    loaded = load_compressed(tmp_path / "student.mcz", p.task.teacher)
    assert accuracy(loaded, p.task.val) == pytest.approx(outcome.metrics["accuracy"], abs=0.02)
    ref = teacher_metrics(p.task, latency_repeats=2, device="cuda")
    assert ref["accuracy"] == pytest.approx(p.reference["accuracy"], abs=1e-6)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_search_on_cuda_finishes_its_budget(search_yaml, n_jobs):
    cfg = load_config(search_yaml(n_trials=4, tracking_uri="none", parallel={"n_jobs": n_jobs},
                                  train={"device": "cuda", "latency_repeats": 2, "batch_size": 128}))
    summary = run_search(cfg)
    assert summary["n_complete"] == 4 and summary["n_failed"] == 0
    if n_jobs > 1:  # CUDA started in this process: a second worker must be spawned, not forked
        assert start_method(cfg) == "spawn"
