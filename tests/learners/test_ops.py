"""Compression ops on real modules and real data (scikit-learn digits)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from metacompress.learners import (
    FinetuneConfig,
    NonFiniteLossError,
    accuracy,
    bitops,
    channel_groups,
    compress,
    deployable,
    describe_layers,
    evaluate,
    export_compressed,
    finetune,
    kd_loss,
    load_compressed,
    magnitude_mask,
    predict_logits,
    size_bytes,
)
from metacompress.learners.quant import fake_quant_weight
from metacompress.spaces import CompressionPolicy, ConfigError, LayerPolicy


class ResNetLike(nn.Module):
    """A conv net with a residual block, a flatten into a linear head: every coupling case at once."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 16, 64)
        self.fc2 = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(x + self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    tr, va = perm[:1400], perm[1400:]
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va])


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    model = ResNetLike()
    train, _ = digits
    x, y = train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for i in range(0, len(x), 64):
            loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")


def test_magnitude_mask_keeps_exactly_the_largest():
    w = torch.randn(50, 40)
    mask = magnitude_mask(w, 0.8)
    assert int(mask.sum()) == 400
    assert w[mask.bool()].abs().min() >= w[~mask.bool()].abs().max()
    assert magnitude_mask(w, 0.0) is None


def test_channel_groups_couple_the_residual_and_flatten(teacher):
    groups = {tuple(g.producers): g for g in channel_groups(teacher, torch.zeros(2, 1, 8, 8))}
    residual = groups[("conv1", "conv2")]
    assert residual.prunable and set(residual.norms) == {"bn1", "bn2"}
    assert ("fc1", 16) in groups[("conv3",)].consumers  # 32 channels x 4x4 positions
    assert not groups[("fc2",)].prunable  # the logits are the model's output
    assert {i.name: i.structured for i in describe_layers(teacher, torch.zeros(2, 1, 8, 8))}["fc2"] is False


def test_structured_compress_physically_shrinks_and_keeps_the_teacher(teacher, digits):
    before = [p.clone() for p in teacher.parameters()]
    policy = CompressionPolicy.uniform(LAYERS, prune=0.5, bits=32, prune_method="structured")
    student = compress(teacher, policy, torch.zeros(2, 1, 8, 8))
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    assert n_student < 0.4 * n_teacher
    assert student.conv1.out_channels == 8 and student.conv2.in_channels == 8 and student.bn2.num_features == 8
    assert student.fc1.in_features == 16 * 16 and student.fc2.out_features == 10
    assert student(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_unstructured_compress_reaches_the_requested_sparsity(teacher):
    policy = CompressionPolicy(layers={"fc1": LayerPolicy(prune=0.9, bits=4)})
    student = compress(teacher, policy)
    w = student.fc1.effective_weight()
    assert abs(float((w == 0).float().mean()) - 0.9) < 0.01
    assert torch.equal(student.conv1.weight, teacher.conv1.weight)  # layers not named are left alone


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fake_quant_uses_at_most_2_pow_bits_levels_and_passes_gradients(bits):
    w = torch.randn(6, 30, requires_grad=True)
    q = fake_quant_weight(w, bits)
    for row in q.detach():
        assert len(row.unique()) <= 2**bits - 1
    q.sum().backward()
    assert torch.allclose(w.grad, torch.ones_like(w))  # straight-through, nothing clipped


def test_bad_policy_names_the_field(teacher):
    with pytest.raises(ConfigError, match="layers"):
        compress(teacher, CompressionPolicy(layers={"fc9": LayerPolicy(0.5, 4)}))
    with pytest.raises(ConfigError, match=r"layers\.fc1\.bits"):
        compress(teacher, CompressionPolicy(layers={"fc1": LayerPolicy(0.5, 9)}))


def test_kd_loss_matches_its_formula():
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    lam, temp = 0.3, 4.0
    p_t = F.softmax(t / temp, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / temp, 1))).sum(1).mean()
    expected = lam * F.cross_entropy(s, y) + (1 - lam) * temp**2 * kl
    assert torch.allclose(kd_loss(s, t, y, lam, temp), expected, atol=1e-5)


