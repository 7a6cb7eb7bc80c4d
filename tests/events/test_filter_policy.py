"""SNS-style filter policies on message attributes."""

from __future__ import annotations

from typing import Any

import pytest

from gureum.errors import InvalidParameterValue
from gureum.events.filter_policy import matches, validate_filter_policy


def attrs(**values: str | float) -> dict[str, dict[str, str]]:
    return {
        k: {"Type": "String" if isinstance(v, str) else "Number", "Value": str(v)}
        for k, v in values.items()
    }


def check(policy: Any, **values: str | float) -> bool:
    return matches(validate_filter_policy(policy), attrs(**values))


def test_exact_values_and_lists() -> None:
    assert check({"color": "red"}, color="red")
    assert not check({"color": "red"}, color="blue")
    assert check({"color": ["red", "blue"]}, color="blue")
    assert not check({"color": ["red", "blue"]})
    # every key must match
    assert check({"color": ["red"], "size": ["L"]}, color="red", size="L")
    assert not check({"color": ["red"], "size": ["L"]}, color="red", size="M")
    assert check({"n": [5]}, n=5.0)


def test_exists_prefix_anything_but() -> None:
    assert check({"trace": [{"exists": True}]}, trace="x")
    assert not check({"trace": [{"exists": True}]})
    assert check({"trace": [{"exists": False}]})
    assert not check({"trace": [{"exists": False}]}, trace="x")
    assert check({"region": [{"prefix": "eu-"}]}, region="eu-west-1")
    assert not check({"region": [{"prefix": "eu-"}]}, region="us-east-1")
    assert check({"color": [{"anything-but": ["red"]}]}, color="blue")
    assert not check({"color": [{"anything-but": ["red"]}]}, color="red")
    assert not check({"color": [{"anything-but": "red"}]})


def test_numeric_ranges() -> None:
    policy = {"price": [{"numeric": [">", 0, "<=", 100]}]}
    assert check(policy, price=100)
    assert check(policy, price=0.5)
    assert not check(policy, price=0)
    assert not check(policy, price=101)
    assert not check(policy, price="cheap")
    assert check({"price": [{"numeric": ["=", 7]}]}, price=7)


def test_string_arrays() -> None:
    tags = {"tags": {"Type": "String.Array", "Value": '["a", "b"]'}}
    assert matches(validate_filter_policy({"tags": ["b"]}), tags)
    assert not matches(validate_filter_policy({"tags": ["c"]}), tags)


def test_no_policy_passes_everything() -> None:
    assert matches(None, {})


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ([], "non-empty JSON object"),
        ({}, "non-empty JSON object"),
        ({"color": []}, "attribute 'color': needs at least one condition"),
        ({"color": [{"exists": "yes"}]}, "attribute 'color': 'exists' takes true or false"),
        ({"n": [{"numeric": [">"]}]}, "attribute 'n': 'numeric' takes"),
        ({"n": [{"numeric": ["!=", 1]}]}, "attribute 'n': 'numeric' needs an operator"),
        ({"c": [{"regex": ".*"}]}, "attribute 'c': unknown operator 'regex'"),
        ({"c": [["nested"]]}, "attribute 'c'"),
        ({"c": [True]}, "attribute 'c'"),
    ],
)
def test_invalid_policies_name_the_attribute(policy: Any, named: str) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        validate_filter_policy(policy)
    assert named in caught.value.message
