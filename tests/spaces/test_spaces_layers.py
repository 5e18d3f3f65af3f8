"""LayerInfo validation and serialization."""

from __future__ import annotations

import json

import pytest

from metacompress.spaces import ConfigError, LayerInfo


def test_round_trip_and_coercion() -> None:
    info = LayerInfo("features.0", "conv2d", 144, [16, 1, 3, 3], structured=False)  # type: ignore[arg-type]
    assert info.shape == (16, 1, 3, 3)
    assert LayerInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    assert LayerInfo.from_dict({"name": "fc", "kind": "linear", "n_params": 10, "shape": [10, 1]}).structured


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "", "kind": "linear", "n_params": 1, "shape": (1,)}, "name"),
        ({"name": "fc", "kind": "lstm", "n_params": 1, "shape": (1,)}, "fc.kind"),
        ({"name": "fc", "kind": "linear", "n_params": -1, "shape": (1,)}, "fc.n_params"),
        ({"name": "fc", "kind": "linear", "n_params": 1, "shape": "1x1"}, "fc.shape"),
        ({"name": "fc", "kind": "linear", "n_params": 1, "shape": (1,), "structured": 1}, "fc.structured"),
    ],
)
def test_bad_layer_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"The '{field}' value must be"):
        LayerInfo(**kwargs)
    with pytest.raises(ConfigError, match=f"The 'layer.{field}' value must be"):
        LayerInfo.from_dict(kwargs)


def test_from_dict_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'n_params'"):
        LayerInfo.from_dict({"name": "fc", "kind": "linear", "nparams": 1, "shape": [1]})
    with pytest.raises(ConfigError, match="The 'layer.shape' value must be given"):
        LayerInfo.from_dict({"name": "fc", "kind": "linear", "n_params": 1})