def test_finetune_recovers_accuracy_and_keeps_masks(teacher, digits):
    train, val = digits
    # lr 5e-3: at 2e-3 three epochs end 1-5 pp short of the teacher, by CPU (kernels differ in rounding)
    policy = CompressionPolicy.uniform(LAYERS, prune=0.8, bits=4, kd_lambda=0.3, temperature=4.0, epochs=3,
                                       lr=5e-3)
    student = compress(teacher, policy)
    before = accuracy(student, val)
    seen = []
    history = finetune(student, teacher, train, policy, val=val, callback=lambda e, r: seen.append(e) and False)
    assert seen == [1, 2, 3] and len(history) == 3
    assert history[-1]["val_accuracy"] > before
    assert history[-1]["val_accuracy"] > accuracy(teacher, val) - 0.05
    assert float((student.fc1.effective_weight() == 0).float().mean()) >= 0.79


def test_callback_can_stop_training_early(teacher, digits):
    train, val = digits
    policy = CompressionPolicy.uniform(LAYERS, bits=8, epochs=5)
    history = finetune(compress(teacher, policy), teacher, train, policy, val=val, callback=lambda e, r: e >= 2)
    assert len(history) == 2


def test_non_finite_loss_raises_a_catchable_error(teacher, digits):
    train, _ = digits
    policy = CompressionPolicy.uniform(LAYERS, bits=8, epochs=1)
    student = compress(teacher, policy)
    with torch.no_grad():
        student.fc2.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError):
        finetune(student, teacher, train, policy, config=FinetuneConfig(max_steps_per_epoch=2))


def test_size_bytes_counts_bits_bitmaps_scales_and_float_params():
    model = nn.Sequential(nn.Linear(100, 10))
    assert size_bytes(model) == 4 * (1000 + 10)
    student = compress(model, CompressionPolicy(layers={"0": LayerPolicy(prune=0.5, bits=4)}))
    # 500 kept weights x 4 bits + 1000-bit bitmap + 10 fp32 scales + 10 fp32 biases
    assert size_bytes(student) == 250 + 125 + 40 + 40


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.97, 0.999])
def test_sparse_index_round_trips_and_is_never_bigger_than_the_bitmap(sparsity):
    from metacompress.learners.export import _decode_index, _encode_index
    from metacompress.learners.measure import sparse_index

    g = torch.Generator().manual_seed(1)
    mask = magnitude_mask(torch.randn(300, 70, generator=g), sparsity)
    mask = torch.ones(300, 70) if mask is None else mask
    width, bits = sparse_index(mask)
    assert bits <= mask.numel()
    if width:
        buf, count = _encode_index(mask, width)
        assert len(buf) == (bits + 7) // 8 and count * width == bits
        assert (torch.from_numpy(_decode_index(buf, mask.numel(), width, count)).view_as(mask) == mask.bool()).all()
    if sparsity >= 0.9:  # the gap code pays off at high sparsity
        assert width > 0 and bits < 0.6 * mask.numel()
    if sparsity <= 0.5:
        assert width == 0


def test_sparse_layers_are_smaller_with_the_gap_index():
    model = nn.Sequential(nn.Linear(1000, 10))
    student = compress(model, CompressionPolicy(layers={"0": LayerPolicy(prune=0.9, bits=4)}))
    # 1000 kept weights x 4 bits + a gap index well under the 10000-bit bitmap + 10 scales + 10 biases
    assert 500 + 40 + 40 < size_bytes(student) < 500 + 1250 * 0.6 + 40 + 40


def test_bitops_are_macs_times_weight_and_activation_bits():
    model = nn.Sequential(nn.Linear(10, 5))
    assert bitops(model, torch.zeros(1, 10)) == 50 * 32 * 32
    student = compress(model, CompressionPolicy(layers={"0": LayerPolicy(bits=4)}, act_bits=8))
    assert bitops(student, torch.zeros(1, 10)) == 50 * 4 * 8


