"""CompressionSpace: grouping, parameters, decode/encode, designs, serialization."""

from __future__ import annotations

import json
import random
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacompress.spaces import (
    Categorical,
    CompressionPolicy,
    CompressionSpace,
    ConfigError,
    Float,
    Int,
    LayerInfo,
    LayerPolicy,
    Ordinal,
)

LAYERS = (
    LayerInfo("features.0", "conv2d", 144, (16, 1, 3, 3)),
    LayerInfo("features.3", "conv2d", 4608, (32, 16, 3, 3)),
    LayerInfo("features.6", "conv2d", 18432, (64, 32, 3, 3)),
    LayerInfo("classifier.0", "linear", 40960, (64, 640)),
    LayerInfo("classifier.2", "linear", 640, (10, 64), structured=False),
)
NAMES = tuple(info.name for info in LAYERS)


def test_default_params_order_and_constants() -> None:
    space = CompressionSpace(LAYERS)
    assert space.layer_names == NAMES and space.layers == LAYERS
    assert list(space.groups) == list(NAMES)
    assert list(space.params) == [
        *(f"prune.{n}" for n in NAMES), *(f"bits.{n}" for n in NAMES), "kd_lambda", "temperature", "epochs", "lr",
    ]
    assert space.n_params["features.0"] == 144
    policy = space.decode(space.sample(random.Random(1)))
    assert policy.prune_method == "unstructured" and policy.act_bits is None
    assert policy.feature_beta == 0.0 and policy.prox_mu == 0.0
    assert list(policy.layers) == list(NAMES)


def test_plain_values_are_constants() -> None:
    space = CompressionSpace(LAYERS, prune=0.5, bits=8, epochs=2, act_bits=8, kd_lambda=Float(0.2, 0.2))
    assert list(space.params) == ["temperature", "lr"]
    policy = space.decode({"temperature": 2.0, "lr": 1e-3})
    assert policy.layers["features.3"] == LayerPolicy(0.5, 8)
    assert (policy.epochs, policy.act_bits, policy.kd_lambda) == (2, 8, 0.2)
    assert space.decode({"temperature": 2.0, "lr": 1e-3, "epochs": 2}) == policy  # a constant may be repeated
    with pytest.raises(ConfigError, match="The 'epochs' value must be one of 2. Got 3."):
        space.decode({"temperature": 2.0, "lr": 1e-3, "epochs": 3})


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), grouping=st.sampled_from(["per-layer", "auto", {"convs": r"features\..*"}]))
def test_decode_encode_round_trip(seed: int, grouping) -> None:  # noqa: ANN001
    space = CompressionSpace(LAYERS, grouping=grouping, prune_method=Categorical(("unstructured", "structured")),
                             act_bits=Ordinal((4, 8)), epochs=Int(0, 4))
    params = space.sample(random.Random(seed))
    assert space.contains(params)
    policy = space.decode(params)
    assert space.decode(space.encode(policy)) == policy
    if params["prune_method"] == "unstructured":  # structured ignores prune.<group> of unstructurable-only groups
        assert space.encode(policy) == params
    assert CompressionPolicy.from_dict(json.loads(json.dumps(policy.to_dict())), NAMES) == policy


def test_decode_errors() -> None:
    space = CompressionSpace(LAYERS)
    params = space.sample(random.Random(0))
    missing = {k: v for k, v in params.items() if k != "bits.features.3"}
    with pytest.raises(ConfigError, match="The 'bits.features.3' value must be given. Got nothing."):
        space.decode(missing)
    with pytest.raises(ConfigError, match="The 'params' keys must be one of .* Got 'kd_lamda'. Did you mean 'kd_lambda'"):
        space.decode({**params, "kd_lamda": 0.1})
    with pytest.raises(ConfigError, match=r"The 'prune.features.0' value must be in \[0.0, 0.95\]. Got 0.99."):
        space.decode({**params, "prune.features.0": 0.99})
    with pytest.raises(ConfigError, match="The 'bits.fc' value|'bits.classifier.0' value must be one of 2, 3, 4, 5, 6, 8"):
        space.decode({**params, "bits.classifier.0": 7})
    with pytest.raises(ConfigError, match="'params' value must be a mapping"):
        space.decode([1, 2])  # type: ignore[arg-type]
    assert not space.contains(missing)


def test_structured_pruning_spares_unstructurable_layers() -> None:
    space = CompressionSpace(LAYERS, grouping={"all": ".*"}, prune_method="structured")
    params = {"prune.all": 0.5, "bits.all": 4, "kd_lambda": 0.5, "temperature": 2.0, "epochs": 1, "lr": 1e-3}
    policy = space.decode(params)
    assert policy.layers["classifier.2"].prune == 0.0
    assert policy.layers["classifier.0"].prune == 0.5
    assert space.encode(policy) == params
    # the group's value comes from its first channel-prunable layer
    mixed = policy.replace(layers={"classifier.2": LayerPolicy(0.0, 4), "features.0": LayerPolicy(0.3, 4)})
    assert space.encode(mixed)["prune.all"] == 0.3


