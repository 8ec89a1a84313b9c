"""A tool call's arguments checked against the input schema the gateway pinned for the tool, before
any policy reads them.

The schema is the MCP server's, so it is hostile input: compiling and applying it is bounded.
- a schema larger than `MAX_SCHEMA_BYTES` or nested deeper than `MAX_SCHEMA_DEPTH`, one that is not
  a valid JSON Schema of a known dialect, or one with a `$ref` outside itself is not compiled (the
  tool is refused: fail closed); references resolve inside the schema only, never on the network;
- regular expressions (`pattern`, `patternProperties`) run on a linear-time engine (Rust's `regex`,
  through pydantic-core), never Python's backtracking `re`; a pattern that engine cannot compile
  (look-around, back-references) refuses the tool; `format` is not checked;
- one call's check may apply at most `MAX_STEPS` keywords (a reference costs `REF_COST`, a regex
  match of a property name one, `allOf`/`anyOf`/`oneOf` one per branch, `items` and its kin one per
  element, `additionalProperties`/`propertyNames`/`unevaluatedProperties` one per key of the object, `enum`/`required`/`properties` one per `SIZED_PER_STEP` entries, a `uniqueItems` the square of its array's length unless it holds only strings or only numbers); a schema whose `$ref`s multiply the work, or deep arguments under a recursive
  schema, are refused rather than checked at any cost.
A compiled schema is kept by the pin's digest (`SchemaCache`), so a schema is compiled once per
process, not per call. What a refusal says names the keyword and the schema's own property names,
never an argument's value or a key the agent chose (either may be PII).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import referencing
import referencing.exceptions
from jsonschema import Draft4Validator, Draft6Validator, Draft7Validator, Draft201909Validator, Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend
from pydantic_core import SchemaError as PatternError
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

MAX_SCHEMA_BYTES = 64 * 1024  # of the schema's canonical JSON
MAX_SCHEMA_DEPTH = 32  # objects and arrays inside one another
MAX_STEPS = 10_000  # keyword applications in one call's check (a reference costs `REF_COST`)
REF_COST = 10  # resolving a reference costs about ten keywords' time
MAX_CACHED = 1024  # compiled schemas kept per process
DIALECTS: dict[str, type[Validator]] = {
    cls.META_SCHEMA["$schema"].rstrip("#"): cls
    for cls in (Draft4Validator, Draft6Validator, Draft7Validator, Draft201909Validator, Draft202012Validator)
}
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
_BRANCHES = frozenset({"allOf", "anyOf", "oneOf"})  # a step per subschema
_ELEMENTS = frozenset({"items", "prefixItems", "additionalItems", "contains", "unevaluatedItems"})  # a step per element
_SIZED = frozenset({"enum", "required", "properties", "dependentRequired", "dependentSchemas", "dependencies"})
_KEYED = frozenset({"additionalProperties", "propertyNames", "unevaluatedProperties"})  # a step per key of the object
SIZED_PER_STEP = 10  # entries of a `_SIZED` keyword's value compared or looked up in one step's time
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})  # values, not schemas: not walked
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_budget: ContextVar[list[int]] = ContextVar("mcp_schema_budget")


class SchemaRefused(ValueError):
    """The server's schema cannot be checked; the message says why without quoting it."""


class ArgumentsInvalid(ValueError):
    """The arguments do not fit the schema; the message names no argument value."""


class _OverBudget(Exception):
    pass


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> SchemaValidator:
    """A pattern on the linear-time engine; `is_match` semantics (found anywhere), as JSON Schema's."""
    return SchemaValidator(cs.str_schema(pattern=pattern, regex_engine="rust-regex"))


def _matches(pattern: str, text: str) -> bool:
    """One match, one step of the running check: `patternProperties` and `additionalProperties`
    match every pattern against every key within one keyword application."""
    _charge(1)
    return _regex(pattern).isinstance_python(text)


def _charge(steps: int) -> None:
    left = _budget.get()
    left[0] -= steps
    if left[0] < 0:
        raise _OverBudget


