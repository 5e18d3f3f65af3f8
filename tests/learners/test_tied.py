"""Tied weights: one Parameter held by several layers is searched, compressed, sized and stored once."""

from __future__ import annotations

import random

import pytest
import torch
from plugin_task import TiedTokenModel, make_tied_task, make_token_task
from torch import nn

from metacompress.learners import (
    channel_groups,
    compress,
    compressible_layers,
    deployable,
    describe_layers,
    export_compressed,
    finetune,
    load_compressed,
    predict_logits,
    size_bytes,
)
from metacompress.learners.meta import SizeModel
from metacompress.learners.quant import effective_weight, tied_layers
from metacompress.spaces import Categorical, CompressionPolicy, CompressionSpace, ConfigError, LayerPolicy, Ordinal


@pytest.fixture()
def tied():
    return make_tied_task()


def test_a_head_tied_to_the_embedding_is_one_searched_layer(tied):
    model = tied.teacher
    assert tied_layers(model) == ({"head": "embed"}, set())
    assert list(compressible_layers(model)) == ["embed", "mix"]
    layers = describe_layers(model, tied.example_input(2))
    assert [(i.name, i.kind, i.structured) for i in layers] == [("embed", "embedding", False), ("mix", "linear", False)]
    # structured pruning of mix would cut the head's inputs, i.e. the embedding's columns
    assert all(not g.prunable for g in channel_groups(model, tied.example_input(2)) if "mix" in g.producers)
    with pytest.raises(ConfigError, match="'head'"):
        compress(model, CompressionPolicy(layers={"head": LayerPolicy(0.5, 4)}))


def test_the_teacher_counts_a_tied_weight_once():
    model = TiedTokenModel(vocab=12, width=8)
    unique = 12 * 8 + 8 * 8 + 8  # embedding = head, mix weight and bias
    assert size_bytes(model) == 4 * unique == SizeModel(model).teacher_bytes
    untied = TiedTokenModel(vocab=12, width=8)
    untied.head.weight = nn.Parameter(untied.embed.weight.detach().clone())
    assert size_bytes(untied) == 4 * (unique + 12 * 8)
    shared = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    shared.append(shared[0])  # one module under two names is one layer, stored once
    assert list(compressible_layers(shared)) == ["0"] and size_bytes(shared) == 4 * 20


def test_followers_share_the_leaders_mask_and_bits_through_fine_tuning(tied):
    policy = CompressionPolicy(layers={"embed": LayerPolicy(0.5, 4), "mix": LayerPolicy(0.25, 8)}, act_bits=8,
                               epochs=2, lr=0.05)
    student = compress(tied.teacher, policy)
    assert student.head.weight is student.embed.weight and student.head.weight_mask is student.embed.weight_mask
    assert student.head.w_bits == 4 and student.head.act_quant is not None and student.embed.act_quant is None
    assert tied.teacher.head.weight is tied.teacher.embed.weight and type(tied.teacher.head) is nn.Linear
    finetune(student, tied.teacher, tied.train, policy)
    w = effective_weight(student.head)
    assert torch.equal(w, effective_weight(student.embed))
    assert float((w == 0).float().mean()) >= 0.5  # pruned weights stayed pruned for both users
    assert len(torch.unique(w[3])) <= 2 ** 4


@pytest.mark.parametrize("act_bits", [None, 8])
def test_exact_sizes_agree_with_the_built_students(tied, act_bits):
    """SizeModel (the warm start's sizes) counts the tied weight once and the follower's activation quantizer."""
    example = tied.example_input(2)
    layers = describe_layers(tied.teacher, example)
    space = CompressionSpace(layers, bits=Ordinal((2, 4, 8, 16, 32)), act_bits=Ordinal((act_bits or 32,)),
                             prune_method=Categorical(("unstructured", "structured")))
    size_model = SizeModel(tied.teacher, example)
    rng = random.Random(0)
    for _ in range(6):
        policy = space.decode(space.sample(rng))
        assert size_model.policy_bytes(policy) == size_bytes(compress(tied.teacher, policy, example))


