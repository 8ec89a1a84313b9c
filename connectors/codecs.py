"""Decoding and re-encoding action parameters: JSON bodies, Stripe-style forms, query strings.

Stripe sends nested parameters as form keys (`metadata[account]=1`, `items[0][price]=p`,
`expand[]=customer`); they are decoded into the same nested shape a JSON body has, so policies and
DLP address both with one path syntax. Every limit here exists because a hostile agent will send
the pathological case: a depth bomb, a 10^6-digit number, 10^5 form keys.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any
from urllib.parse import parse_qsl, urlencode

from connectors.model import BodyEncoding
from gateway.errors import Refusal

MAX_FIELDS = 1000
MAX_DEPTH = 32
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


def decode(encoding: BodyEncoding, body: bytes, query: str) -> dict[str, Any]:
    """The action's parameters as a nested dict; refuses with `malformed_body` on anything odd."""
    if encoding is BodyEncoding.QUERY:
        if body:
            raise Refusal("malformed_body", "this action takes its parameters in the query string, not a body")
        return decode_form(query)
    if query:
        raise Refusal("malformed_body", "this action takes its parameters in the body, not the query string")
    if encoding is BodyEncoding.FORM:
        try:
            text = body.decode("utf-8-sig")  # a leading BOM is read past, as json.loads did
        except UnicodeDecodeError:
            raise Refusal("malformed_body", "the form body is not UTF-8") from None
        return decode_form(text)
    return decode_json(body)