def test_encode_checks_and_clips() -> None:
    space = CompressionSpace(LAYERS)
    policy = CompressionPolicy.uniform(NAMES, prune=0.99, bits=7, lr=1.0)
    with pytest.raises(ConfigError, match=r"The 'prune.features.0' value must be in \[0.0, 0.95\]. Got 0.99."):
        space.encode(policy)
    clipped = space.encode(policy, clip=True)
    assert clipped["prune.features.0"] == 0.95 and clipped["bits.features.0"] == 6  # 7 -> nearest, lower on ties
    assert clipped["lr"] == 1e-2 and space.contains(clipped)
    left_alone = space.encode(CompressionPolicy(), clip=True)  # missing layers: prune 0, bits 32 -> 8
    assert left_alone["bits.features.0"] == 8
    with pytest.raises(ConfigError, match="Did you mean 'features.0'"):
        space.encode(CompressionPolicy({"featres.0": LayerPolicy()}))
    with pytest.raises(ConfigError, match="'policy' value must be a CompressionPolicy"):
        space.encode({"lr": 1.0})  # type: ignore[arg-type]
    categorical = CompressionSpace(LAYERS, prune_method=Categorical(("structured", "unstructured")))
    with pytest.raises(ConfigError, match="'prune_method'"):
        categorical.encode(CompressionPolicy(prune_method="bogus"))


def test_auto_grouping_merges_small_layers() -> None:
    space = CompressionSpace(LAYERS, grouping="auto")
    # total 64784: features.0 (0.2 %) and classifier.2 (1 %) are small
    assert space.groups == {
        "small": ("features.0", "classifier.2"),
        "features.3": ("features.3",),
        "features.6": ("features.6",),
        "classifier.0": ("classifier.0",),
    }
    policy = space.decode(space.sample(random.Random(0)))
    assert policy.layers["features.0"] == policy.layers["classifier.2"]
    assert list(policy.layers) == list(NAMES)


def test_auto_grouping_fallbacks_and_name_clash() -> None:
    one_small = [LayerInfo("a", "linear", 1000, (10, 100)), LayerInfo("b", "linear", 1, (1, 1))]
    assert CompressionSpace(one_small, grouping="auto").groups == {"a": ("a",), "b": ("b",)}
    many = [LayerInfo(f"l{i}", "linear", 10, (10, 1)) for i in range(60)]
    assert len(CompressionSpace(many, grouping="auto").groups) == 60
    clash = [LayerInfo("small", "linear", 1000, (10, 100)), *(LayerInfo(f"t{i}", "linear", 1, (1, 1)) for i in range(2))]
    assert CompressionSpace(clash, grouping="auto").groups == {"small": ("small",), "small_1": ("t0", "t1")}


def test_regex_grouping() -> None:
    space = CompressionSpace(LAYERS, grouping={"first": r"features\.0", "convs": r"features\..*"})
    assert space.groups == {
        "first": ("features.0",),
        "convs": ("features.3", "features.6"),
        "rest": ("classifier.0", "classifier.2"),
    }
    assert space.grouping == {"first": r"features\.0", "convs": r"features\..*"}
    merged = CompressionSpace(LAYERS, grouping={"rest": r"features\.0", "x": "classifier.*"})
    assert merged.groups["rest"] == ("features.0", "features.3", "features.6")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grouping": {"convs": r"conv.*"}}, "The 'space.grouping.convs' value must be a regular expression matching"),
        ({"grouping": {"a": ".*", "b": "features.*"}}, "The 'space.grouping.b' value must be a regular expression"),
        ({"grouping": {"bad": "features.("}}, "The 'space.grouping.bad' value must be a valid regular expression"),
        ({"grouping": {"bad": 3}}, "The 'space.grouping.bad' value must be a regular expression (str)"),
        ({"grouping": {}}, "The 'space.grouping' value must be 'per-layer', 'auto' or a non-empty mapping"),
        ({"grouping": "per_layer"}, "The 'space.grouping' value must be one of 'auto', 'per-layer'. Got 'per_layer'. "
         "Did you mean 'per-layer'?"),
        ({"prune": Float(0.0, 1.0)}, "The 'space.prune' value must be in [0, 1). Got 1.0."),
        ({"prune": {"type": "float", "low": 0.5, "high": 0.1}}, "The 'space.prune.low' value must be at most high"),
        ({"bits": Int(2, 16)}, "The 'space.bits' value must be one of 2, 3, 4, 5, 6, 7, 8, 16, 32. Got 9."),
        ({"bits": Float(2, 8)}, "The 'space.bits' value must be one of 2, 3"),
        ({"epochs": Float(1, 3)}, "The 'space.epochs' value must be an integer >= 0. Got 1.0."),
        ({"act_bits": Ordinal((1, 8))}, "The 'space.act_bits' value must be None or one of 2, 3"),
        ({"prune_method": Categorical(("channel",))}, "The 'space.prune_method' value must be one of 'structured', "
         "'unstructured'. Got 'channel'."),
        ({"kd_lambda": Float(0.0, 2.0)}, "The 'space.kd_lambda' value must be in [0, 1]. Got 2.0."),
        ({"temperature": 0.0}, "The 'space.temperature' value must be a finite number > 0. Got 0.0."),
        ({"lr": Float(0.0, 1.0)}, "The 'space.lr' value must be a finite number > 0. Got 0.0."),
        ({"prox_mu": [1.0]}, "The 'space.prox_mu' value must be a Domain, its dict form, or a constant"),
    ],
)
def test_bad_space_arguments_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        CompressionSpace(LAYERS, **kwargs)
    assert message in str(info.value)
    assert info.value.field and info.value.field.startswith("space.")


