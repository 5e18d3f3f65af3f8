"""Attention rewritten with one Linear per projection computes what nn.MultiheadAttention does."""

from __future__ import annotations

import copy
import itertools
import logging

import pytest
import torch
from torch import nn

from metacompress.learners import SplitAttention, compress, deployable, describe_layers, predict_logits, \
    split_attention
from metacompress.learners.tasks import load_task
from metacompress.spaces import CompressionPolicy

B, L, S, E, H = 3, 5, 7, 16, 4


def _inputs(batch_first: bool, kdim: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(B, L, E, generator=gen), torch.randn(B, S, kdim, generator=gen), \
        torch.randn(B, S, kdim, generator=gen)
    return (q, k, v) if batch_first else (q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))


def _masks() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    padding = torch.zeros(B, S, dtype=torch.bool)
    padding[0, -2:] = True
    return [
        {},
        {"key_padding_mask": padding},
        {"key_padding_mask": padding.float() * -1e4},
        {"attn_mask": torch.randn(L, S, generator=gen)},
        {"attn_mask": torch.rand(L, S, generator=gen) > 0.7},
        {"attn_mask": torch.rand(B * H, L, S, generator=gen) > 0.8, "key_padding_mask": padding},
    ]


@pytest.mark.parametrize("batch_first,bias,kdim", list(itertools.product([True, False], [True, False], [E, 12])))
def test_split_attention_matches_multihead_attention_on_every_call_form(batch_first, bias, kdim):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=kdim, batch_first=batch_first).eval()
    split = SplitAttention.from_mha(mha).eval()
    q, k, v = _inputs(batch_first, kdim)
    for masks, need, average in itertools.product(_masks(), [True, False], [True, False]):
        with torch.no_grad():
            want = mha(q, k, v, need_weights=need, average_attn_weights=average, **masks)
            got = split(q, k, v, need_weights=need, average_attn_weights=average, **masks)
        assert torch.allclose(got[0], want[0], atol=1e-6, equal_nan=True), masks.keys()
        if need:
            assert got[1].shape == want[1].shape and torch.allclose(got[1], want[1], atol=1e-6, equal_nan=True)
        else:
            assert got[1] is None and want[1] is None


def test_split_attention_matches_unbatched_and_in_training_with_the_same_gradients():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H)
    split = SplitAttention.from_mha(mha)
    x = torch.randn(L, E)  # one unbatched sequence
    for a, b in zip(mha(x, x, x), split(x, x, x)):
        assert torch.allclose(a, b, atol=1e-6)
    x = torch.randn(L, B, E, requires_grad=True)
    mha(x, x, x, need_weights=False)[0].square().sum().backward()
    want, x.grad = x.grad, None
    split(x, x, x, need_weights=False)[0].square().sum().backward()
    assert torch.allclose(x.grad, want, atol=1e-5)
    w_q = mha.in_proj_weight.grad[:E]
    assert torch.allclose(split.q_proj.weight.grad, w_q, atol=1e-5)


def test_split_attention_drops_attention_weights_only_while_training_and_as_the_original_does():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True)
    split = SplitAttention.from_mha(mha)
    x = torch.randn(B, L, E)
    assert not torch.allclose(split(x, x, x)[0], split(x, x, x)[0])
    outputs = []
    for module in (mha, split):  # the same draws: the same dropped weights, returned and applied
        torch.manual_seed(1)
        outputs.append(module(x, x, x))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*outputs))
    split.eval()
    assert torch.equal(split(x, x, x)[0], split(x, x, x)[0])
    with pytest.raises(RuntimeError, match="attn_mask"):
        split(x, x, x, is_causal=True)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_split_attention_rewrites_an_encoder_stack_and_a_full_transformer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    split, n, kept = split_attention(encoder)
    assert (n, kept) == (2, 0) and not split.use_nested_tensor
    assert type(encoder.layers[0].self_attn) is nn.MultiheadAttention  # the original is left alone
    x = torch.randn(B, 6, E)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    padding = torch.zeros(B, 6, dtype=torch.bool)
    padding[1, -2:] = True
    with torch.no_grad():
        assert torch.allclose(split(x), encoder(x), atol=1e-5)
        assert torch.allclose(split(x, mask=causal, is_causal=True), encoder(x, mask=causal, is_causal=True),
                              atol=1e-5)
        keep = ~padding  # the original's nested-tensor path leaves zeros at padded positions
        got, want = split(x, src_key_padding_mask=padding), encoder(x, src_key_padding_mask=padding)
        assert torch.allclose(got[keep], want[keep], atol=1e-5)
    full = nn.Transformer(E, H, 1, 1, 32, dropout=0.0, batch_first=True).eval()
    split_full, n, _ = split_attention(full)
    assert n == 3  # encoder self-attention, decoder self- and cross-attention
    tgt = torch.randn(B, 4, E)
    with torch.no_grad():
        assert torch.allclose(split_full(x, tgt), full(x, tgt), atol=1e-5)


