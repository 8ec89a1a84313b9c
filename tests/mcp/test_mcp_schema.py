"""A tool call's arguments against the input schema the gateway pinned, without I/O: generated
arguments judged as jsonschema judges them, messages that never quote a value, and hostile schemas
(remote references, backtracking patterns, reference bombs, self-reference) refused or bounded."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.mcp.schema import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    ArgumentsInvalid,
    SchemaCache,
    SchemaRefused,
    compile_schema,
)

TRANSFER = {
    "type": "object",
    "properties": {
        "amount": {"type": "integer", "minimum": 1, "maximum": 100000},
        "currency": {"enum": ["usd", "eur"]},
        "memo": {"type": "string", "maxLength": 64},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "maxItems": 5},
        "meta": {"type": "object", "properties": {"ref": {"type": "string"}}, "required": ["ref"]},
    },
    "required": ["amount", "currency"],
    "additionalProperties": False,
}
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_names = st.sampled_from(["amount", "currency", "memo", "tags", "meta", "jane.doe@example.com", "x"])
_arguments = st.dictionaries(_names, _json, max_size=6) | st.fixed_dictionaries(
    {"amount": st.integers(-5, 200000), "currency": st.sampled_from(["usd", "eur", "gbp"])},
    optional={"memo": st.text(max_size=80), "tags": st.lists(st.sampled_from(["a", "b", "c"]), max_size=6)},
)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_arguments)
def test_generated_arguments_are_judged_as_jsonschema_judges_them_and_never_quoted(arguments: dict[str, Any]) -> None:
    schema = compile_schema(TRANSFER)
    expected = Draft202012Validator(TRANSFER).is_valid(arguments)
    try:
        schema.check(arguments)
    except ArgumentsInvalid as e:
        assert not expected
        message = str(e)
        assert message.startswith("arguments")
        schema_text = json.dumps(TRANSFER)
        for s in _strings(arguments):  # an agent's string never comes back, unless the schema says it
            if len(s) >= 3 and s not in schema_text:
                assert s not in message
    else:
        assert expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"amount": "100", "currency": "usd"}, "arguments.amount must be of type integer"),
        ({"currency": "usd"}, "arguments lacks the required property amount"),
        ({}, "arguments lacks the required properties amount, currency"),
        ({"amount": 0, "currency": "usd"}, "arguments.amount fails the input schema's minimum (1)"),
        ({"amount": 100001, "currency": "usd"}, "arguments.amount fails the input schema's maximum (100000)"),
        ({"amount": 5, "currency": "jpy"}, "arguments.currency fails the input schema's enum"),
        ({"amount": 5, "currency": "usd", "jane.doe@example.com": 1}, "arguments has 1 property the tool does not declare"),
        ({"amount": 5, "currency": "usd", "tags": ["a", "a"]}, "arguments.tags fails the input schema's uniqueItems"),
        ({"amount": 5, "currency": "usd", "tags": ["a", 7]}, "arguments.tags[1] must be of type string"),
        ({"amount": 5, "currency": "usd", "meta": {}}, "arguments.meta lacks the required property ref"),
        ({"amount": 5, "currency": "usd", "memo": "x" * 65}, "arguments.memo fails the input schema's maxLength (64)"),
    ],
)
def test_each_kind_of_violation_is_named_without_its_value(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ArgumentsInvalid) as e:
        compile_schema(TRANSFER).check(arguments)
    assert str(e.value) == message


def test_a_key_the_agent_chose_is_never_named_in_a_path() -> None:
    schema = compile_schema({"type": "object", "additionalProperties": {"type": "integer"}})
    with pytest.raises(ArgumentsInvalid) as e:
        schema.check({"jane.doe@example.com": "x"})
    assert str(e.value) == "arguments.… must be of type integer"


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"type": "object", "properties": {"q": {"$ref": "https://evil.example/s.json"}}}, "refers outside itself"),
        ({"$ref": "other.json#/x"}, "refers outside itself"),
        ({"properties": {"q": {"$dynamicRef": "http://127.0.0.1:9/x"}}}, "refers outside itself"),
        ({"properties": {"q": {"type": "string", "pattern": "(?<=a)b"}}}, "cannot be checked in linear time"),
        ({"patternProperties": {"(a)\\1": {}}}, "cannot be checked in linear time"),
        ({"properties": {"q": {"type": "wat"}}}, "not a valid JSON Schema"),
        ({"$schema": "https://evil.example/dialect"}, "dialect the gateway does not know"),
        ({"properties": {f"p{i}": {"description": "x" * 100} for i in range(MAX_SCHEMA_BYTES // 100)}}, f"exceeds {MAX_SCHEMA_BYTES} bytes"),
        ([{"type": "object"}], "is not a JSON object"),
        ({"unevaluatedProperties": False, "patternProperties": {"^a": {}}}, "combines unevaluatedProperties"),
    ],
)
def test_a_hostile_schema_is_refused_at_compile(schema: Any, why: str) -> None:
    with pytest.raises(SchemaRefused, match=why):
        compile_schema(schema)


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        node = {"properties": {"n": node}}
    return node


def test_a_schema_nested_past_the_bound_is_refused_and_one_within_it_compiles() -> None:
    compile_schema(_nested(MAX_SCHEMA_DEPTH // 2 - 1))
    with pytest.raises(SchemaRefused, match=f"nests deeper than {MAX_SCHEMA_DEPTH}"):
        compile_schema(_nested(MAX_SCHEMA_DEPTH))


def test_a_backtracking_pattern_runs_in_linear_time() -> None:
    """`^(a+)+$` against 'aaaa…!' takes exponential time in Python's re; here it is one linear scan."""
    schema = compile_schema({"type": "object", "properties": {"memo": {"type": "string", "pattern": "^(a+)+$"}}})
    schema.check({"memo": "a" * 100})
    with pytest.raises(ArgumentsInvalid, match=r"^arguments\.memo fails the input schema's pattern$"):
        schema.check({"memo": "a" * 200_000 + "!"})