@pytest.mark.parametrize(
    "policy",
    [
        CompressionPolicy.uniform(LAYERS, prune=0.7, bits=3),
        CompressionPolicy.uniform(LAYERS, prune=0.5, bits=4, prune_method="structured", act_bits=8),
        CompressionPolicy.uniform(LAYERS, prune=0.0, bits=16),
        CompressionPolicy(layers={"fc1": LayerPolicy(0.9, 2), "conv2": LayerPolicy(0.0, 8)}),
        CompressionPolicy.uniform(LAYERS, prune=0.95, bits=3),
        CompressionPolicy.uniform(LAYERS, prune=0.9, bits=16),
    ],
    ids=["unstructured-3b", "structured-4b-act8", "fp16", "mixed", "gap-index-3b", "gap-index-fp16"],
)
def test_export_is_as_small_as_computed_and_loads_back_exactly(teacher, digits, tmp_path, policy):
    _, val = digits
    student = compress(teacher, policy, torch.zeros(2, 1, 8, 8)).eval()
    if policy.act_bits:  # give the activation quantizers a range, as fine-tuning would
        student.train()
        student(val.tensors[0][:64])
        student.eval()
    path = tmp_path / "student.mcz"
    written = export_compressed(student, path, (1, 8, 8))
    computed = size_bytes(student)
    assert written >= computed and (written - computed) / computed < 0.10
    loaded = load_compressed(path, teacher)
    x = val.tensors[0]
    assert torch.allclose(loaded(x), student(x), atol=1e-4)
    assert accuracy(loaded, val) == accuracy(student, val)


def test_tiny_students_export_within_10_percent_and_old_files_still_load(teacher, digits, tmp_path):
    from metacompress.learners.export import _write_v1

    _, val = digits
    x = val.tensors[0]
    policy = CompressionPolicy.uniform(LAYERS, prune=0.9, bits=2, prune_method="structured")
    student = compress(teacher, policy, torch.zeros(2, 1, 8, 8)).eval()
    computed = size_bytes(student)
    assert computed < 2000  # a student of a few hundred bytes: the header must stay small
    written = export_compressed(student, tmp_path / "tiny.mcz", (1, 8, 8))
    assert 0 <= written - computed <= 64 and (written - computed) / computed < 0.10
    assert torch.allclose(load_compressed(tmp_path / "tiny.mcz", teacher)(x), student(x), atol=1e-4)
    sparse = compress(teacher, CompressionPolicy.uniform(LAYERS, prune=0.9, bits=3)).eval()
    _write_v1(sparse, tmp_path / "v1.mcz", (1, 8, 8))
    assert torch.allclose(load_compressed(tmp_path / "v1.mcz", teacher)(x), sparse(x), atol=1e-4)


def test_deployable_int8_model_keeps_accuracy(teacher, digits):
    _, val = digits
    student = compress(teacher, CompressionPolicy.uniform(LAYERS, bits=8))
    fast = deployable(student, int8=True)
    assert not any(hasattr(m, "w_bits") for m in fast.modules())
    assert abs(accuracy(fast, val) - accuracy(student, val)) <= 0.01


def test_an_int8_deployment_quantizes_only_the_layers_the_policy_keeps_at_8_bits_or_fewer(teacher, digits):
    """fc1 kept at 16 bits stays a float layer with its own weights; fc2 at 8 bits runs the int8 kernel."""
    _, val = digits
    policy = CompressionPolicy(layers={name: LayerPolicy(0.0, 8 if name == "fc2" else 16) for name in LAYERS})
    student = compress(teacher, policy).eval()
    int8 = deployable(student, int8=True)
    assert type(int8.fc1) is nn.Linear and "quantized.dynamic" in type(int8.fc2).__module__
    assert torch.equal(int8.fc1.weight, deployable(student, int8=False).fc1.weight)
    assert abs(accuracy(int8, val) - accuracy(student, val)) <= 0.01