def test_split_attention_keeps_shared_modules_shared_and_leaves_models_without_attention_alone():
    mha = nn.MultiheadAttention(E, H)
    model = nn.ModuleDict({"a": mha, "b": mha, "odd": nn.MultiheadAttention(E, H, add_bias_kv=True)})
    split, n, kept = split_attention(model)
    assert (n, kept) == (1, 1) and split["a"] is split["b"] and isinstance(split["a"], SplitAttention)
    assert type(split["odd"]) is nn.MultiheadAttention
    plain = nn.Sequential(nn.Linear(4, 2))
    assert split_attention(plain) == (plain, 0, 0)
    alone = nn.ModuleDict({"odd": nn.MultiheadAttention(E, H, add_zero_attn=True)})
    assert split_attention(alone) == (alone, 0, 1)


def test_a_compressed_split_transformer_exports_with_torch_export():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True), nn.Flatten(),
                            nn.Linear(6 * E, 3)).eval()
    teacher, _, _ = split_attention(teacher)
    x = torch.randn(B, 6, E)
    names = [i.name for i in describe_layers(teacher, x)]
    assert names[:4] == ["0.self_attn.q_proj", "0.self_attn.k_proj", "0.self_attn.v_proj", "0.self_attn.out_proj"]
    student = compress(teacher, CompressionPolicy.uniform(names, 0.5, 4), x)
    plain = deployable(student, int8=False)
    program = torch.export.export(plain, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    more = torch.randn(5, 6, E)
    assert torch.allclose(program.module()(more), predict_logits(student, more), atol=1e-5)


def test_a_factory_teacher_gets_searchable_attention_unless_the_rewrite_would_change_it(caplog):
    task = load_task({"factory": "plugin_task:attention_task"})
    assert isinstance(task.teacher.attn, SplitAttention)
    names = [i.name for i in describe_layers(task.teacher, task.example_input(2))]
    assert names == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "head"]
    with caplog.at_level(logging.WARNING, logger="metacompress.learners.plugins"):
        raw = load_task({"factory": "plugin_task:attention_task", "kwargs": {"raw": True}})
        assert type(raw.teacher.attn) is nn.MultiheadAttention  # its forward reads in_proj_weight itself
        assert "fails (TypeError" in caplog.text and "not searched" in caplog.text
        caplog.clear()
        kv = load_task({"factory": "plugin_task:attention_task", "kwargs": {"add_bias_kv": True}})
        assert type(kv.teacher.attn) is nn.MultiheadAttention and "add_bias_kv" in caplog.text
    assert [i.name for i in describe_layers(kv.teacher, kv.example_input(2))] == ["head"]


def test_a_model_torch_fx_cannot_trace_keeps_only_its_attention_heads_structured_instead_of_failing(caplog):
    """The attention teacher's forward calls len(x), which symbolic tracing refuses; its heads need no trace."""
    from metacompress.learners import channel_groups, shrink

    task = load_task({"factory": "plugin_task:attention_task"})
    x = task.example_input(2)
    with caplog.at_level(logging.WARNING, logger="metacompress.learners.prune"):
        groups = channel_groups(task.teacher, x)
    assert [(g.producers, g.unit) for g in groups if g.prunable] == [(["attn.q_proj", "attn.k_proj", "attn.v_proj"], 4)]
    assert {g.reason for g in groups if not g.prunable} == {"torch.fx cannot trace AttentionClassifier (RuntimeError)"}
    assert "torch.fx cannot trace AttentionClassifier" in caplog.text and "only attention heads" in caplog.text
    assert [i.name for i in describe_layers(task.teacher, x) if i.structured] == ["attn.q_proj", "attn.k_proj",
                                                                                  "attn.v_proj"]
    assert shrink(task.teacher, {"head": 0.5}, x) == {}  # the head is in no group: nothing to shrink


