from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.expr import Env, ExpressionError, Unknown, compile_expression


def ev(src: str, params: object = None, **context: object) -> bool:
    return compile_expression(src).evaluate(Env(context, params or {}))


@pytest.mark.parametrize(
    ("src", "params", "context", "expected"),
    [
        ("amount > 100000", {"amount": 100001}, {}, True),
        ("amount > 100000", {"amount": 100000}, {}, False),
        ("confidence < 0.7", {}, {"confidence": 0.5}, True),
        ('currency == "usd" and amount >= 100', {"currency": "usd", "amount": 100}, {}, True),
        ('currency == "usd" and amount >= 100', {"currency": "eur", "amount": 500}, {}, False),
        ("hour >= 22 or hour < 6", {}, {"hour": 23}, True),
        ("hour >= 22 or hour < 6", {}, {"hour": 12}, False),
        ('tenant in ["acme", "globex"]', {}, {"tenant": "globex"}, True),
        ('tenant not in ("acme",)', {}, {"tenant": "globex"}, True),
        ('not (metadata.tier == "gold")', {"metadata": {"tier": "gold"}}, {}, False),
        ("0 < amount <= 10", {"amount": 10}, {}, True),
        ("amount > -5", {"amount": 0}, {}, True),
        ("params.tenant == 1", {"tenant": 1}, {"tenant": "acme"}, True),
    ],
)
def test_evaluates(src: str, params: dict, context: dict, expected: bool) -> None:
    assert ev(src, params, **context) is expected


def test_missing_name_is_unknown_so_callers_fail_closed() -> None:
    with pytest.raises(Unknown, match="amount is missing"):
        ev("amount > 5", {})
    with pytest.raises(Unknown):
        ev("confidence < 0.7")
    with pytest.raises(Unknown):
        ev("not (amount > 5)", {"amount": None})


def test_lowercase_true_is_a_name_not_a_constant() -> None:
    with pytest.raises(Unknown):
        ev("flag == true", {"flag": True})


def test_short_circuit_decides_without_missing_names() -> None:
    assert ev('currency == "usd" and amount > 5', {"currency": "eur"}) is False
    assert ev("amount > 5 or confidence < 0.7", {"amount": 10}) is True


def test_cross_type_comparisons_are_unknown() -> None:
    with pytest.raises(Unknown):
        ev("amount > 5", {"amount": "100"})
    with pytest.raises(Unknown):
        ev("flag == 1", {"flag": True})
    with pytest.raises(Unknown):
        ev("amount", {"amount": 3})  # not a boolean


@pytest.mark.parametrize(
    "src",
    [
        "__import__('os').system('id')",
        "open('/etc/passwd')",
        "amount.__class__",
        "x._private == 1",
        "(lambda: 1)()",
        "items[0] == 1",
        "amount + 1 > 2",
        "[x for x in y]",
        "a if b else c",
        "amount is None",
        "{'a': 1}",
        "f'{amount}'",
        "amount > 1; import os",
        "",
        "not " * 40 + "x",
        "a == 1 or " * 200 + "b == 2",
    ],
)
def test_rejects_unsafe_or_unsupported(src: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(src)


@given(st.integers(), st.integers())
def test_matches_python_comparison(a: int, b: int) -> None:
    assert ev("a < b", {"a": a, "b": b}) is (a < b)
    assert ev("not (a == b) or a == b", {"a": a, "b": b}) is True