def test_deployable_can_be_frozen_for_any_batch_size(teacher, digits):
    _, val = digits
    x = val.tensors[0]
    student = compress(teacher, CompressionPolicy.uniform(LAYERS, prune=0.5, bits=4, prune_method="structured"),
                       torch.zeros(2, 1, 8, 8)).eval()
    eager = deployable(student, int8=True)
    frozen = deployable(student, int8=True, example_input=x[:4])
    assert isinstance(frozen.graph, torch.jit.ScriptModule)
    for batch in (1, 7, len(x)):
        assert torch.allclose(frozen(x[:batch]), eager(x[:batch]), atol=1e-5)
    assert accuracy(frozen, val) == accuracy(eager, val)


def test_evaluate_reports_every_metric(teacher, digits):
    _, val = digits
    ref = evaluate(teacher, val, torch.zeros(2, 1, 8, 8), latency_repeats=3, batch_sizes=(1, 32))
    student = compress(teacher, CompressionPolicy.uniform(LAYERS, prune=0.5, bits=4))
    m = evaluate(student, val, torch.zeros(2, 1, 8, 8), reference=ref, latency_repeats=3, batch_sizes=(1, 32))
    assert {"accuracy", "size_bytes", "bitops", "latency_ms", "latency_ms_b32", "compression_ratio"} <= set(m)
    assert m["compression_ratio"] > 5 and math.isfinite(m["latency_ms"]) and m["latency_ms"] > 0


def test_evaluate_with_the_teachers_inference_form_times_both_in_rounds(teacher, digits, monkeypatch):
    """With a baseline, each latency is the reference's at that batch size over the speedup measured in rounds
    with the baseline at that batch size; nothing extra is left behind."""
    from metacompress.learners import measure

    _, val = digits
    ref = evaluate(teacher, val, torch.zeros(2, 1, 8, 8), latency_repeats=3, batch_sizes=(1, 32))
    student = compress(teacher, CompressionPolicy.uniform(LAYERS, prune=0.5, bits=4))
    baseline = deployable(teacher, int8=False)
    rounds = []
    timer = measure.time_blocks
    monkeypatch.setattr(measure, "time_blocks", lambda models, x, *a: rounds.append((models, len(x))) or timer(
        models, x, *a))
    m = evaluate(student, val, torch.zeros(2, 1, 8, 8), reference=ref, latency_repeats=3, batch_sizes=(1, 32),
                 baseline=baseline)
    assert set(m) == {"accuracy", "size_bytes", "bitops", "latency_ms", "latency_ms_b32", "int8_runtime",
                      "compression_ratio", "speedup"}
    assert m["latency_ms"] == pytest.approx(ref["latency_ms"] / m["speedup"]) and m["speedup"] > 0
    assert [n for _, n in rounds] == [1, 32] and all(models[-1] is baseline for models, _ in rounds)
    monkeypatch.setattr(measure, "_paired_ratio", lambda slow, fast: 2.0)  # "twice as fast as the teacher"
    m = evaluate(student, val, torch.zeros(2, 1, 8, 8), reference=ref, latency_repeats=3, batch_sizes=(1, 32),
                 baseline=baseline)
    assert m["latency_ms"] == ref["latency_ms"] / 2 and m["latency_ms_b32"] == ref["latency_ms_b32"] / 2
    without = evaluate(student, val, torch.zeros(2, 1, 8, 8), reference={"size_bytes": ref["size_bytes"]},
                       latency_repeats=3, batch_sizes=(1, 32), baseline=baseline)  # no teacher latency: own medians
    assert {"latency_ms", "latency_ms_b32"} <= set(without) and "speedup" not in without


