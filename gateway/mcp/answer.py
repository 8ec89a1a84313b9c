"""The server's answer to one MCP request, edited on its way to the agent, as JSON or as SSE.

Each JSON-RPC message the server sends is judged on its own:
- the answer to a `tools/list` request: cut to the tools the caller may call (`keep`), then
  `listed` is told the page was judged (what one listing costs is reported once, not per tool);
- the answer to a forwarded `tools/call`: tokens restored in its text content and structured
  content, for the types the caller may see (`restore`);
- a request of the server's own (sampling, elicitation, roots): passed only if `server_request`
  allows it, else dropped (the glue answers the server with a refusal);
- the answer to another request this POST carried (initialize, ping, ...): passes as sent;
- an answer to a request it did not carry is dropped: the client matches answers by id, so a
  hostile server's `tools/list` answer on another stream (a tools/call's, the session's GET) would
  otherwise be taken unfiltered;
- anything else (notifications, errors) passes as sent.
Refusals of a batch's elements that never went to the server are added to the answer.

An SSE answer is edited event by event as it streams: an event is held only until its blank line
arrives, and one event larger than `max_event` is dropped whole, never passed unread.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.mcp import jsonrpc
from gateway.mcp.tools import TooManyTools, filter_list

log = logging.getLogger(__name__)

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff".encode()
UNANSWERED = "the MCP server did not answer this request"
_PASSED_FIELDS = frozenset({b"", b"id", b"event", b"retry"})  # b"": a comment line (":...")


@dataclass
class AnswerEditor:
    """How the answer to one forwarded MCP request is edited (see the module docstring)."""

    lists: set[jsonrpc.RequestId] = field(default_factory=set)
    calls: set[jsonrpc.RequestId] = field(default_factory=set)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    batch: bool = False
    keep: Callable[[dict[str, Any]], bool] = lambda tool: False
    listed: Callable[[], None] = lambda: None
    restore: Callable[[Any], Any] = lambda value: value
    server_request: Callable[[dict[str, Any]], bool] = lambda message: False
    max_event: int = 8 * 2**20
    others: set[jsonrpc.RequestId] = field(default_factory=set)  # the POST's other forwarded requests

    def message(self, msg: Any) -> Any | None:
        """One message of the server's, edited; None drops it."""
        if not isinstance(msg, dict):
            return None
        if isinstance(msg.get("method"), str):
            if "id" in msg and not self.server_request(msg):
                return None
            return msg
        if "result" not in msg:
            return msg
        ident = msg.get("id")
        if isinstance(ident, bool) or not isinstance(ident, (str, int)):
            # No request carries such an id, yet a JavaScript client reads 9.0 (or 9e0) as 9: a
            # list answered so would reach it unfiltered.
            return None
        if ident in self.lists:
            try:
                shown = filter_list(msg["result"], self.keep)
                self.listed()
                return {**msg, "result": shown}
            except TooManyTools as e:
                log.warning("an MCP server's tool list was refused: %s", e)
                return jsonrpc.error_answer(ident, jsonrpc.INTERNAL, str(e))
            except Exception as e:  # noqa: BLE001 - out of the hook, mitmproxy would pass the list unfiltered
                log.error("an MCP server's tool list could not be checked (%s); answered with an error", type(e).__name__)
                return jsonrpc.error_answer(ident, jsonrpc.INTERNAL, "the MCP server's tool list could not be checked")
        if ident in self.calls:
            return {**msg, "result": self._restored(msg["result"])}
        return msg if ident in self.others else None

    def _restored(self, result: Any) -> Any:
        if not isinstance(result, dict):
            return result
        out = dict(result)
        if isinstance(out.get("content"), list):
            out["content"] = [
                {**item, "text": self.restore(item["text"])}
                if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)
                else item
                for item in out["content"]
            ]
        if "structuredContent" in out:
            out["structuredContent"] = self.restore(out["structuredContent"])
        return out

    def body(self, data: bytes) -> bytes:
        """A JSON answer (or the empty body of a 202) edited, with the refusals added. A batch's
        lone forwarded message went on as a single message (servers need not take batches), so
        its answer is put back in a batch. A JSON answer is the whole answer: a forwarded request
        it leaves unanswered (no answer, or one dropped above) gets an error, or the client would
        wait for it until its own timeout."""
        if not data.strip():
            answers = self._unanswered(set()) + self.refusals
            return jsonrpc.answers_body(answers, self.batch or len(answers) > 1) if answers else data
        try:
            parsed = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return self._unreadable()
        edited = [m for m in map(self.message, parsed if isinstance(parsed, list) else [parsed]) if m is not None]
        edited += self._unanswered({m.get("id") for m in edited if ("result" in m or "error" in m) and _an_id(m.get("id"))})
        if self.batch or isinstance(parsed, list) or len(edited) > 1:
            return _dump(edited + self.refusals)
        return _dump(edited[0]) if edited else b""

    def _unanswered(self, answered: set[Any]) -> list[dict[str, Any]]:
        """An error for each forwarded request no message of the answer answers."""
        forwarded = self.lists | self.calls | self.others
        return [
            jsonrpc.error_answer(i, jsonrpc.INTERNAL, UNANSWERED)
            for i in sorted(forwarded - answered, key=repr)
        ]

    def _unreadable(self) -> bytes:
        """An answer that is not JSON: what was asked of it cannot be checked, so each request the
        gateway must edit the answer of is answered with an error instead."""
        errors = [
            jsonrpc.error_answer(i, jsonrpc.INTERNAL, "the MCP server's answer could not be read")
            for i in sorted(self.lists | self.calls, key=repr)
        ]
        answers = errors + self.refusals
        if not answers:
            return b""
        return _dump(answers) if self.batch or len(answers) > 1 else _dump(answers[0])

    def stream(self) -> Callable[[bytes], bytes]:
        """mitmproxy's stream function for an SSE answer: each chunk in, complete edited events out."""
        held = b""
        pending = [_event(r) for r in self.refusals]

        def modify(chunk: bytes) -> bytes:
            nonlocal held, pending
            out, pending = b"".join(pending), []
            held += chunk
            while (end := _EVENT_END.search(held)) is not None:
                raw, held = held[: end.start()], held[end.end() :]
                out += self._event(raw)
            if len(held) > self.max_event:
                log.warning("an MCP server's event exceeds %d bytes; dropped", self.max_event)
                held = b""
            if not chunk:
                held = b""  # the stream ended inside an event: a half event is no message
            return out

        return modify

    def _event(self, raw: bytes) -> bytes:
        # A client strips a byte order mark that opens the stream (the SSE spec): unstripped
        # here, "\ufeffdata: ..." would pass as an event without data, unread.
        lines = _LINE.split(raw.removeprefix(_BOM))
        # Only the fields that mean something pass as sent (comments, ids, event names, retry
        # hints): a server that labels a JSON body `application/json; x=text/event-stream` is
        # edited here as a stream, yet a client that reads the media type's start (the Python
        # SDK) parses it as JSON, so a line not understood here must never reach it.
        kept = [line for line in lines if line.partition(b":")[0] in _PASSED_FIELDS]
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return b"\n".join(kept) + b"\n\n" if kept else b""
        try:
            msg = self.message(json.loads(b"\n".join(data)))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return b""
        if msg is None:
            return b""
        return b"\n".join([*kept, b"data: " + _dump(msg)]) + b"\n\n"


def _event(msg: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + _dump(msg) + b"\n\n"


def _an_id(value: Any) -> bool:
    """Whether `value` can be a forwarded request's id (`true` would equal 1 in a set)."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