def test_structured_pruning_removes_whole_heads_as_if_their_output_were_zero(tmp_path):
    """Half the heads of the token task's encoder go: q/k/v lose 16 of 32 rows, out_proj the matching columns, the
    attention computes with 2 heads, and the logits are the teacher's with those heads' outputs zeroed."""
    from metacompress.learners import export_compressed, load_compressed, size_bytes
    from metacompress.learners.meta import SizeModel
    from metacompress.learners.prune import head_groups
    from metacompress.spaces import LayerPolicy

    task = load_task({"factory": "plugin_task:make_token_task"})
    example, tokens = task.example_input(2), task.val.tensors[0]
    layers = describe_layers(task.teacher, example)
    attention = [f"encoder.self_attn.{p}_proj" for p in "qkv"]
    assert [i.name for i in layers if i.structured] == [*attention, "encoder.linear1"]
    policy = CompressionPolicy(layers={"encoder.self_attn.k_proj": LayerPolicy(0.5, 32)}, prune_method="structured")
    student = compress(task.teacher, policy, example)
    attn = student.encoder.self_attn
    assert attn.num_heads == 2 and attn.q_proj.weight.shape == (16, 32) and attn.out_proj.weight.shape == (32, 16)
    teacher_q = task.teacher.encoder.self_attn.q_proj.weight
    kept = [h for h in range(4)
            if any(torch.equal(attn.q_proj.weight[8 * j : 8 * j + 8], teacher_q[8 * h : 8 * h + 8]) for j in range(2))]
    assert len(kept) == 2
    zeroed = copy.deepcopy(task.teacher)
    with torch.no_grad():
        for h in set(range(4)) - set(kept):
            zeroed.encoder.self_attn.out_proj.weight[:, 8 * h : 8 * h + 8] = 0
    assert torch.allclose(predict_logits(student, tokens), predict_logits(zeroed, tokens), atol=1e-5)
    space_sizes = SizeModel(task.teacher, example)
    for prune in (0.2, 0.4, 0.6, 0.9):  # whole heads: 3, 2, 2 and 1 of 4 kept
        policy = CompressionPolicy.uniform([i.name for i in layers], prune, 4, prune_method="structured")
        smaller = compress(task.teacher, policy, example)
        assert smaller.encoder.self_attn.num_heads == {0.2: 3, 0.4: 2, 0.6: 2, 0.9: 1}[prune]
        assert size_bytes(smaller) == space_sizes.policy_bytes(policy)
    export_compressed(smaller, tmp_path / "h.mcz", task.input_shape)
    back = load_compressed(tmp_path / "h.mcz", task.teacher)
    assert back.encoder.self_attn.num_heads == 1
    assert torch.allclose(predict_logits(back, tokens), predict_logits(smaller, tokens), atol=1e-5)
    assert [g.prunable for g in head_groups(nn.Sequential(SplitAttention(8, 1)))] == [False]  # one head: keep it


def test_structured_pruning_removes_feed_forward_units_of_transformer_layers():
    """linear1's rows and linear2's matching columns go together (no trace: the layer's forward is known); the
    logits are the teacher's with those units' outputs zeroed. A non-elementwise activation is not pruned."""
    from metacompress.learners import size_bytes
    from metacompress.learners.meta import SizeModel
    from metacompress.learners.prune import feedforward_groups
    from metacompress.spaces import LayerPolicy

    task = load_task({"factory": "plugin_task:make_token_task"})
    example, tokens = task.example_input(2), task.val.tensors[0]
    policy = CompressionPolicy(layers={"encoder.linear1": LayerPolicy(0.25, 32)}, prune_method="structured")
    student = compress(task.teacher, policy, example)
    assert student.encoder.linear1.weight.shape == (48, 32) and student.encoder.linear2.weight.shape == (32, 48)
    assert size_bytes(student) == SizeModel(task.teacher, example).policy_bytes(policy)
    rows = task.teacher.encoder.linear1.weight
    kept = [u for u in range(64) if any(torch.equal(rows[u], r) for r in student.encoder.linear1.weight)]
    assert len(kept) == 48
    zeroed = copy.deepcopy(task.teacher)
    with torch.no_grad():
        zeroed.encoder.linear2.weight[:, sorted(set(range(64)) - set(kept))] = 0
    assert torch.allclose(predict_logits(student, tokens), predict_logits(zeroed, tokens), atol=1e-5)
    softmaxed = nn.TransformerEncoderLayer(8, 2, 16, activation=lambda x: torch.softmax(x, -1))
    assert [g.prunable for g in feedforward_groups(nn.Sequential(softmaxed))] == [False]
    gelu = nn.TransformerEncoderLayer(8, 2, 16, activation="gelu")
    assert [g.prunable for g in feedforward_groups(nn.Sequential(gelu))] == [True]
