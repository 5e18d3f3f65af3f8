"""Domains: validation, unit-interval round trips, serialization."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metacompress.spaces import Categorical, ConfigError, Domain, Float, Int, Ordinal

DOMAINS = [
    Float(0.0, 0.95),
    Float(1e-4, 1e-2, log=True),
    Float(0.3, 0.3),
    Int(1, 3),
    Int(1, 1000, log=True),
    Int(5, 5),
    Ordinal((2, 3, 4, 6, 8)),
    Ordinal((0.0, 0.25, 0.5)),
    Categorical(("unstructured", "structured")),
    Categorical((None, 4, 8.5, True, "x")),
]


@pytest.mark.parametrize("domain", DOMAINS, ids=repr)
def test_sample_is_contained_and_unit_round_trips(domain: Domain) -> None:
    rng = random.Random(0)
    for _ in range(50):
        x = domain.sample(rng)
        assert domain.contains(x)
        u = domain.to_unit(x)
        assert 0.0 <= u <= 1.0
        back = domain.from_unit(u)
        if isinstance(domain, Float):
            assert back == pytest.approx(x, rel=1e-9, abs=1e-12)
        else:
            assert back == x and type(back) is type(x)


@pytest.mark.parametrize("domain", DOMAINS, ids=repr)
def test_to_dict_round_trips_through_json(domain: Domain) -> None:
    d = json.loads(json.dumps(domain.to_dict()))
    assert Domain.from_dict(d) == domain


@pytest.mark.parametrize("domain", DOMAINS, ids=repr)
def test_from_unit_ends_are_contained(domain: Domain) -> None:
    for u in (0.0, 1e-12, 0.5, 1 - 1e-12, 1.0, -3.0, 7.0):
        assert domain.contains(domain.from_unit(u))


@given(u=st.floats(0.0, 1.0))
def test_discrete_unit_bins_round_trip(u: float) -> None:
    for domain in (Int(-3, 7), Int(1, 64, log=True), Ordinal((2, 3, 4, 5, 6, 8))):
        x = domain.from_unit(u)
        assert domain.from_unit(domain.to_unit(x)) == x


@given(low=st.floats(-1e6, 1e6), width=st.floats(0, 1e6), u=st.floats(0, 1))
def test_float_from_unit_stays_in_bounds(low: float, width: float, u: float) -> None:
    domain = Float(low, low + width)
    assert domain.contains(domain.from_unit(u))


def test_is_constant_and_constant_value() -> None:
    assert Float(0.3, 0.3).is_constant and Float(0.3, 0.3).constant_value == 0.3
    assert Int(2, 2).constant_value == 2
    assert Categorical((None,)).is_constant and Categorical((None,)).constant_value is None
    assert not Ordinal((2, 4)).is_constant
    with pytest.raises(ValueError):
        Ordinal((2, 4)).constant_value  # noqa: B018


def test_contains_is_type_strict() -> None:
    assert not Int(0, 8).contains(4.0)
    assert not Int(0, 8).contains(True)
    assert not Categorical((1, "a")).contains(True)
    assert Categorical((True, "a")).contains(True)
    assert not Float(0, 1).contains(float("nan"))
    assert not Ordinal((2, 4)).contains(3)


def test_project_and_describe() -> None:
    assert Float(0, 0.9).project(1.5) == 0.9
    assert Int(1, 3).project(2.6) == 3
    assert Ordinal((2, 4, 8)).project(5) == 4
    assert Categorical(("a",)).project("a") == "a"
    with pytest.raises(ConfigError, match="one of 'a'"):
        Categorical(("a",)).project("b")
    assert Float(0.0, 0.95).describe() == "in [0.0, 0.95]"
    assert Ordinal((2, 4)).describe() == "one of 2, 4"


def test_ordinal_is_sorted() -> None:
    assert Ordinal((8, 2, 4)).values == (2, 4, 8)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Float(1.0, 0.5), "low"),
        (lambda: Float(0.0, 1.0, log=True), "low"),
        (lambda: Float(0.0, math.inf), "high"),
        (lambda: Float("a", 1.0), "low"),  # type: ignore[arg-type]
        (lambda: Float(0.0, 1.0, log="yes"), "log"),  # type: ignore[arg-type]
        (lambda: Int(1, 2.5), "high"),  # type: ignore[arg-type]
        (lambda: Int(0, 8, log=True), "low"),
        (lambda: Ordinal(()), "values"),
        (lambda: Ordinal((2, "a")), "values"),
        (lambda: Ordinal((2, 2.0)), "values"),
        (lambda: Categorical(()), "choices"),
        (lambda: Categorical(("a", "a")), "choices"),
        (lambda: Categorical((float("nan"),)), "choices"),
        (lambda: Categorical(([1],)), "choices"),  # type: ignore[arg-type]
    ],
)
def test_bad_constructor_arguments_name_the_field(make, field: str) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match=f"The '{field}' value must be") as info:
        make()
    assert info.value.field == field


def test_from_dict_errors_are_prefixed() -> None:
    with pytest.raises(ConfigError, match="'space.prune.low' value must be at most high"):
        Domain.from_dict({"type": "float", "low": 2, "high": 1}, field="space.prune")
    with pytest.raises(ConfigError, match="'space.prune.type'.*Did you mean 'float'"):
        Domain.from_dict({"type": "flot", "low": 0, "high": 1}, field="space.prune")
    with pytest.raises(ConfigError, match="'space.prune'.*Got 'hi'. Did you mean 'high'"):
        Domain.from_dict({"type": "float", "low": 0, "hi": 1}, field="space.prune")
    with pytest.raises(ConfigError, match="'space.prune' value must be a float domain"):
        Domain.from_dict({"type": "float", "low": 0}, field="space.prune")
    with pytest.raises(ConfigError, match="'d' value must be a mapping"):
        Domain.from_dict([1, 2], field="d")  # type: ignore[arg-type]