class _Busy(nn.Module):
    """Spins ``ms`` per call, five times as long once the shared call count passes ``clock['slow_after']``: load
    that arrives while a search runs (a trial training on the next core)."""

    def __init__(self, ms: float, clock: dict[str, float]) -> None:
        super().__init__()
        self.ms, self.clock = ms, clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        self.clock["calls"] += 1
        end = time.perf_counter() + self.ms / 1e3 * (5 if self.clock["calls"] > self.clock["slow_after"] else 1)
        while time.perf_counter() < end:
            pass
        return x


def test_models_timed_in_rounds_keep_their_ratio_when_the_load_changes_and_apart_they_do_not():
    from metacompress.learners.measure import _paired_ratio, measure_latency, time_blocks

    clock = {"calls": 0, "slow_after": 30}  # about halfway through the 20 rounds below (68 calls)
    slow, fast = _Busy(0.2, clock), _Busy(0.1, clock)
    x = torch.zeros(1, 1)
    assert 1.8 <= _paired_ratio(*time_blocks([slow, fast], x, repeats=20)) <= 2.2
    assert clock["calls"] > clock["slow_after"] + 20  # the load came, and the rounds went on under it
    clock.update(calls=0, slow_after=10**9)
    alone = measure_latency(slow, x, (1,))["latency_ms"]
    clock["slow_after"] = 0  # the load arrives between the two measurements
    assert alone / measure_latency(fast, x, (1,))["latency_ms"] < 0.5  # 2x faster, timed apart: "2.5x slower"


def test_activation_quantizer_tracks_an_ema_of_the_range_in_training_and_freezes_it_in_eval():
    from metacompress.learners.quant import ActQuant

    aq = ActQuant(8, momentum=0.25).train()
    aq(torch.tensor([[-2.0, 1.0]]))
    assert float(aq.amax) == 2.0  # the first batch sets the range
    aq(torch.tensor([[6.0, 0.0]]))
    assert float(aq.amax) == pytest.approx(2.0 + 0.25 * (6.0 - 2.0))
    aq.eval()
    out = aq(torch.tensor([[100.0, 0.01]]))
    assert float(aq.amax) == pytest.approx(3.0)  # frozen
    assert float(out[0, 0]) == pytest.approx(3.0, rel=1e-6)  # clipped to the range
    assert abs(float(out[0, 1]) - 0.01) <= 3.0 / 127 / 2 + 1e-7  # rounded to the 8-bit grid


def test_feature_maps_do_not_depend_on_the_layer_width():
    from metacompress.learners import feature_map

    conv, narrow = torch.randn(6, 16, 4, 4), torch.randn(6, 8, 4, 4)
    assert feature_map(conv).shape == feature_map(narrow).shape == (6, 16)  # attention: spatial positions
    dense, pruned = torch.randn(6, 64), torch.randn(6, 40)
    assert feature_map(dense).shape == feature_map(pruned).shape == (6, 6)  # similarity: the batch's Gram rows
    torch.testing.assert_close(feature_map(dense).norm(dim=1), torch.ones(6))
    torch.testing.assert_close(feature_map(2.0 * dense), feature_map(dense))  # the scale of a layer is not matched


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_feature_distillation_matches_every_hidden_layer_by_default(teacher, digits, method):
    """With feature_beta > 0 and no layers named, the term covers every compressible layer but the head, also when
    structured pruning made the student's layers narrower than the teacher's; the hooks are gone afterwards."""
    from metacompress.learners.distill import default_feature_layers

    assert default_feature_layers(teacher) == ("conv1", "conv2", "conv3", "fc1")
    train, val = digits
    example = torch.zeros(2, 1, 8, 8)
    losses = {}
    for beta in (0.0, 5.0):
        policy = CompressionPolicy.uniform(LAYERS, prune=0.5, bits=8, prune_method=method, epochs=1, lr=2e-3,
                                           feature_beta=beta)
        torch.manual_seed(0)
        student = compress(teacher, policy, example)
        if method == "structured":
            assert student.fc1.weight.shape[0] < teacher.fc1.weight.shape[0]  # narrower: the Gram map copes
        history = finetune(student, teacher, train, policy, val=val, config=FinetuneConfig(max_steps_per_epoch=5))
        losses[beta] = history[0]["loss"]
        hooks = [m._forward_hooks for m in (*student.modules(), *teacher.modules())]
        assert not any(hooks)
    assert math.isfinite(losses[5.0]) and losses[5.0] > losses[0.0]  # the feature term is in the loss