def _pattern(validator: Validator, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _matches(pattern, instance):
        yield ValidationError("does not match the pattern")


def _pattern_properties(validator: Validator, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _matches(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Validator, allowed: Any, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    declared, patterns = schema.get("properties", {}), list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in declared and not any(_matches(p, k) for p in patterns)]
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        yield ValidationError(f"{len(extras)} propert{'y' if len(extras) == 1 else 'ies'} the tool does not declare")


_OWN_KEYWORDS: dict[str, Callable[..., Iterator[ValidationError]]] = {
    "pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties,
}


def _counted(keyword: str, run: Callable[..., Any]) -> Callable[..., Any]:
    """A keyword that charges the running check's budget before it applies."""

    def cost(value: Any, instance: Any) -> int:
        if keyword == "uniqueItems" and isinstance(instance, list):
            # jsonschema sorts strings or numbers (n log n); anything else is compared pairwise.
            kinds = {str if isinstance(i, str) else float if isinstance(i, (int, float)) and not isinstance(i, bool) else None for i in instance}
            return len(instance) if len(kinds) <= 1 and None not in kinds else len(instance) ** 2
        # A subschema without keywords (`{}`) charges nothing itself, yet descending into it costs
        # a keyword's time: the keyword pays for each branch or element it descends into.
        if keyword in _BRANCHES and isinstance(value, list):
            return 1 + len(value)
        if keyword in _ELEMENTS and isinstance(instance, list):
            return 1 + len(instance)
        if keyword in _KEYED and isinstance(instance, dict):
            return 1 + len(instance)
        if keyword in _SIZED and isinstance(value, (list, dict)):
            return 1 + len(value) // SIZED_PER_STEP
        return REF_COST if keyword in _REF_KEYWORDS else 1

    def counted(validator: Validator, value: Any, instance: Any, schema: dict[str, Any]) -> Any:
        _charge(cost(value, instance))
        return run(validator, value, instance, schema)

    return counted


def _bounded(dialect: type[Validator]) -> type[Validator]:
    """The dialect's validator with linear-time regexes and every keyword counted."""
    keywords = {**dialect.VALIDATORS, **{k: v for k, v in _OWN_KEYWORDS.items() if k in dialect.VALIDATORS}}
    return extend(dialect, {name: _counted(name, run) for name, run in keywords.items()})


_BOUNDED = {dialect: _bounded(dialect) for dialect in DIALECTS.values()}


@dataclass(frozen=True)
class ArgumentsSchema:
    """A compiled input schema: `check(arguments)` raises `ArgumentsInvalid` or `SchemaRefused`."""

    validator: Validator
    names: frozenset[str]  # the schema's own property names, which a message may show

    def check(self, arguments: dict[str, Any]) -> None:
        token = _budget.set([MAX_STEPS])
        try:
            error = next(iter(self.validator.iter_errors(arguments)), None)
        except _OverBudget:
            raise SchemaRefused(f"checking these arguments against the tool's input schema exceeds {MAX_STEPS} steps") from None
        except RecursionError:
            raise ArgumentsInvalid("the arguments nest too deeply, or the tool's input schema refers to itself without end") from None
        except referencing.exceptions.Unresolvable:
            raise SchemaRefused("the tool's input schema refers to a definition it does not contain") from None
        finally:
            _budget.reset(token)
        if error is not None:
            raise ArgumentsInvalid(self._describe(error))

    def _describe(self, error: ValidationError) -> str:
        where = "arguments" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" if p in self.names else ".…" for p in error.absolute_path
        )
        keyword, value = str(error.validator), error.validator_value
        if keyword == "required" and isinstance(value, list) and isinstance(error.instance, dict):
            missing = [n for n in value if isinstance(n, str) and n not in error.instance and n in self.names]
            return f"{where} lacks the required propert{'y' if len(missing) == 1 else 'ies'} {', '.join(missing) or '(unnamed)'}"
        if keyword == "additionalProperties" and value is False:
            return f"{where} has {error.message}"
        if keyword == "type":
            types = [t for t in (value if isinstance(value, list) else [value]) if t in _TYPES]
            return f"{where} must be of type {' or '.join(types)}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{where} fails the input schema's {keyword} ({value})"
        return f"{where} fails the input schema's {keyword}"


def compile_schema(schema: Any) -> ArgumentsSchema:
    """Compile a tool's input schema within the bounds of the module docstring."""
    if not isinstance(schema, dict):
        raise SchemaRefused("the tool's input schema is not a JSON object")
    if len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_SCHEMA_BYTES:
        raise SchemaRefused(f"the tool's input schema exceeds {MAX_SCHEMA_BYTES} bytes")
    names = _walk(schema)
    dialect_uri = schema.get("$schema", Draft202012Validator.META_SCHEMA["$schema"])
    dialect = DIALECTS.get(dialect_uri.rstrip("#")) if isinstance(dialect_uri, str) else None
    if dialect is None:
        raise SchemaRefused("the tool's input schema names a JSON Schema dialect the gateway does not know")
    try:
        dialect.check_schema(schema)
    except SchemaError:
        raise SchemaRefused("the tool's input schema is not a valid JSON Schema") from None
    # An empty registry: references resolve inside the schema (and to the dialects' own
    # metaschemas, which jsonschema ships), never by retrieving a URI.
    return ArgumentsSchema(_BOUNDED[dialect](schema, registry=referencing.Registry()), names)


def _walk(schema: dict[str, Any]) -> frozenset[str]:
    """Check depth, references and patterns everywhere in the schema; its property names."""
    names: set[str] = set()
    unevaluated = patterned = False
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaRefused(f"the tool's input schema nests deeper than {MAX_SCHEMA_DEPTH}")
        if isinstance(node, list):
            stack += [(item, depth + 1) for item in node]
            continue
        if not isinstance(node, dict):
            continue
        for keyword in _REF_KEYWORDS:
            ref = node.get(keyword)
            if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
                raise SchemaRefused("the tool's input schema refers outside itself ($ref to another document)")
        for pattern in [node.get("pattern")] * isinstance(node.get("pattern"), str) + list(_keys(node, "patternProperties")):
            try:
                _regex(pattern)
            except PatternError:
                raise SchemaRefused("a pattern of the tool's input schema cannot be checked in linear time") from None
        names.update(k for k in _keys(node, "properties") if len(k) <= 64)
        unevaluated |= "unevaluatedProperties" in node
        patterned |= "patternProperties" in node
        stack += [(v, depth + 1) for k, v in node.items() if k not in _DATA_KEYWORDS]
    if unevaluated and patterned:
        raise SchemaRefused("the tool's input schema combines unevaluatedProperties with patternProperties")
    return frozenset(names)


def _keys(node: dict[str, Any], keyword: str) -> list[str]:
    value = node.get(keyword)
    return [k for k in value if isinstance(k, str)] if isinstance(value, dict) else []


class SchemaCache:
    """Compiled input schemas by the digest of the definition they were pinned with (a refused
    schema too, so a hostile one is not compiled again per call); the oldest leave first."""

    def __init__(self, size: int = MAX_CACHED) -> None:
        self._size = size
        self._compiled: OrderedDict[str, ArgumentsSchema | SchemaRefused] = OrderedDict()

    def __contains__(self, digest: str) -> bool:
        return digest in self._compiled

    def forget(self, digest: str) -> None:
        self._compiled.pop(digest, None)

    def get(self, digest: str, schema: Callable[[], str | None]) -> ArgumentsSchema | None:
        """The compiled schema of `digest`; `schema()` gives its JSON text the first time (None: not
        known yet, nothing cached, None returned). Raises `SchemaRefused` for one that cannot be
        compiled."""
        found = self._compiled.get(digest)
        if found is None:
            text = schema()
            if text is None:
                return None
            try:
                found = compile_schema(json.loads(text))
            except SchemaRefused as e:
                found = e
            except (ValueError, RecursionError):
                found = SchemaRefused("the tool's input schema is not JSON")
            self._compiled[digest] = found
            if len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(digest)
        if isinstance(found, SchemaRefused):
            raise found
        return found