def test_bad_layers() -> None:
    with pytest.raises(ConfigError, match="The 'space.layers' value must be a non-empty sequence"):
        CompressionSpace([])
    with pytest.raises(ConfigError, match="The 'space.layers' value must be a sequence of layers with unique names"):
        CompressionSpace([LAYERS[0], LAYERS[0]])
    with pytest.raises(ConfigError, match="The 'space.layers.fc.kind' value must be one of"):
        CompressionSpace([{"name": "fc", "kind": "lstm", "n_params": 1, "shape": [1]}])


def test_space_filling_is_deterministic_spread_and_contained() -> None:
    space = CompressionSpace(LAYERS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        design = space.space_filling(5, seed=3)
        big = space.space_filling(64, seed=3)
    assert len(design) == 5 and design == space.space_filling(5, seed=3)
    assert design != space.space_filling(5, seed=4)
    assert all(space.contains(p) for p in big)
    assert all(type(p["bits.features.0"]) is int and type(p["lr"]) is float for p in design)
    # 64 Sobol points hit every bits value evenly (a space-filling property random sampling lacks)
    counts = {b: sum(p["bits.features.0"] == b for p in big) for b in (2, 3, 4, 5, 6, 8)}
    assert min(counts.values()) >= 8
    assert space.space_filling(0, seed=0) == []
    constant = CompressionSpace(LAYERS, prune=0.0, bits=8, kd_lambda=0.5, temperature=4.0, epochs=1, lr=1e-3)
    assert constant.params == {} and constant.space_filling(3, seed=0) == [{}, {}, {}]
    with pytest.raises(ConfigError, match="The 'n' value must be an integer >= 0. Got -1."):
        space.space_filling(-1, seed=0)


def test_serialization_and_fingerprint() -> None:
    space = CompressionSpace(LAYERS, grouping={"convs": r"features\..*"}, act_bits=Ordinal((4, 8, 32)))
    again = CompressionSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space and hash(again) == hash(space)
    assert again.fingerprint() == space.fingerprint() and len(space.fingerprint()) == 40
    assert again.groups == space.groups and list(again.params) == list(space.params)
    assert CompressionSpace(LAYERS).fingerprint() == CompressionSpace(list(LAYERS)).fingerprint()
    others = [
        CompressionSpace(LAYERS),
        CompressionSpace(LAYERS, grouping="auto"),
        CompressionSpace(LAYERS, bits=Ordinal((2, 4, 8))),
        CompressionSpace(LAYERS[:-1]),
        CompressionSpace(LAYERS, grouping={"a": r"features\.0", "b": r"features\.[36]"}),
        CompressionSpace(LAYERS, grouping={"b": r"features\.[36]", "a": r"features\.0"}),
    ]
    assert len({s.fingerprint() for s in others}) == len(others)
    assert "CompressionSpace(5 layers" in repr(space)


def test_from_dict_errors_and_defaults() -> None:
    layers = [info.to_dict() for info in LAYERS]
    assert CompressionSpace.from_dict({"layers": layers}) == CompressionSpace(LAYERS)
    space = CompressionSpace.from_dict({"layers": layers, "domains": {"epochs": 2}})
    assert "epochs" not in space.params
    with pytest.raises(ConfigError, match="Did you mean 'domains'"):
        CompressionSpace.from_dict({"layers": layers, "domain": {}})
    with pytest.raises(ConfigError, match="The 'space.domains' keys must be one of .* Did you mean 'kd_lambda'"):
        CompressionSpace.from_dict({"layers": layers, "domains": {"kd_lamda": 0.5}})
    with pytest.raises(ConfigError, match="The 'space.layers' value must be given"):
        CompressionSpace.from_dict({"domains": {}})
