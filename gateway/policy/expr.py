"""A small, safe expression language for policy `approval:` conditions.

    amount > 100000
    confidence < 0.7
    currency == "usd" and amount >= 100
    hour >= 22 or hour < 6
    tenant in ["acme", "globex"]
    not (metadata.tier == "gold")

The text is parsed with Python's `ast` and only a whitelist of node kinds is accepted: `and`/`or`,
`not`, comparisons (`== != < <= > >= in`, `not in`), dotted names, constants (strings, numbers,
booleans, `None`), negative numbers and lists/tuples of constants. Anything else (calls,
subscripts, arithmetic, lambdas, comprehensions, names starting with `_`) is rejected when the
policy loads. Nothing is ever passed to `eval`: a checked tree is compiled once into plain Python
closures.

Names resolve through an `Env` built per request: the context names in `CONTEXT_NAMES` (time of
day, tenant, role, confidence from `X-Agent-Confidence`, ...) and every other name as a dotted path
into the request parameters; `params.x` always means the parameter, even when `x` is also a
context name.

Fail closed: if a name the evaluation reaches is missing (or JSON null), or two values cannot be
compared (a string against a number), evaluation raises `Unknown`. The policy engine treats an
approval condition it cannot decide as *true*, i.e. a missing field requires approval rather than
skipping it. `and`/`or` short-circuit as in Python, so `currency == "usd" and amount > 5` is simply
false for a euro payment even when `amount` is absent.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connectors import fieldpath
from gateway.errors import ConfigError

MAX_LENGTH = 1000  # characters; conditions are one-liners written by people
MAX_DEPTH = 32  # nesting of the syntax tree

# Names that come from the request context rather than its parameters.
CONTEXT_NAMES: dict[str, str] = {
    "hour": "hour of day 0-23 in the policy's timezone",
    "minute": "minute 0-59",
    "weekday": "day of week, 0 = Monday .. 6 = Sunday",
    "tenant": "the agent's tenant",
    "role": "the agent's role",
    "sub": "the agent's subject (id)",
    "confidence": "the agent's X-Agent-Confidence header as a number",
    "connector": "the connector name",
    "action": "the action name",
}


class ExpressionError(ConfigError):
    """The text is not a valid, safe expression; raised at load time."""


class Unknown(Exception):
    """The expression cannot be decided for this request (missing name, incomparable values)."""


@dataclass(frozen=True)
class Env:
    """What names resolve to: context values and the request's decoded parameters."""

    context: Mapping[str, Any]
    params: Any

    def lookup(self, name: str) -> Any:
        head, _, rest = name.partition(".")
        if head == "params" and rest:
            return _param(self.params, rest, name)
        if head in CONTEXT_NAMES:
            if rest:
                raise Unknown(f"{head} has no field {rest!r}")
            value = self.context.get(head)
            if value is None:
                raise Unknown(f"{name} is not known for this request")
            return value
        return _param(self.params, name, name)


def _param(params: Any, path: str, name: str) -> Any:
    matches = fieldpath.select(params, path)
    if not matches or matches[0].value is None:
        raise Unknown(f"field {name} is missing")
    if len(matches) > 1:
        raise Unknown(f"field {name} selects several values")
    return matches[0].value


Node = Callable[[Env], Any]


@dataclass(frozen=True)
class Expression:
    """A compiled condition: `source` for messages, `names` for validation, `evaluate` per request."""

    source: str
    names: frozenset[str]
    _root: Node

    def evaluate(self, env: Env) -> bool:
        """True or false; raises `Unknown` when the request lacks what the condition needs."""
        value = self._root(env)
        if not isinstance(value, bool):
            raise Unknown(f"condition {self.source!r} is not true or false")
        return value


def compile_expression(source: str) -> Expression:
    """Parse, check against the whitelist and compile; raises `ExpressionError`."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("empty expression")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"syntax error in expression: {e.msg}") from None
    names: set[str] = set()
    root = _compile(tree.body, names, 0)
    return Expression(source, frozenset(names), root)


_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: _contains(b, a),
    ast.NotIn: lambda a, b: not _contains(b, a),
}


def _compile(node: ast.AST, names: set[str], depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise ExpressionError("expression nested too deeply")
    d = depth + 1
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, names, d) for v in node.values]
        return _and(parts) if isinstance(node.op, ast.And) else _or(parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, names, d)
        return lambda env: not _truth(inner(env))
    if isinstance(node, ast.Compare):
        return _compare(node, names, d)
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted(node)
        names.add(name)
        return lambda env: env.lookup(name)
    if isinstance(node, (ast.Constant, ast.UnaryOp, ast.List, ast.Tuple)):
        value = _literal(node)
        return lambda env: value
    raise ExpressionError(f"{type(node).__name__} is not allowed in a policy expression")


def _and(parts: list[Node]) -> Node:
    def run(env: Env) -> bool:
        return all(_truth(p(env)) for p in parts)

    return run


def _or(parts: list[Node]) -> Node:
    def run(env: Env) -> bool:
        return any(_truth(p(env)) for p in parts)

    return run


def _compare(node: ast.Compare, names: set[str], depth: int) -> Node:
    left = _compile(node.left, names, depth)
    ops = []
    for op, right in zip(node.ops, node.comparators):
        fn = _COMPARE.get(type(op))
        if fn is None:
            raise ExpressionError(f"operator {type(op).__name__} is not allowed")
        ops.append((fn, _compile(right, names, depth)))

    def run(env: Env) -> bool:
        a = left(env)
        for fn, right_node in ops:
            b = right_node(env)
            _check_comparable(a, b, fn)
            try:
                ok = fn(a, b)
            except TypeError:
                raise Unknown("values cannot be compared") from None
            if not ok:
                return False
            a = b
        return True

    return run


def _dotted(node: ast.AST) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise ExpressionError("only dotted names may be used, not calls or subscripts")
    parts.append(node.id)
    for p in parts:
        if p.startswith("_"):
            raise ExpressionError(f"name {p!r} is not allowed (leading underscore)")
    return ".".join(reversed(parts))


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and (
        node.value is None or isinstance(node.value, (str, int, float, bool))
    ):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        number = node.operand.value
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            return -number
    if isinstance(node, (ast.List, ast.Tuple)):
        return tuple(_literal(e) for e in node.elts)
    raise ExpressionError(f"{type(node).__name__} is not allowed in a policy expression")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _truth(v: Any) -> bool:
    if not isinstance(v, bool):
        raise Unknown("a condition part is not true or false")
    return v


def _check_comparable(a: Any, b: Any, fn: Callable[[Any, Any], bool]) -> None:
    """Refuse silent cross-type comparisons ("100" == 100 is false, True == 1 is true in Python)."""
    if fn in (_COMPARE[ast.In], _COMPARE[ast.NotIn]):
        if not isinstance(b, (tuple, list, str)):
            raise Unknown("right side of `in` is not a list or string")
        return
    if _is_number(a) and _is_number(b):
        return
    if type(a) is not type(b) and a is not None and b is not None:
        raise Unknown("values of different types cannot be compared")


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        if not isinstance(item, str):
            raise Unknown("only a string can be looked for in a string")
        return item in container
    return any(same_value(item, c) for c in container)


def same_value(a: Any, b: Any) -> bool:
    """Equality without Python's cross-type surprises (True == 1, 1 == 1.0 is kept for numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b