def test_pattern_properties_use_the_linear_engine_too() -> None:
    schema = compile_schema({"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}, "additionalProperties": False})
    schema.check({"aaa": 1})
    with pytest.raises(ArgumentsInvalid, match="arguments has 1 property the tool does not declare"):
        schema.check({"a" * 50_000 + "!": 1})
    with pytest.raises(ArgumentsInvalid, match=r"must be of type integer"):
        schema.check({"aaaa": "x"})


def test_a_reference_bomb_and_a_quadratic_uniqueness_check_stop_at_the_step_bound() -> None:
    defs: dict[str, Any] = {f"a{i}": {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}] * 10} for i in range(10)}
    defs["a10"] = {"type": "object"}
    bomb = compile_schema({"$defs": defs, "$ref": "#/$defs/a0"})  # 10^10 applications if unbounded
    with pytest.raises(SchemaRefused, match="exceeds 10000 steps"):
        bomb.check({})
    unique = compile_schema({"type": "object", "properties": {"l": {"type": "array", "uniqueItems": True}}})
    unique.check({"l": [{"i": i} for i in range(50)]})
    unique.check({"l": [f"id-{i}" for i in range(5000)]})  # strings are sorted, not compared pairwise
    with pytest.raises(SchemaRefused, match="exceeds 10000 steps"):
        unique.check({"l": [{"i": i} for i in range(200)]})


def test_every_pattern_match_of_property_names_is_a_step() -> None:
    """`patternProperties` and `additionalProperties` match every pattern against every key in one
    keyword application: 5,000 patterns (a 64 KB schema) over 200 keys (2 KB of arguments) were a
    million regex matches, half a minute on the event loop, charged one step each keyword."""
    patterns: dict[str, Any] = {f"^p{i}$": {} for i in range(100)}
    keys = {f"k{i}": 1 for i in range(200)}  # 100 x 200 = 20,000 matches, twice the step bound
    for schema in ({"type": "object", "patternProperties": patterns},
                   {"type": "object", "patternProperties": {"^x$": {}}, "additionalProperties": {"$ref": "#/$defs/p"},
                    "$defs": {"p": {"type": "object", "patternProperties": patterns}}},
                   {"type": "object", "patternProperties": patterns, "additionalProperties": True}):
        compiled = compile_schema(schema)
        nested = "$defs" in schema
        few = {f"k{i}": 1 for i in range(10)}  # 1,000 matches: within the bound
        compiled.check({"k": few} if nested else few)
        with pytest.raises(SchemaRefused, match="exceeds 10000 steps"):
            compiled.check({"k": keys} if nested else keys)


def test_every_branch_of_an_applicator_is_a_step_even_an_empty_one() -> None:
    """A subschema without keywords (`{}`) charges nothing, yet each branch jsonschema descends into
    costs a keyword's time: `allOf` of 10,000 `{}` (a 30 KB schema) over 1,000 items (2 KB of
    arguments) was 49 s on the event loop for 2,000 steps. Below: 400,000 branches; and `items: {}`
    charged nothing per element."""
    branches = compile_schema({"type": "object", "properties": {"l": {"type": "array", "items": {"allOf": [{}] * 2000}}}})
    with pytest.raises(SchemaRefused, match="exceeds 10000 steps"):
        branches.check({"l": [0] * 200})
    few = compile_schema({"type": "object", "properties": {"l": {"type": "array", "items": {"allOf": [{}] * 10}}}})
    few.check({"l": [0] * 200})
    elements = compile_schema({"type": "object", "properties": {"l": {"type": "array", "items": {}}}})
    elements.check({"l": [0] * 5000})
    with pytest.raises(SchemaRefused, match="exceeds 10000 steps"):
        elements.check({"l": [0] * 400_000})  # 800 KB of arguments: 2.3 s, uncharged