def test_an_embeddings_act_bits_add_no_quantizer_to_the_size():
    """act_bits gives an Embedding no activation quantizer (its inputs are indices), so no 4-byte range either."""
    task = make_token_task()
    policy = CompressionPolicy.uniform(["embed", "head"], 0.5, 4, act_bits=8)
    assert SizeModel(task.teacher).policy_bytes(policy) == size_bytes(compress(task.teacher, policy))


def test_export_stores_a_tied_weight_once_and_loads_it_tied(tied, tmp_path):
    policy = CompressionPolicy(layers={"embed": LayerPolicy(0.5, 3), "mix": LayerPolicy(0.0, 8)}, act_bits=8)
    student = compress(tied.teacher, policy)
    tokens = tied.val.tensors[0]
    with torch.no_grad():
        student(tokens)  # the activation ranges
    student.eval()
    assert predict_logits(student, tokens).abs().mean() > 0.01
    written = export_compressed(student, tmp_path / "t.mcz", tied.input_shape)
    assert 0 <= written - size_bytes(student) <= 64
    back = load_compressed(tmp_path / "t.mcz", tied.teacher)
    assert back.head.weight is back.embed.weight and back.head.weight_mask is back.embed.weight_mask
    assert back.head.act_quant is not None and back.head.w_bits == 3
    assert torch.allclose(predict_logits(back, tokens), predict_logits(student, tokens), atol=1e-6)
    float_acts = compress(tied.teacher, CompressionPolicy(layers=policy.layers)).eval()
    plain = deployable(float_acts, int8=False)  # the inference copy keeps one weight for both layers
    assert plain.head.weight is plain.embed.weight
    assert torch.allclose(predict_logits(plain, tokens), predict_logits(float_acts, tokens), atol=1e-5)


def test_a_weight_also_held_by_a_layer_that_is_not_compressed_is_left_alone():
    """A max_norm Embedding is never compressed; masking the Linear that shares its table would change it too."""
    model = nn.Sequential(nn.Embedding(6, 6, max_norm=1.0), nn.Flatten(), nn.Linear(12, 6), nn.Linear(6, 6))
    model[3].weight = model[0].weight
    assert tied_layers(model) == ({}, {"3"})
    assert list(compressible_layers(model)) == ["2"]
    with pytest.raises(ConfigError, match="'3'"):
        compress(model, CompressionPolicy(layers={"3": LayerPolicy(0.5, 4)}))


class _CalledTwice(nn.Module):
    """One Linear applied twice in forward: its weights serve both calls."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.shared, self.head = nn.Linear(8, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.shared(torch.relu(self.shared(torch.relu(self.inp(x)))))))


def test_a_layer_called_twice_and_what_feeds_it_lose_no_whole_channels_and_structured_trials_run():
    """Cutting `shared`'s outputs would cut its own inputs in the second call, and `inp`'s outputs its inputs in
    the first: the two would have to be cut alike. Neither is, and a structured policy builds a working student."""
    torch.manual_seed(0)
    model, x = _CalledTwice().eval(), torch.randn(5, 8)
    groups = {g.producers[0]: g for g in channel_groups(model, x)}
    assert not groups["inp"].prunable and "calls more than once" in groups["inp"].reason
    assert not groups["shared"].prunable and "calls more than once" in groups["shared"].reason
    policy = CompressionPolicy.uniform(["inp", "shared", "head"], 0.5, 8, prune_method="structured")
    student = compress(model, policy, x).eval()
    assert student(x).shape == (5, 3) and size_bytes(student) == SizeModel(model, x).policy_bytes(policy)


class _OwnParameter(nn.Module):
    """A custom layer holding its weight as a bare Parameter (applied with F.linear), next to a searched Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(16, 8))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.nn.functional.linear(x, self.proj)))


def test_weights_no_searched_layer_holds_are_named_so_a_search_does_not_skip_them_silently():
    from metacompress.learners import unsearched_weights
    from metacompress.search.runner import unsearched_line

    model = _OwnParameter()
    assert unsearched_weights(model) == {"proj": 128}  # the LayerNorm's vectors and the biases are not weights
    line = unsearched_line(model)
    assert line.startswith("not searched, kept float in every student: proj (128), 73% of the weights")
    assert unsearched_line(model, at_least=0.8) is None
    assert unsearched_weights(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) == {}
