"""JSON-RPC 2.0 as MCP's Streamable HTTP carries it: read a client's POST body, write it back out,
and answer a refused request.

The body is parsed strictly (duplicate keys, a wrong `jsonrpc`, an id that is neither a string nor
an integer, an empty or oversized batch are all refused as malformed) and what is forwarded is
re-encoded from the parsed messages, never the agent's bytes: the server reads exactly what the
gateway checked, so no parser difference between the two can hide a tool call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from connectors.codecs import repeats_a_key
from gateway.errors import Refusal

JSONRPC = "2.0"
TOOLS_CALL = "tools/call"
TOOLS_LIST = "tools/list"
# The JSON-RPC error code of a refusal (an implementation-defined server error, -32000..-32099).
REFUSED = -32003
INTERNAL = -32603
MAX_BATCH = 64  # elements of one batch: each tools/call in it is one decision
# Methods a client sends that need no tool decision; anything else a client asks is refused.
PROTOCOL_METHODS = frozenset({"initialize", "ping", TOOLS_LIST, "logging/setLevel"})

# Where a tools/call presents an approved approval inside the message (as `X-Egress-Approval` does
# outside it): `params._meta["egress/approval"]`. Read by the gateway, never forwarded.
APPROVAL_META = "egress/approval"

RequestId = str | int
_PROGRESS_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def is_notification(method: str) -> bool:
    """A client's notification (initialized, cancelled, progress, roots/list_changed): MCP names
    them all under `notifications/`; any other method without an id is a request in disguise."""
    return method.startswith("notifications/")


class Malformed(ValueError):
    """Not a JSON-RPC message the gateway can check; the message never quotes the body."""


@dataclass(frozen=True)
class Message:
    """One JSON-RPC message: a request (method and id), a notification (method, no id), or a
    response (id and result or error)."""

    raw: dict[str, Any]

    @property
    def method(self) -> str | None:
        method = self.raw.get("method")
        return method if isinstance(method, str) else None

    @property
    def id(self) -> RequestId | None:
        ident = self.raw.get("id")
        return ident if isinstance(ident, (str, int)) else None

    @property
    def is_request(self) -> bool:
        return self.method is not None and "id" in self.raw

    @property
    def is_tool_call(self) -> bool:
        return self.is_request and self.method == TOOLS_CALL

    def tool_call(self) -> tuple[str, dict[str, Any]]:
        """(tool name, arguments) of a tools/call request."""
        params = self.raw.get("params")
        if not isinstance(params, dict) or not isinstance(params.get("name"), str):
            raise Malformed("a tools/call needs params.name, a string")
        arguments = params.get("arguments", {})
        if not isinstance(arguments, dict):
            raise Malformed("a tools/call's params.arguments must be an object")
        return params["name"], arguments

    def approval(self) -> str | None:
        """The approval id a tools/call presents in `params._meta` (`APPROVAL_META`), if any."""
        meta = self.raw["params"].get("_meta")
        presented = meta.get(APPROVAL_META) if isinstance(meta, dict) else None
        if presented is not None and not isinstance(presented, str):
            raise Malformed(f'params._meta["{APPROVAL_META}"] must be an approval id, a string')
        return presented

    def as_forwarded(self, arguments: dict[str, Any]) -> Message:
        """This tools/call as it goes on: the tool, the (tokenized) arguments, and of `_meta` only
        a progress token of an id's form; any other field of its params was judged by nothing
        and scanned by nothing, so it does not leave."""
        params: dict[str, Any] = {"name": self.raw["params"]["name"], "arguments": arguments}
        meta = self.raw["params"].get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if (isinstance(token, int) and not isinstance(token, bool)) or (isinstance(token, str) and _PROGRESS_TOKEN.fullmatch(token)):
            params["_meta"] = {"progressToken": token}
        return Message({**self.raw, "params": params})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Keys all different, also after NFKC and case folding, as the REST codec requires
    (`connectors.codecs`): a policy reads `amount` while a server that normalises keys would act
    on `ａmount` or `Amount`."""
    if repeats_a_key(pairs):
        raise Malformed("a JSON object repeats a key (or a look-alike of it)")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise Malformed(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Malformed("a number is too large")
    return value


def parse(body: bytes) -> tuple[list[Message], bool]:
    """The messages of a client's POST body, and whether they came as a batch.

    NaN, Infinity and a number beyond a float (`1e400`) are refused: every comparison with NaN is
    false and the judged copy of the arguments holds null for them, so a policy's `max` or an
    approval condition would pass them while the server receives them as sent."""
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite)
    except Malformed:
        raise
    except RecursionError:
        raise Malformed("the body nests too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Malformed("the body is not JSON") from None
    except ValueError:  # Python's limit on an integer's digits (4300)
        raise Malformed("a number is too long") from None
    batch = isinstance(data, list)
    items = data if batch else [data]
    if not items or len(items) > MAX_BATCH:
        raise Malformed(f"a batch holds 1 to {MAX_BATCH} messages")
    messages = [_message(item) for item in items]
    ids = [m.id for m in messages if m.is_request]
    if len(ids) != len(set(map(repr, ids))):
        raise Malformed("two requests of the batch share an id")
    return messages, batch


def _message(item: Any) -> Message:
    if not isinstance(item, dict) or item.get("jsonrpc") != JSONRPC:
        raise Malformed('every message must be an object with "jsonrpc": "2.0"')
    if "id" in item and (not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool)):
        raise Malformed("an id must be a string or an integer")
    if "method" in item:
        if not isinstance(item["method"], str):
            raise Malformed("a method must be a string")
        if "params" in item and not isinstance(item["params"], dict):
            raise Malformed("params must be an object")
        return Message(item)
    if "id" not in item or ("result" in item) == ("error" in item):
        raise Malformed("a response needs an id and exactly one of result and error")
    return Message(item)


def encode(messages: list[Message], batch: bool) -> bytes:
    body: Any = [m.raw for m in messages] if batch else messages[0].raw
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def refusal_answer(request_id: RequestId | None, refusal: Refusal, decision_id: str) -> dict[str, Any]:
    """The JSON-RPC error answering a refused request: the MCP SDKs raise it with `message`, so
    the model reads why; `data` carries the gateway's code and decision id (and an approval id)."""
    data: dict[str, Any] = {"code": refusal.code, "decision_id": decision_id, **refusal.details}
    message = refusal.message
    if refusal.code == "approval_required" and isinstance(approval := refusal.details.get("approval_id"), str):
        # The model reads this: where the id goes once a person has approved the call.
        message += f'; once it is approved, call the tool again with the same arguments and params._meta {{"{APPROVAL_META}": "{approval}"}}'
    return {"jsonrpc": JSONRPC, "id": request_id, "error": {"code": REFUSED, "message": message, "data": data}}


def error_answer(request_id: RequestId | None, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": request_id, "error": {"code": code, "message": message}}


def answers_body(answers: list[dict[str, Any]], batch: bool) -> bytes:
    """What the gateway answers itself when no message of a POST goes on to the server."""
    return json.dumps(answers if batch else answers[0], ensure_ascii=False, separators=(",", ":")).encode()


def arguments_digest(arguments: dict[str, Any], key: bytes) -> str:
    """What the audit records of a call's arguments: a keyed hash of their canonical JSON. Equal
    arguments give equal digests, so records can be joined; without the key, a guessed value (an
    e-mail address, a card number) cannot be checked against it, as a plain hash could be."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "hmac-sha256:" + hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()[:32]
