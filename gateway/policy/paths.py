"""Whether a policy's field path names something an action's request can carry.

A parameter rule, a budget field or an approval name that names no field constrains nothing: a
misspelt `metadata.acount` or `messages[*].rol` would let every call through unchecked, which is
failing open. So the loader walks each path through the action's pydantic request model, the same
shape `connectors.fieldpath.select` walks at request time:

- a model's key must be one of its fields (by name or alias), unless the model allows extra keys;
- a list (or tuple) takes `[*]` or `[N]`; a key after a list without an index selects nothing;
- a free-form mapping (`metadata: dict[str, str]`) takes any key and `*`, since its keys are the
  agent's own;
- `Any` (and a plain `dict`) takes anything below it; a scalar takes nothing below it;
- a union is fine if any of its members takes the rest of the path.

`_path.NAME` names a path parameter of the action's template (`/v1/payment_intents/{id}`), which the
proxy puts next to the body's fields under `_path`.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from connectors import fieldpath
from connectors.model import Action

_SEQUENCES = (list, tuple, set, frozenset)


def unknown_path(action: Action, path: str, leaves: list[Any] | None = None) -> str | None:
    """Why `path` names nothing in `action`'s request, or None if it names a field; then the types
    the value there can have are added to `leaves`, if given (`Any` where anything goes)."""
    keys = fieldpath.parse(path)
    if keys[0] == fieldpath.PATH_PARAMS:
        names = action.pattern.groupindex
        if len(keys) == 2 and keys[1] in names:
            if leaves is not None:
                leaves.append(str)
            return None
        known = ", ".join(sorted(names)) or "none"
        return f"{fieldpath.PATH_PARAMS} takes one path parameter of {action.path} ({known})"
    if action.request is None:
        return f"{action.name} takes no parameters"
    return _walk(action.request, keys, "", leaves)


def never_a_number(action: Action, path: str) -> str | None:
    """What the value at `path` always is when it can never be a number (`a string`), else None.
    A budget sums numbers, so a budget field that is always a string refuses every call."""
    leaves: list[Any] = []
    if unknown_path(action, path, leaves) is not None or not leaves:
        return None
    if any(tp is Any or _KINDS.get(tp) == "a number" or _numeric_literal(tp) for tp in leaves):
        return None
    return " or ".join(dict.fromkeys(_type_name(tp) for tp in leaves))


def _numeric_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal and any(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in get_args(tp)
    )


def _walk(tp: Any, keys: tuple[fieldpath.Key, ...], where: str, leaves: list[Any] | None) -> str | None:
    members = _members(tp)
    if not keys:
        if leaves is not None:
            leaves.extend(members)
        return None
    if len(members) != 1:
        return _first_fit([_walk(m, keys, where, leaves) for m in members], f"{where} is always null")
    tp, head, rest = members[0], keys[0], keys[1:]
    if tp is Any:
        if leaves is not None:
            leaves.append(Any)
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _model_key(tp, head, rest, where, leaves)
    origin = get_origin(tp) or tp
    if origin in _SEQUENCES:
        if isinstance(head, str) and head != fieldpath.WILDCARD:
            return f"{where} is a list: use {where}[*].{head}"
        items = get_args(tp)
        return _walk(items[0] if items else Any, rest, f"{where}[{head}]", leaves)
    if origin is dict:
        if isinstance(head, int):
            return f"{where} is a mapping: use {where}.KEY, not an index"
        args = get_args(tp)
        return _walk(args[1] if len(args) == 2 else Any, rest, f"{where}.{head}", leaves)
    return f"{where} is {_type_name(tp)} and has no fields below it"


def _model_key(
    model: type[BaseModel], head: fieldpath.Key, rest: tuple[fieldpath.Key, ...], where: str, leaves: list[Any] | None
) -> str | None:
    """One key into a pydantic model: a field (by name or alias), `*` for any field, or extra."""
    if isinstance(head, int):
        return f"{where or 'the request'} is an object: use a field name, not an index"
    prefix = f"{where}." if where else ""
    if head == fieldpath.WILDCARD:
        reasons = [_walk(f.annotation, rest, prefix + name, leaves) for name, f in model.model_fields.items()]
        return _first_fit(reasons, f"{where or 'the request'} has no fields")
    for name, f in model.model_fields.items():
        if head in (name, f.alias, f.validation_alias):
            return _walk(f.annotation, rest, prefix + name, leaves)
    if model.model_config.get("extra") == "allow":
        if leaves is not None:
            leaves.append(Any)
        return None
    return f"no field {head!r}" + (f" in {where}" if where else "")


def _first_fit(reasons: list[str | None], none_at_all: str) -> str | None:
    """None if any alternative (a union member, a field under `*`) takes the path, else why not."""
    if any(r is None for r in reasons):
        return None
    return reasons[0] if reasons else none_at_all


def _members(tp: Any) -> list[Any]:
    """The non-None types a value of `tp` can be (unwrapping Optional, unions and Annotated)."""
    if get_origin(tp) is Annotated:
        return _members(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        return [m for arg in get_args(tp) for m in _members(arg)]
    if tp is None or tp is type(None):
        return []
    return [tp]


_KINDS = {int: "a number", float: "a number", str: "a string", bool: "a boolean"}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "a fixed value"
    return _KINDS.get(tp, f"a {getattr(tp, '__name__', tp)}")