def decode_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        # RFC 8259 §8.1: UTF-8 only. json.loads would read UTF-16 and UTF-32 bytes too, which then
        # leave as sent, for a vendor that reads them otherwise or not at all.
        text = body.decode("utf-8-sig")  # a leading BOM is read past, as json.loads did
    except UnicodeDecodeError:
        raise Refusal("malformed_body", "the JSON body is not UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_unambiguous_object, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise Refusal("malformed_body", f"the JSON body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        # JSONDecodeError and int-too-long; the message names a position, never the content.
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "a number is too long"
        raise Refusal("malformed_body", f"the body is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise Refusal("malformed_body", "the JSON body must be an object")
    if _depth(data) > MAX_DEPTH:
        raise Refusal("malformed_body", f"the JSON body nests deeper than {MAX_DEPTH} levels")
    if _lone_surrogate(body, data):
        raise Refusal("malformed_body", "the JSON body holds a lone surrogate (\\ud800-\\udfff), which is no character")
    return data


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(body: bytes, data: dict[str, Any]) -> bool:
    """Whether a string holds half a surrogate pair (`"\\ud800"`): it decodes to a str that cannot
    be written as UTF-8, so DLP, the re-encoded body, the vault or the audit record would fail on it
    as a 500 further on (a valid pair is one character). The body is strict UTF-8 by now (no raw
    surrogate bytes), so only a body with a surrogate escape is written out again to find one."""
    if _SURROGATE_ESCAPE.search(body) is None:
        return False
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON: every comparison with them is false, so a policy's `max`
    would pass them, and the approval digest cannot be written for them."""
    raise Refusal("malformed_body", f"the body is not valid JSON: {name} is not a number")


def _finite(text: str) -> float:
    """A number past a double's range (`1e999`) reads as Infinity, with Infinity's faults, and no
    JSON answer can carry it back (a 500 where the API echoes it): refused as Infinity is."""
    value = float(text)
    if math.isinf(value):
        raise Refusal("malformed_body", "the body is not valid JSON: a number is beyond the range of a double")
    return value


def _unambiguous_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different, also after NFKC and case folding.

    Duplicate keys are a parser differential: Python keeps the last, other parsers the first, so
    the policy would judge one `amount` and the vendor act on another. Keys equal after NFKC
    (`ｍodel` and `model`) or case folding are refused for the same reason: one normalising
    hop between here and the vendor turns them into duplicates.
    """
    if repeats_a_key(pairs):
        raise Refusal("malformed_body", "a JSON object has the same key twice (or a look-alike of it)")
    return dict(pairs)


def repeats_a_key(pairs: list[tuple[str, Any]]) -> bool:
    """Whether two keys are equal after NFKC and case folding (the MCP door's reader asks too)."""
    seen: set[str] = set()
    for key, _ in pairs:
        norm = key if key.isascii() and key.islower() else unicodedata.normalize("NFKC", key).casefold()
        if norm in seen:
            return True
        seen.add(norm)
    return False


def refuse_repeated_envelope_key(body: bytes) -> None:
    """`malformed_body` when the body's outermost JSON object repeats a key (or a look-alike).

    For an API envelope whose inner values another reader takes as they are (a sandbox tool's
    `input` goes to the tool as pydantic read it): the envelope's own fields must mean one thing,
    what they hold is not this reader's to judge. Call it on a body already read as one JSON object."""
    outermost: list[list[tuple[str, Any]]] = []

    def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        outermost[:] = [pairs]  # objects close innermost first: the outermost is called last
        return {}

    try:
        json.loads(body, object_pairs_hook=keep)
    except (ValueError, RecursionError):
        raise Refusal("malformed_body", "the body is not valid JSON") from None
    if outermost and repeats_a_key(outermost[0]):
        raise Refusal("malformed_body", "the JSON body has the same key twice (or a look-alike of it)")


def _depth(value: Any) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def decode_form(text: str) -> dict[str, Any]:
    """`a[b][c]=1&l[]=x&l[]=y&i[0][p]=q` -> {"a": {"b": {"c": "1"}}, "l": ["x", "y"], "i": [{"p": "q"}]}."""
    if not text:
        return {}
    if ";" in text:
        # Python reads a raw `;` as text (since 3.9.2), Rack 2 and other servers as a separator
        # like `&`: `description=x;amount=900000` would be judged one parameter and read as two.
        raise Refusal("malformed_body", "a raw ';' separates parameters for some servers; percent-encode it as %3B")
    try:
        # errors="strict": `%FF` decoded to U+FFFD here, hiding `jane.doe%FF@example.com` from DLP,
        # and left raw for a vendor that may drop the invalid byte.
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise Refusal("malformed_body", "a percent-encoded parameter is not UTF-8") from None
    except ValueError as e:
        too_many = "Max number of fields" in str(e)
        reason = f"more than {MAX_FIELDS} fields" if too_many else "not valid form encoding"
        raise Refusal("malformed_body", f"the parameters are {reason}") from None
    root: dict[str, Any] = {}
    for key, value in pairs:
        m = _KEY.match(key)
        if not m:
            raise Refusal("malformed_body", "a parameter name is malformed")
        parts = [m.group(1), *_PART.findall(m.group(2))]
        if len(parts) > MAX_DEPTH:
            raise Refusal("malformed_body", f"a parameter nests deeper than {MAX_DEPTH} levels")
        _insert(root, parts, value)
    return _listify(root)


def _insert(node: dict[str, Any], parts: list[str], value: str) -> None:
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if part == "":
            raise Refusal("malformed_body", "a parameter has [] before its last part")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise Refusal("malformed_body", "a parameter is given both as a value and with nested keys")
        node = child
        if nxt == "" and i + 1 == len(parts) - 1:
            node.setdefault("", []).append(value)
            return
    last = parts[-1]
    if last in node:
        raise Refusal("malformed_body", "a parameter is given twice")
    node[last] = value


def _listify(node: Any) -> Any:
    """Dicts built from `[]` or `[0]..[n]` keys become lists."""
    if not isinstance(node, dict):
        return node
    if set(node) == {""}:
        return [_listify(v) for v in node[""]]
    if node and all(k.isdigit() for k in node):
        indices = sorted(int(k) for k in node)
        if indices == list(range(len(indices))):
            return [_listify(node[str(i)]) for i in indices]
    if "" in node:
        raise Refusal("malformed_body", "a parameter mixes [] with named keys")
    return {k: _listify(v) for k, v in node.items()}


def encode(encoding: BodyEncoding, params: dict[str, Any]) -> bytes:
    """Re-encode (after DLP replaced values) in the encoding the action uses."""
    if encoding is BodyEncoding.JSON:
        return json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
    return encode_form(params).encode()


def encode_form(params: dict[str, Any]) -> str:
    pairs: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}[{k}]", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            pairs.append((prefix, "true" if value is True else "false" if value is False else str(value)))

    for k, v in params.items():
        walk(k, v)
    return urlencode(pairs)