def test_a_keyword_whose_work_grows_with_its_value_is_charged_for_it() -> None:
    """`enum`, `required` and `properties` each cost one step per application, yet jsonschema's
    work in each is the length of the keyword's value: an enum of 8,000 names (a 64 KB schema)
    over 3,000 items (27 KB of arguments) was 24 million comparisons, seconds on the event loop,
    for 6,000 steps. Each is 10,000,000 comparisons below, a thousand times the step bound."""
    names = [f"v{i}" for i in range(5000)]
    enum = compile_schema({"type": "object", "properties": {"l": {"type": "array", "items": {"enum": names}}}})
    enum.check({"l": ["v4999"] * 5})
    required = compile_schema({"type": "object", "properties": {"l": {"type": "array", "items": {"required": names}}}})
    declared = compile_schema({"type": "object", "properties": {"l": {"type": "array", "items": {"properties": {name: {} for name in names}}}}})
    for schema, arguments in ((enum, {"l": ["v4999"] * 2000}), (required, {"l": [dict.fromkeys(names, 0)] * 2000}),
                              (declared, {"l": [{}] * 2000})):
        with pytest.raises(SchemaRefused, match="exceeds 10000 steps"):
            schema.check(arguments)


def test_a_keyword_that_walks_an_objects_keys_is_charged_per_key() -> None:
    """`additionalProperties: {}` descends into every undeclared key, into a subschema with no
    keywords that charges nothing itself: an argument object of 100,000 keys (1 MB, within the
    body limit) was ~0.65 s of the event loop for one step. Now one step per key."""
    for keyword, subschema in (("additionalProperties", {}), ("propertyNames", {}), ("unevaluatedProperties", {})):
        schema = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}}, keyword: subschema})
        schema.check({"a": 1, **{f"k{i}": i for i in range(500)}})  # an ordinary object still passes
        with pytest.raises(SchemaRefused, match="exceeds 10000 steps"):
            schema.check({f"k{i}": i for i in range(20_000)})


def test_self_reference_and_deep_arguments_are_refused_not_crashed() -> None:
    loop = compile_schema({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})
    with pytest.raises((ArgumentsInvalid, SchemaRefused)):
        loop.check({})
    recursive = compile_schema({"type": "object", "properties": {"n": {"$ref": "#"}}})
    deep: dict[str, Any] = {}
    for _ in range(50):
        deep = {"n": deep}
    recursive.check(deep)
    for _ in range(2000):
        deep = {"n": deep}
    with pytest.raises((ArgumentsInvalid, SchemaRefused)):
        recursive.check(deep)
    missing = compile_schema({"properties": {"q": {"$ref": "#/$defs/nowhere"}}})
    with pytest.raises(SchemaRefused, match="does not contain"):
        missing.check({"q": 1})


def test_the_cache_compiles_once_keeps_refusals_and_forgets_the_oldest() -> None:
    cache = SchemaCache(size=2)
    reads: list[str] = []

    def reader(digest: str, schema: Any) -> Callable[[], str | None]:
        def read() -> str | None:
            reads.append(digest)
            return None if schema is None else json.dumps(schema)
        return read

    assert cache.get("sha256:unknown", reader("sha256:unknown", None)) is None
    assert "sha256:unknown" not in cache  # not known yet is not remembered: a later listing tells
    first = cache.get("sha256:a", reader("sha256:a", TRANSFER))
    assert cache.get("sha256:a", reader("sha256:a", TRANSFER)) is first
    for _ in range(2):
        with pytest.raises(SchemaRefused, match="refers outside itself"):
            cache.get("sha256:bad", reader("sha256:bad", {"$ref": "https://evil.example/"}))
    assert reads == ["sha256:unknown", "sha256:a", "sha256:bad"]
    cache.get("sha256:c", reader("sha256:c", {}))  # the oldest, sha256:a, leaves
    assert "sha256:a" not in cache and "sha256:bad" in cache and "sha256:c" in cache
    with pytest.raises(SchemaRefused, match="not JSON"):
        cache.get("sha256:garbled", lambda: '{"type": ')
