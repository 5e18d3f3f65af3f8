"""CompressionPolicy: validation messages, flat dict round trips, helpers."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metacompress.spaces import ALLOWED_BITS, CompressionPolicy, ConfigError, LayerPolicy

NAMES = ("features.0", "features.3", "fc")

layer_names = st.text(alphabet="abcxyz019._", min_size=1, max_size=12)
layer_policies = st.builds(
    LayerPolicy,
    prune=st.floats(0.0, 1.0, exclude_max=True, allow_nan=False),
    bits=st.sampled_from(ALLOWED_BITS),
)
policies = st.builds(
    CompressionPolicy,
    layers=st.dictionaries(layer_names, layer_policies, max_size=6),
    prune_method=st.sampled_from(("unstructured", "structured")),
    act_bits=st.one_of(st.none(), st.sampled_from(ALLOWED_BITS)),
    kd_lambda=st.floats(0.0, 1.0),
    temperature=st.floats(1e-3, 1e3),
    epochs=st.integers(0, 100),
    lr=st.floats(1e-8, 1.0),
    feature_beta=st.floats(0.0, 1e3),
    prox_mu=st.floats(0.0, 1e3),
)


@given(policy=policies)
def test_flat_dict_round_trips_exactly_through_json(policy: CompressionPolicy) -> None:
    flat = policy.to_dict()
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in flat.values())
    again = CompressionPolicy.from_dict(json.loads(json.dumps(flat)))
    assert again == policy
    assert again.to_dict() == flat
    assert list(again.layers) == list(policy.layers)
    assert hash(again) == hash(policy)


def test_to_dict_keys_and_dotted_layer_names() -> None:
    policy = CompressionPolicy({"features.0": LayerPolicy(0.5, 4)}, act_bits=8)
    assert list(policy.to_dict()) == [
        "prune_method", "act_bits", "kd_lambda", "temperature", "epochs", "lr", "feature_beta", "prox_mu",
        "layers.features.0.prune", "layers.features.0.bits",
    ]
    again = CompressionPolicy.from_dict(policy.to_dict())
    assert again.layers == {"features.0": LayerPolicy(0.5, 4)}


def test_from_dict_partial_layer_and_defaults() -> None:
    policy = CompressionPolicy.from_dict({"layers.fc.bits": 8})
    assert policy.layers["fc"] == LayerPolicy(0.0, 8)
    assert policy.kd_lambda == 0.5 and policy.act_bits is None


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (CompressionPolicy({"fc": LayerPolicy(bits=9)}),
         "The 'layers.fc.bits' value must be one of 2, 3, 4, 5, 6, 7, 8, 16, 32. Got 9."),
        (CompressionPolicy({"fc": LayerPolicy(prune=1.2)}), "The 'layers.fc.prune' value must be in [0, 1). Got 1.2."),
        (CompressionPolicy({"fc": LayerPolicy(prune=math.nan)}), "The 'layers.fc.prune' value must be in [0, 1)."),
        (CompressionPolicy({"fc": LayerPolicy(bits=8.0)}), "The 'layers.fc.bits' value must be one of"),
        (CompressionPolicy({"fc": 0.5}), "The 'layers.fc' value must be a LayerPolicy"),  # type: ignore[dict-item]
        (CompressionPolicy({"fcc": LayerPolicy()}), "The 'layers' value must be one of 'fc', 'features.0', 'features.3'. "
         "Got 'fcc'. Did you mean 'fc'?"),
        (CompressionPolicy(kd_lambda=1.5), "The 'kd_lambda' value must be in [0, 1]. Got 1.5."),
        (CompressionPolicy(kd_lambda=math.nan), "The 'kd_lambda' value must be in [0, 1]."),
        (CompressionPolicy(temperature=0.0), "The 'temperature' value must be a finite number > 0. Got 0.0."),
        (CompressionPolicy(epochs=-1), "The 'epochs' value must be an integer >= 0. Got -1."),
        (CompressionPolicy(epochs=1.5), "The 'epochs' value must be an integer >= 0."),  # type: ignore[arg-type]
        (CompressionPolicy(lr=0.0), "The 'lr' value must be a finite number > 0. Got 0.0."),
        (CompressionPolicy(lr=math.inf), "The 'lr' value must be a finite number > 0."),
        (CompressionPolicy(act_bits=1), "The 'act_bits' value must be None or one of 2, 3"),
        (CompressionPolicy(prune_method="structurd"), "The 'prune_method' value must be one of 'structured', "
         "'unstructured'. Got 'structurd'. Did you mean 'structured'?"),
        (CompressionPolicy(feature_beta=-0.1), "The 'feature_beta' value must be a finite number >= 0."),
        (CompressionPolicy(prox_mu=math.nan), "The 'prox_mu' value must be a finite number >= 0."),
    ],
)
def test_validate_messages_name_the_field(policy: CompressionPolicy, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        policy.validate(NAMES)
    assert message in str(info.value)
    assert info.value.field in message


def test_validate_returns_self_and_construct_is_free() -> None:
    policy = CompressionPolicy({"fc": LayerPolicy(0.5, 4)})
    assert policy.validate(NAMES) is policy
    CompressionPolicy(kd_lambda=7.0)  # no error until validate()
    assert CompressionPolicy({"anything": LayerPolicy()}).validate() is not None


def test_from_dict_validates_and_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'kd_lambda'"):
        CompressionPolicy.from_dict({"kd_lamda": 0.3})
    with pytest.raises(ConfigError, match="'policy' keys must be one of"):
        CompressionPolicy.from_dict({"layers.fc.bit": 4})
    with pytest.raises(ConfigError, match="'layers.fc.bits'"):
        CompressionPolicy.from_dict({"layers.fc.bits": 9})
    with pytest.raises(ConfigError, match="Did you mean 'fc'"):
        CompressionPolicy.from_dict({"layers.fcc.bits": 4}, layer_names=NAMES)


def test_uniform_replace_and_means() -> None:
    policy = CompressionPolicy.uniform(NAMES, prune=0.5, bits=4, kd_lambda=0.7)
    assert set(policy.layers) == set(NAMES) and policy.kd_lambda == 0.7
    assert policy.layer("missing") == LayerPolicy()
    with pytest.raises(ConfigError, match="'layers.features.0.bits'"):
        CompressionPolicy.uniform(NAMES, bits=9)
    with pytest.raises(ConfigError, match="Did you mean 'temperature'"):
        CompressionPolicy.uniform(NAMES, temprature=2.0)
    changed = policy.replace(epochs=5)
    assert changed.epochs == 5 and policy.epochs == 2
    with pytest.raises(ConfigError, match="Did you mean 'epochs'"):
        policy.replace(epoch=5)
    mixed = policy.replace(layers={"features.0": LayerPolicy(0.0, 8), "fc": LayerPolicy(0.5, 2)})
    weights = {"features.0": 100, "features.3": 100, "fc": 200}
    assert mixed.mean_bits(weights) == pytest.approx((100 * 8 + 100 * 32 + 200 * 2) / 400)
    assert mixed.mean_prune(weights) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="'weights'"):
        mixed.mean_bits({})
