"""SplitRNN: nn.LSTM / nn.GRU / nn.RNN with one Linear per weight matrix, the same function, searched like any layer."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from metacompress.learners import (
    SplitRNN,
    channel_groups,
    compress,
    deployable,
    describe_layers,
    evaluate,
    export_compressed,
    finetune,
    load_compressed,
    load_task,
    predict_logits,
    size_bytes,
    split_recurrent,
)
from metacompress.learners.meta import SizeModel
from metacompress.learners.quant import ActQuant, to_quantized
from metacompress.spaces import CompressionPolicy, LayerPolicy

_CONSTRUCTIONS = [
    (cls, extra, layers, bidirectional, batch_first, bias)
    for cls, extra in ((nn.LSTM, {}), (nn.LSTM, {"proj_size": 3}), (nn.GRU, {}), (nn.RNN, {}),
                       (nn.RNN, {"nonlinearity": "relu"}))
    for layers, bidirectional, batch_first, bias in itertools.product((1, 2), (False, True), (False, True),
                                                                      (True, False))
]


def _flat(result) -> torch.Tensor:
    out, state = result
    out = out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out
    states = state if isinstance(state, tuple) else (state,)
    return torch.cat([t.flatten() for t in (out, *states)])


def _pair(cls, extra, layers, bidirectional, batch_first, bias):
    torch.manual_seed(0)
    ref = cls(5, 6, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias, **extra)
    return ref.eval(), SplitRNN.from_module(ref).eval()


@pytest.mark.parametrize(("cls", "extra", "layers", "bidirectional", "batch_first", "bias"), _CONSTRUCTIONS)
def test_split_rnn_computes_what_the_fused_module_does_on_every_call_form(
        cls, extra, layers, bidirectional, batch_first, bias):
    ref, new = _pair(cls, extra, layers, bidirectional, batch_first, bias)
    x = torch.randn(4, 7, 5)
    seq = x if batch_first else x.transpose(0, 1)
    states = layers * (2 if bidirectional else 1)
    h0 = torch.randn(states, 4, extra.get("proj_size", 6))
    hx = (h0, torch.randn(states, 4, 6)) if cls is nn.LSTM else h0
    lengths = torch.tensor([7, 3, 5, 1])
    calls = [
        (seq,), (seq, hx), (x[0],),  # no state, a given state, one unbatched sequence
        (pack_padded_sequence(seq, lengths, batch_first=batch_first, enforce_sorted=False),),
        (pack_padded_sequence(seq, lengths, batch_first=batch_first, enforce_sorted=False), hx),  # caller's order
        (pack_padded_sequence(seq, lengths.sort(descending=True).values, batch_first=batch_first), hx),
    ]
    with torch.no_grad():
        for args, path in itertools.product(calls, (new, new._stepwise)):  # the fused kernel, step by step
            expected, got = ref(*args), path(*args)
            assert type(got[1]) is type(expected[1])
            assert torch.allclose(_flat(got), _flat(expected), atol=1e-5), args[0].__class__.__name__
            if isinstance(expected[0], nn.utils.rnn.PackedSequence):
                assert torch.equal(got[0].batch_sizes, expected[0].batch_sizes)


@pytest.mark.parametrize(("cls", "stepwise"), itertools.product([nn.LSTM, nn.GRU, nn.RNN], [False, True]))
def test_split_rnn_trains_like_the_fused_module_with_the_same_dropout_draws(cls, stepwise):
    torch.manual_seed(0)
    ref = cls(5, 6, num_layers=3, dropout=0.5, batch_first=True, bidirectional=True).train()
    new = SplitRNN.from_module(ref).train()
    x = torch.randn(4, 7, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.manual_seed(1)
    a = ref(x)[0]
    torch.manual_seed(1)
    b = (new._stepwise if stepwise else new)(x2)[0]
    assert torch.allclose(a, b, atol=1e-5)  # dropout between layers drops the same units
    a.square().sum().backward()
    b.square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(ref.weight_hh_l1_reverse.grad, new.l1_reverse.hh.weight.grad, atol=1e-5)


@pytest.mark.parametrize(("cls", "extra"), [(nn.LSTM, {}), (nn.LSTM, {"proj_size": 3}), (nn.GRU, {}), (nn.RNN, {})])
def test_compressed_weights_run_the_fused_kernel_differentiably_and_step_by_step_where_it_cannot_serve(cls, extra):
    """Masked, fake-quantized weights go through the fused kernel with the gradients of the step-by-step recurrence;
    activation fake-quant (the hidden state quantized at every step) and forward hooks (feature distillation, MAC
    counts: the layer must run) take the step-by-step path."""
    torch.manual_seed(0)
    new = SplitRNN.from_module(cls(5, 6, num_layers=2, bidirectional=True, batch_first=True, **extra)).train()
    layers = [m for m in new.modules() if isinstance(m, nn.Linear)]
    for bits, m in zip(itertools.cycle((2, 4, 8)), layers):
        to_quantized(m, bits).set_mask((torch.rand_like(m.weight) > 0.4).float())
    x = torch.randn(3, 7, 5)
    assert new._fusable()
    fused, stepwise = _flat(new(x)), _flat(new._stepwise(x))
    assert torch.allclose(fused, stepwise, atol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), [m.weight for m in layers]) for out in (fused, stepwise)]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*grads))
    assert all(float(g[m.weight_mask == 0].abs().max()) == 0 for g, m in zip(grads[0], layers))  # pruned stay 0
    assert not {k for k in new.state_dict() if "kernel" in k} and len(list(new.parameters())) == len(layers) * 2 - (
        4 if extra else 0)  # the kernel is no part of the module
    calls = []
    handle = new.l0.hh.register_forward_hook(lambda *_: calls.append(1))
    assert not new._fusable()
    new(x)
    assert len(calls) == 7  # once per step
    handle.remove()
    new.l1.hh.act_quant = ActQuant(8)  # as to_quantized(..., act_bits=8) gives
    assert not new._fusable()
    with torch.no_grad():
        assert torch.equal(_flat(new.eval()(x)), _flat(new._stepwise(x)))


def test_split_recurrent_keeps_shared_modules_shared_and_leaves_other_models_alone():
    lstm = nn.LSTM(4, 4)
    model = nn.ModuleDict({"a": lstm, "b": lstm, "c": nn.Linear(4, 4)})
    out, split = split_recurrent(model)
    assert split == 1 and out["a"] is out["b"] and isinstance(out["a"], SplitRNN)
    assert type(model["a"]) is nn.LSTM  # the original is untouched
    assert out["a"].flatten_parameters() is None  # forwards that call it keep working
    plain = nn.Sequential(nn.Linear(4, 4))
    assert split_recurrent(plain) == (plain, 0)

    class MyLSTM(nn.LSTM):  # a subclass may change the forward: left as it is
        pass

    assert split_recurrent(nn.Sequential(MyLSTM(4, 4)))[1] == 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_factory_teacher_gets_searchable_recurrent_layers_compressed_measured_and_exported(kind, tmp_path):
    task = load_task({"factory": "plugin_task:recurrent_task", "kwargs": {"kind": kind}})
    assert isinstance(task.teacher.rnn, SplitRNN)
    example = task.example_input(2)
    layers = describe_layers(task.teacher, example)
    names = [f"rnn.l{k}{d}.{w}" for k in (0, 1) for d in ("", "_reverse") for w in ("ih", "hh")]
    assert [i.name for i in layers] == [*names, "head"]
    groups = channel_groups(task.teacher, example)  # traced (not refused), the recurrent module kept whole
    assert [(g.producers, g.prunable) for g in groups] == [(["head"], False), (names, True)]  # hidden units
    policy = CompressionPolicy.uniform([i.name for i in layers], 0.5, 4, epochs=1, act_bits=8, feature_beta=0.5)
    student = compress(task.teacher, policy, example)
    assert size_bytes(student) == SizeModel(task.teacher, example).policy_bytes(policy) < size_bytes(task.teacher) / 2
    history = finetune(student, task.teacher, task.train, policy, val=task.val)
    assert len(history) == 1
    assert float((student.rnn.l1.hh.effective_weight() == 0).float().mean()) >= 0.5  # still pruned
    metrics = evaluate(student, task.val, task.example_input(1), latency_repeats=2)
    gates = 4 if kind == "lstm" else 3  # MACs per sample: every step of the recurrence counts
    macs = 2 * 4 * gates * 6 * (4 + 6) + 2 * 4 * gates * 6 * (12 + 6) + 12 * 3
    assert metrics["bitops"] == macs * 4 * 8 and metrics["latency_ms"] > 0
    x = task.val.tensors[0]
    export_compressed(student, tmp_path / "r.mcz", task.input_shape)
    back = load_compressed(tmp_path / "r.mcz", task.teacher)
    assert torch.allclose(predict_logits(back, x), predict_logits(student, x), atol=1e-5)
    fused = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
    float_acts = compress(task.teacher, CompressionPolicy.uniform([i.name for i in layers], 0.5, 4), example)
    plain = deployable(float_acts, int8=False)  # inference runs the fused kernel on the compressed weights
    assert type(plain.rnn) is fused and type(deployable(task.teacher, int8=False).rnn) is fused
    assert torch.allclose(predict_logits(plain, x), predict_logits(float_acts, x), atol=1e-5)
    int8 = deployable(student, int8=True)
    assert type(int8.rnn).__name__ == fused.__name__ and "quantized.dynamic" in type(int8.rnn).__module__
    wide = [i.name for i in layers if i.name.startswith("rnn.")][0]  # one of its matrices at 16 bits: float kernel
    mixed = compress(task.teacher, CompressionPolicy(layers={i.name: LayerPolicy(0.0, 16 if i.name == wide else 8)
                                                             for i in layers}), example)
    assert type(deployable(mixed, int8=True).rnn) is fused
    agree = (predict_logits(int8, x).argmax(1) == predict_logits(student, x).argmax(1)).float().mean()
    assert agree >= 0.9


def test_a_packed_sequence_model_is_rewritten_too_and_a_forward_reading_raw_weights_keeps_the_original(caplog):
    packed = load_task({"factory": "plugin_task:recurrent_task", "kwargs": {"kind": "gru", "packed": True}})
    assert isinstance(packed.teacher.rnn, SplitRNN)
    with caplog.at_level(logging.WARNING, logger="metacompress.learners.plugins"):
        raw = load_task({"factory": "plugin_task:recurrent_task", "kwargs": {"kind": "rnn", "raw": True}})
    assert type(raw.teacher.rnn) is nn.RNN
    assert "LSTM/GRU/RNN layers rewritten" in caplog.text and "not searched" in caplog.text
    assert [i.name for i in describe_layers(raw.teacher, raw.example_input(2))] == ["head"]


def test_an_lstm_with_a_projection_keeps_float_kernels_in_an_int8_deployment():
    """torch.ao has no dynamic int8 LSTM with proj_size (it fails at its first call): that LSTM keeps the fused float
    kernel on its compressed weights instead of failing the deployment."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(4, 8, proj_size=3, batch_first=True))
    split, _ = split_recurrent(model)
    x = torch.randn(2, 5, 4)
    names = [i.name for i in describe_layers(split, x)]
    assert names == ["0.l0.ih", "0.l0.hh", "0.l0.hr"]
    student = compress(split, CompressionPolicy.uniform(names, 0.5, 4)).eval()
    int8 = deployable(student, int8=True)
    assert type(int8.get_submodule("0")) is nn.LSTM
    with torch.no_grad():
        assert torch.allclose(int8(x)[0], student(x)[0], atol=1e-5)