def test_the_feature_term_runs_a_teacher_given_in_train_mode_in_eval_mode_and_leaves_it_as_it_was(teacher, digits):
    """BatchNorm's running statistics are the teacher's; a feature pass in train mode would overwrite them."""
    import copy

    train, _ = digits
    policy = CompressionPolicy.uniform(LAYERS, prune=0.5, bits=8, epochs=1, feature_beta=1.0)
    student = compress(teacher, policy, torch.zeros(2, 1, 8, 8))
    given = copy.deepcopy(teacher).train()
    given.fc1.eval()  # a mixed mode comes back as it was, module by module
    stats = given.bn1.running_mean.clone()
    finetune(student, given, train, policy, config=FinetuneConfig(max_steps_per_epoch=3))
    assert torch.equal(given.bn1.running_mean, stats)
    assert given.training and given.bn1.training and not given.fc1.training


def test_the_proximal_term_defaults_to_the_students_starting_weights(teacher, digits):
    """prox_mu > 0 without a reference keeps the student near where fine-tuning started (L2-SP)."""
    train, _ = digits

    def moved(mu: float) -> float:
        policy = CompressionPolicy.uniform(LAYERS, bits=8, epochs=2, lr=1e-2, prox_mu=mu)
        torch.manual_seed(0)
        student = compress(teacher, policy)
        start = {n: p.detach().clone() for n, p in student.named_parameters()}
        finetune(student, teacher, train, policy, config=FinetuneConfig(max_steps_per_epoch=10))
        return float(sum((p.detach() - start[n]).pow(2).sum() for n, p in student.named_parameters()))

    assert moved(10.0) < 0.5 * moved(0.0)


def test_a_transformer_on_token_ids_compresses_its_attention_distills_measures_and_exports(tmp_path):
    """Integer inputs stay integers everywhere (example input, probes, export); the token embedding is compressed
    like a layer; the factory's attention is rewritten with one Linear per projection, so the search compresses
    attention like any layer, and int8 kernels run on all of them."""
    from metacompress.learners import load_task
    from metacompress.learners.meta import layer_sensitivity

    task = load_task({"factory": "plugin_task:make_token_task"})
    example = task.example_input(2)
    assert example.dtype == torch.int64
    layers = describe_layers(task.teacher, example)
    attention = [f"encoder.self_attn.{p}_proj" for p in ("q", "k", "v", "out")]
    assert [i.name for i in layers] == ["embed", *attention, "encoder.linear1", "encoder.linear2", "head"]
    assert layers[0].kind == "embedding" and not layers[0].structured
    assert set(layer_sensitivity(task, layers)) == {i.name for i in layers}  # probes run on token ids
    policy = CompressionPolicy.uniform([i.name for i in layers], 0.5, 4, epochs=1, feature_beta=0.5, prox_mu=0.01)
    student = compress(task.teacher, policy, example)
    ff_only = compress(task.teacher, CompressionPolicy.uniform([i.name for i in layers[5:]], 0.5, 4), example)
    saved = size_bytes(ff_only) - size_bytes(student)  # the fp32 attention (4 × 32 × 32) and embedding (50 × 32)
    assert 0.75 * (4 * 32 + 50) * 32 * 4 < saved < (4 * 32 + 50) * 32 * 4  # at 4 bits, half of them pruned
    history = finetune(student, task.teacher, task.train, policy, val=task.val)
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    metrics = evaluate(student, task.val, task.example_input(1), latency_repeats=2)
    assert metrics["latency_ms"] > 0
    tokens = task.val.tensors[0]
    scored = predict_logits(student, tokens)
    assert torch.allclose(scored, predict_logits(deployable(student, int8=False), tokens), atol=1e-5)
    int8 = deployable(student, int8=True)
    assert sum(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in int8.modules()) == 7
    assert torch.isfinite(predict_logits(int8, tokens)).all()
    export_compressed(student, tmp_path / "s.mcz", task.input_shape)
    back = load_compressed(tmp_path / "s.mcz", task.teacher)
    assert torch.allclose(predict_logits(back, tokens), scored, atol=1e-5)


