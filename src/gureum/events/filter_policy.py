"""SNS subscription filter policies on message attributes (pure: no I/O).

A policy maps attribute names to lists of conditions; a message matches when every named
attribute matches at least one of its conditions. Conditions, as SNS writes them:

    "red"                         the attribute's string value is exactly "red"
    42                            its numeric value equals 42
    {"exists": true|false}        the attribute is present / absent
    {"prefix": "eu-"}             its string value starts with "eu-"
    {"anything-but": [..]}        present and none of these values
    {"numeric": [">", 0, "<=", 100]}   its numeric value is in the range

A bare value stands for a one-item list. Attributes are `{"Type": "String"|"Number"|
"String.Array", "Value": "..."}`, as SNS messages carry them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gureum.errors import InvalidParameterValue

NUMERIC_OPERATORS = ("=", "<", "<=", ">", ">=")
MAX_CONDITIONS = 150  # SNS's limit on the values of one policy


def _error(key: str, reason: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"invalid filter policy: attribute {key!r}: {reason}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_filter_policy(policy: object) -> dict[str, list[Any]]:
    """The policy with every bare condition wrapped in a list; InvalidParameterValue naming
    the attribute whose condition is malformed."""
    if not isinstance(policy, dict) or not policy:
        raise InvalidParameterValue("invalid filter policy: it must be a non-empty JSON object")
    normalised: dict[str, list[Any]] = {}
    count = 0
    for key, conditions in policy.items():
        items = conditions if isinstance(conditions, list) else [conditions]
        if not items:
            raise _error(key, "needs at least one condition")
        for condition in items:
            _validate_condition(key, condition)
        count += len(items)
        normalised[key] = items
    if count > MAX_CONDITIONS:
        raise InvalidParameterValue(f"invalid filter policy: more than {MAX_CONDITIONS} values")
    return normalised


def _validate_condition(key: str, condition: object) -> None:
    if isinstance(condition, str) or _is_number(condition):
        return
    if not isinstance(condition, dict) or len(condition) != 1:
        raise _error(key, f"{json.dumps(condition)} is not a string, number or one operator")
    operator, operand = next(iter(condition.items()))
    if operator == "exists":
        if not isinstance(operand, bool):
            raise _error(key, "'exists' takes true or false")
    elif operator == "prefix":
        if not isinstance(operand, str) or not operand:
            raise _error(key, "'prefix' takes a non-empty string")
    elif operator == "anything-but":
        values = operand if isinstance(operand, list) else [operand]
        if not values or not all(isinstance(v, str) or _is_number(v) for v in values):
            raise _error(key, "'anything-but' takes strings or numbers")
    elif operator == "numeric":
        _numeric_pairs(key, operand)
    else:
        raise _error(key, f"unknown operator {operator!r}")


def _numeric_pairs(key: str, operand: object) -> list[tuple[str, float]]:
    if not isinstance(operand, list) or len(operand) not in (2, 4):
        raise _error(key, "'numeric' takes [op, number] or [op, number, op, number]")
    pairs = []
    for index in range(0, len(operand), 2):
        op, number = operand[index], operand[index + 1]
        if op not in NUMERIC_OPERATORS or not _is_number(number):
            raise _error(key, f"'numeric' needs an operator of {NUMERIC_OPERATORS} and a number")
        pairs.append((str(op), float(number)))
    return pairs


def _values(attribute: dict[str, str]) -> list[str]:
    if attribute.get("Type") == "String.Array":
        try:
            items = json.loads(attribute["Value"])
        except ValueError:
            return []
        return [str(item) for item in items] if isinstance(items, list) else []
    return [attribute["Value"]]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _equals(condition: str | float, value: str) -> bool:
    if isinstance(condition, str):
        return condition == value
    number = _number(value)
    return number is not None and number == float(condition)


def _compare(op: str, value: float, bound: float) -> bool:
    return {
        "=": value == bound,
        "<": value < bound,
        "<=": value <= bound,
        ">": value > bound,
        ">=": value >= bound,
    }[op]


def _matches_condition(condition: Any, attribute: dict[str, str] | None) -> bool:
    if isinstance(condition, dict) and "exists" in condition:
        return (attribute is not None) is bool(condition["exists"])
    if attribute is None:
        return False
    values = _values(attribute)
    if not isinstance(condition, dict):
        return any(_equals(condition, v) for v in values)
    operator, operand = next(iter(condition.items()))
    if operator == "prefix":
        return any(v.startswith(operand) for v in values)
    if operator == "anything-but":
        excluded = operand if isinstance(operand, list) else [operand]
        return bool(values) and not any(_equals(e, v) for e in excluded for v in values)
    pairs = _numeric_pairs("", operand)
    for value in values:
        number = _number(value)
        if number is not None and all(_compare(op, number, bound) for op, bound in pairs):
            return True
    return False


def matches(policy: dict[str, list[Any]] | None, attributes: dict[str, dict[str, str]]) -> bool:
    """Does a message with `attributes` pass `policy` (None passes everything)?"""
    if not policy:
        return True
    return all(
        any(_matches_condition(condition, attributes.get(key)) for condition in conditions)
        for key, conditions in policy.items()
    )
