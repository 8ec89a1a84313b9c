"""Dotted paths into a decoded request body: `metadata.account`, `messages[*].content`, `metadata.*`.

Connectors name their DLP fields with these paths and policies name their parameter rules with
them, so both read a body the same way. The syntax is deliberately small:

- `a.b`      key `b` of the object at key `a`
- `a[*]`     every item of the list at `a`;  `a[2]` the third item
- `a.*`      every value of the object at `a`
- a path that does not exist selects nothing (the caller decides whether absence is an error)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.errors import ConfigError

Key = str | int
WILDCARD = "*"
# Where path parameters (`{id}` of `/v1/payment_intents/{id}`) sit next to the body's fields when a
# policy judges a call: `_path.id`. No model field can start with `_`, so the two never clash.
PATH_PARAMS = "_path"

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\*|\d+)\]|(\.)")


class PathSyntaxError(ConfigError):
    """A path that does not follow the syntax above."""


@dataclass(frozen=True)
class Match:
    """One selected value and the concrete keys that lead to it from the root."""

    keys: tuple[Key, ...]
    value: Any

    @property
    def path(self) -> str:
        return format_keys(self.keys)


@lru_cache(maxsize=1024)
def parse(path: str) -> tuple[Key, ...]:
    """Split a path into keys; `*` stands for every key or item. Cached: paths come from config."""
    if not path or path.startswith(".") or path.endswith(".") or ".." in path:
        raise PathSyntaxError(f"bad field path {path!r}")
    keys: list[Key] = []
    pos = 0
    while pos < len(path):
        m = _SEGMENT.match(path, pos)
        if m is None:
            raise PathSyntaxError(f"bad field path {path!r} at offset {pos}")
        name, index, _dot = m.groups()
        if name is not None:
            keys.append(name)
        elif index is not None:
            keys.append(WILDCARD if index == "*" else int(index))
        pos = m.end()
    return tuple(keys)


def select(data: Any, path: str) -> list[Match]:
    """Every value at `path` in `data`, with the concrete keys leading to it."""
    found: list[Match] = []
    _walk(data, parse(path), (), found)
    return found


def _walk(node: Any, keys: tuple[Key, ...], trail: tuple[Key, ...], found: list[Match]) -> None:
    if not keys:
        found.append(Match(trail, node))
        return
    head, rest = keys[0], keys[1:]
    if head == WILDCARD:
        if isinstance(node, dict):
            for k, v in node.items():
                _walk(v, rest, trail + (k,), found)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                _walk(v, rest, trail + (i,), found)
    elif isinstance(head, int):
        if isinstance(node, list) and 0 <= head < len(node):
            _walk(node[head], rest, trail + (head,), found)
    elif isinstance(node, dict) and head in node:
        _walk(node[head], rest, trail + (head,), found)


def assign(data: Any, keys: tuple[Key, ...], value: Any) -> None:
    """Replace the value at concrete `keys` (as returned in a `Match`) in place."""
    if not keys:
        raise ValueError("cannot assign to the root")
    node = data
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def is_name(key: str) -> bool:
    """Whether a key reads as a plain name (and so as itself in a path, a message or a record)."""
    return _NAME.fullmatch(key) is not None


def format_keys(keys: tuple[Key, ...]) -> str:
    """Concrete keys back to a readable path, e.g. ('messages', 0, 'content') -> messages[0].content.

    The path ends up in refusal messages and audit records, and a key under `metadata.*` is the
    agent's own text (it can be an e-mail address): keys that do not look like names show as `?`.
    """
    out = ""
    for k in keys:
        if isinstance(k, int):
            out += f"[{k}]"
        else:
            name = k if is_name(k) else "?"
            out += f".{name}" if out else name
    return out