def test_an_unsplit_transformer_layer_is_scored_through_its_layers_and_int8_falls_back():
    """A model compressed as given (the Python API, no factory rewrite) keeps nn.TransformerEncoderLayer's fused
    fast path, which reads the Linear weights directly: scoring runs each layer's own forward, and int8 kernels
    that cannot run there (the path reads Linear.weight, a method on a dynamic int8 Linear) fall back to float
    timing instead of failing the trial."""
    from plugin_task import make_token_task

    task = make_token_task()
    example = task.example_input(2)
    layers = describe_layers(task.teacher, example)
    assert [i.name for i in layers] == ["embed", "encoder.linear1", "encoder.linear2", "head"]
    student = compress(task.teacher, CompressionPolicy.uniform([i.name for i in layers], 0.5, 4), example)
    tokens = task.val.tensors[0]
    scored = predict_logits(student, tokens)
    assert torch.allclose(scored, predict_logits(deployable(student, int8=False), tokens), atol=1e-5)
    assert torch.backends.mha.get_fastpath_enabled()  # switched back on after scoring
    with torch.no_grad():
        assert not torch.allclose(student.eval()(tokens), scored, atol=1e-4)  # the fast path would differ
    metrics = evaluate(student, task.val, task.example_input(1), latency_repeats=2)
    assert metrics["int8_runtime"] == 0.0 and metrics["latency_ms"] > 0


def test_an_embedding_is_compressed_per_row_and_its_index_inputs_are_never_fake_quantized(tmp_path):
    """A token embedding is a layer like any other (mask, per-row scales, packed export), except that its inputs
    are indices: a policy's act_bits leaves them alone, and a lookup counts no MACs."""
    from plugin_task import make_token_task

    task = make_token_task()
    tokens, example = task.val.tensors[0], task.example_input(2)
    policy = CompressionPolicy.uniform(["embed", "head"], 0.5, 3, act_bits=8)
    student = compress(task.teacher, policy, example)
    embed = student.embed
    assert embed.act_quant is None and student.head.act_quant is not None
    w = embed.effective_weight()
    assert float((w == 0).float().mean()) >= 0.5 and len(torch.unique(w[3])) <= 2 ** 3  # pruned, 3-bit rows
    student.train()
    logits = student(tokens)  # token ids straight into the lookup
    logits.sum().backward()
    assert embed.weight.grad is not None and embed.weight.grad.abs().sum() > 0  # straight-through gradients
    student.eval()
    from metacompress.learners.measure import _macs

    assert "embed" not in _macs(student, example) and "head" in _macs(student, example)
    written = export_compressed(student, tmp_path / "e.mcz", task.input_shape)
    assert 0 <= written - size_bytes(student) <= 64
    back = load_compressed(tmp_path / "e.mcz", task.teacher)
    assert torch.allclose(predict_logits(back, tokens), predict_logits(student, tokens), atol=1e-5)
    renormed = nn.Sequential(nn.Embedding(10, 4, max_norm=1.0), nn.Flatten(), nn.Linear(8, 2))
    assert [i.name for i in describe_layers(renormed, torch.zeros(2, 2, dtype=torch.int64))] == ["2"]


def test_loading_an_export_onto_something_that_is_not_a_model_names_the_skeleton(tmp_path):
    with pytest.raises(ConfigError, match="'skeleton'") as info:
        load_compressed(tmp_path / "any.mcz", "digits_net.pt")  # the weights' path instead of the model
    assert info.value.field == "skeleton"
