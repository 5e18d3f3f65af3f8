"""The error template helpers."""

from __future__ import annotations

from metacompress.spaces import ConfigError, MetacompressError, invalid_value, missing_key, prefixed, unknown_key


def test_template_helpers() -> None:
    err = invalid_value("prune.max", "in [0, 1)", 1.2)
    assert str(err) == "The 'prune.max' value must be in [0, 1). Got 1.2." and err.field == "prune.max"
    assert isinstance(err, ValueError) and isinstance(err, MetacompressError)
    assert str(missing_key("lr")) == "The 'lr' value must be given. Got nothing."
    assert "Did you mean 'auto'" in str(unknown_key("space.grouping", "auot", ["auto", "per-layer"]))


def test_prefixed() -> None:
    err = prefixed(invalid_value("low", "at most high (1.0)", 2.0), "space.prune")
    assert isinstance(err, ConfigError) and err.field == "space.prune.low"
    assert str(err) == "The 'space.prune.low' value must be at most high (1.0). Got 2.0."
    original = invalid_value("low", "x", 1)
    assert prefixed(original, "") is original
    assert prefixed(ConfigError("free text"), "space").field == "space"
