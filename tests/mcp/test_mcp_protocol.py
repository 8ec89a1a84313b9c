"""The sans-IO MCP parts on their own: JSON-RPC reading, tool-definition hashes, the answer editor
(JSON and SSE split anywhere), and the store of pins and sessions."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import Refusal
from gateway.mcp import jsonrpc
from gateway.mcp.answer import UNANSWERED, AnswerEditor
from gateway.mcp.store import SESSION_TTL, McpStore, Seen, awaits_admin
from gateway.mcp.tools import definition_digest, filter_list

TOOLS: list[dict[str, Any]] = [
    {"name": "create_refund", "description": "Refund.", "inputSchema": {"type": "object"}},
    {"name": "delete_customer", "description": "Delete.", "inputSchema": {"type": "object"}},
]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"jsonrpc":"1.0","id":1,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":true,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":null,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}',
        b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}',
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"ping"}]',
        json.dumps([{"jsonrpc": "2.0", "method": "notifications/x"}] * 65).encode(),
        b"[" * 100000,
        # Not numbers a policy can compare: NaN passes every `max`, and all of them judge as null.
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"amount":NaN}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"amount":Infinity}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"amount":-Infinity}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"amount":1e400}}}',
        b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}',  # over Python's 4300 digits: a ValueError
        # Look-alike keys: the policy reads `amount`, a server that normalises keys another one.
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"amount":1,"ａmount":9}}}'.encode(),
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"amount":1,"Amount":9}}}',
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"ss":1,"ß":9}}}'.encode(),
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","Name":"u"}}',
    ],
)
def test_what_cannot_be_checked_is_malformed(body: bytes) -> None:
    with pytest.raises(jsonrpc.Malformed):
        jsonrpc.parse(body)


def test_a_tools_call_is_read_and_its_arguments_replaced() -> None:
    (m,), batch = jsonrpc.parse(b'{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"t","arguments":{"x":1},"_meta":{"p":1}}}')
    assert not batch and m.is_tool_call and m.tool_call() == ("t", {"x": 1})
    assert json.loads(jsonrpc.encode([m.as_forwarded({"x": 2})], False))["params"] == {"name": "t", "arguments": {"x": 2}}
    (progress,), _ = jsonrpc.parse(b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t","_meta":{"progressToken":7,"x":"jane@example.com"},"task":{"a":1}}}')
    assert progress.as_forwarded({}).raw["params"] == {"name": "t", "arguments": {}, "_meta": {"progressToken": 7}}
    (bad,), _ = jsonrpc.parse(b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","arguments":"x"}}')
    with pytest.raises(jsonrpc.Malformed):
        bad.tool_call()


def test_a_refusal_answer_carries_the_id_code_and_decision_and_says_where_an_approval_goes() -> None:
    refusal = Refusal("approval_required", "needs approval", details={"approval_id": "apr_1"})
    hint = '; once it is approved, call the tool again with the same arguments and params._meta {"egress/approval": "apr_1"}'
    assert jsonrpc.refusal_answer(7, refusal, "dec_1") == {
        "jsonrpc": "2.0", "id": 7,
        "error": {"code": -32003, "message": "needs approval" + hint,
                  "data": {"code": "approval_required", "decision_id": "dec_1", "approval_id": "apr_1"}},
    }
    assert jsonrpc.refusal_answer(8, Refusal("policy_denied", "no"), "dec_2")["error"]["message"] == "no"


def test_an_approval_in_meta_is_read_and_never_forwarded() -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "t", "arguments": {}, "_meta": {"egress/approval": "apr_x", "progressToken": "p1"}}}
    (m,), _ = jsonrpc.parse(json.dumps(body).encode())
    assert m.approval() == "apr_x"
    assert m.as_forwarded({}).raw["params"] == {"name": "t", "arguments": {}, "_meta": {"progressToken": "p1"}}
    for meta in ({}, {"other/key": "apr_x"}, None):
        (plain,), _ = jsonrpc.parse(json.dumps({**body, "params": {"name": "t", "_meta": meta}}).encode())
        assert plain.approval() is None
    for wrong in (1, ["apr_x"], {"id": "apr_x"}):
        (bad,), _ = jsonrpc.parse(json.dumps({**body, "params": {"name": "t", "_meta": {"egress/approval": wrong}}}).encode())
        with pytest.raises(jsonrpc.Malformed, match="must be an approval id"):
            bad.approval()


def test_the_argument_digest_is_keyed_and_order_free() -> None:
    a = jsonrpc.arguments_digest({"a": 1, "b": "x"}, b"k1")
    assert a == jsonrpc.arguments_digest({"b": "x", "a": 1}, b"k1") != jsonrpc.arguments_digest({"a": 1, "b": "x"}, b"k2")


def test_a_definition_hash_covers_name_description_and_schema_only() -> None:
    tool = dict(TOOLS[0])
    assert definition_digest(tool) == definition_digest({**tool, "annotations": {"title": "x"}})
    assert definition_digest(tool) != definition_digest({**tool, "description": "Refund. Also e-mail everyone."})
    assert definition_digest(tool) != definition_digest({**tool, "inputSchema": {"type": "object", "properties": {"to": {}}}})
    assert definition_digest(tool).startswith("sha256:") and len(definition_digest(tool)) == 71


def test_a_paginated_list_is_cut_page_by_page() -> None:
    page = {"tools": TOOLS, "nextCursor": "c2"}
    assert filter_list(page, lambda t: t["name"] == "create_refund") == {"tools": [TOOLS[0]], "nextCursor": "c2"}
    assert filter_list({"tools": "everything"}, lambda t: True) == {"tools": []}


def _editor(**kw: Any) -> AnswerEditor:
    return AnswerEditor(
        lists={1}, calls={2}, keep=lambda t: t["name"] != "delete_customer", restore=lambda v: json.loads(json.dumps(v).replace("tok_X", "jane")),
        **kw,
    )


SERVER_EVENTS: list[dict[str, Any]] = [
    {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}},
    {"jsonrpc": "2.0", "id": 99, "method": "sampling/createMessage", "params": {}},
    {"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}},
    {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "hi tok_X"}], "structuredContent": {"to": "tok_X"}}},
]


def _stream(events: list[dict[str, Any]], sep: bytes = b"\r\n") -> bytes:
    return b"".join(b"event: message" + sep + b"data: " + json.dumps(e).encode() + sep + sep for e in events)


def _expected() -> list[dict[str, Any]]:
    return [
        SERVER_EVENTS[0],
        {"jsonrpc": "2.0", "id": 1, "result": {"tools": [TOOLS[0]]}},
        {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "hi jane"}], "structuredContent": {"to": "jane"}}},
    ]


def _messages(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]


@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=12), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_an_sse_answer_is_edited_event_by_event_wherever_the_chunks_split(cuts: list[int], sep: bytes) -> None:
    refused: list[dict[str, Any]] = []

    def server_request(msg: dict[str, Any]) -> bool:
        refused.append(msg)
        return False

    data = _stream(SERVER_EVENTS, sep)
    modify = _editor(server_request=server_request).stream()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    out = b"".join(modify(data[a:b]) for a, b in itertools.pairwise(points)) + modify(b"")
    assert _messages(out) == _expected()
    assert [m["id"] for m in refused] == [99]


def test_batch_refusals_come_first_in_a_stream_and_last_in_a_json_batch() -> None:
    refusal = jsonrpc.error_answer(3, -32003, "no")
    stream = _editor(refusals=[refusal], batch=True).stream()
    assert _messages(stream(b"")) == [refusal]
    assert json.loads(_editor(refusals=[refusal], batch=True).body(json.dumps(SERVER_EVENTS[3]).encode()))[-1] == refusal
    assert json.loads(AnswerEditor(refusals=[refusal], batch=True).body(b"")) == [refusal]  # a 202 becomes the answer
    unanswered = [jsonrpc.error_answer(i, jsonrpc.INTERNAL, UNANSWERED) for i in (1, 2)]
    assert json.loads(_editor(refusals=[refusal], batch=True).body(b"")) == [*unanswered, refusal]  # and answers what went on


def test_an_unreadable_answer_to_a_list_is_an_error_never_the_unfiltered_list() -> None:
    out = json.loads(_editor().body(b'{"jsonrpc":"2.0","id":1,"result":{"tools":[' + json.dumps(TOOLS[1]).encode()))
    assert [(m["id"], m["error"]["code"]) for m in out] == [(1, -32603), (2, -32603)]


def test_an_oversized_event_is_dropped_whole() -> None:
    big = {"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS, "pad": "x" * 5000}}
    modify = _editor(max_event=1000).stream()
    data = _stream([big])
    out = b"".join(modify(data[i : i + 700]) for i in range(0, len(data), 700)) + modify(b"")
    assert b"delete_customer" not in out and _messages(out) == []


def test_an_answer_to_a_request_this_one_did_not_carry_never_passes_unedited() -> None:
    """A hostile server answers a `tools/list` the client has outstanding on another stream: on a
    POST that carried only a tools/call (id 2), or on the session's GET stream (which carries no
    request: resumption with Last-Event-ID, or a server ignoring the spec's MUST NOT). The client
    matches answers by id, so an unfiltered list there shows the tools the policy hides and a
    definition changed since its pin (a rug-pull's poisoned description) as if the gateway had
    passed them. Only an answer to a request this POST carried may pass."""
    foreign = {"jsonrpc": "2.0", "id": 7, "result": {"tools": TOOLS}}
    for editor, unanswered in ((AnswerEditor(calls={2}, keep=lambda t: t["name"] != "delete_customer"), [2]), (AnswerEditor(), [])):
        out = editor.stream()(_stream([foreign, SERVER_EVENTS[0]])) + editor.stream()(b"")
        assert _messages(out) == [SERVER_EVENTS[0]]
        assert json.loads(editor.body(json.dumps([foreign, SERVER_EVENTS[0]]).encode())) == [SERVER_EVENTS[0]] + [
            jsonrpc.error_answer(i, jsonrpc.INTERNAL, UNANSWERED) for i in unanswered
        ]


def test_a_list_whose_filter_fails_is_an_error_never_the_unfiltered_list() -> None:
    """`keep` (the pin and policy check of each listed tool) can raise: a hostile server's lone
    surrogate (`"\\ud800"` in a description) fails `definition_digest`'s UTF-8 encoding, and a
    SQLite store that stays locked raises `sqlite3.OperationalError`, not `StoreUnavailable`.
    Raised out of the response hook, mitmproxy logs it and forwards the answer as the server sent
    it: every tool, hidden, changed or not."""
    poisoned = json.loads('{"name": "create_refund", "description": "\\ud800", "inputSchema": {"type": "object"}}')

    def keep(tool: dict[str, Any]) -> bool:
        return definition_digest(tool) != ""

    answer = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [poisoned, TOOLS[1]]}}).encode()
    out = json.loads(AnswerEditor(lists={1}, keep=keep).body(answer))
    assert out["id"] == 1 and "result" not in out and out["error"]["code"] == jsonrpc.INTERNAL
    streamed = AnswerEditor(lists={1}, keep=keep).stream()(_stream([json.loads(answer)]))
    assert b"delete_customer" not in streamed and [m["error"]["code"] for m in _messages(streamed)] == [jsonrpc.INTERNAL]


def test_pins_sessions_and_their_acceptance(tmp_path: Path) -> None:
    path = tmp_path / "mcp.sqlite"
    store = McpStore(path, {"s": {"pinned_tool": "sha256:" + "a" * 64}})
    assert store.observe("s", "t", "sha256:1", 10) is Seen.NEW
    assert store.observe("s", "t", "sha256:1", 10) is Seen.SAME
    assert store.observe("s", "t", "sha256:2", 10) is Seen.CHANGED
    assert store.observe("s", "t", "sha256:2", 10) is Seen.STILL_CHANGED and awaits_admin(store.state("s", "t"))
    assert store.accept("s", "nope") is None
    accepted = store.accept("s", "t")
    assert accepted is not None and (accepted.pinned, accepted.pending, accepted.source) == ("sha256:2", None, "admin")
    assert not awaits_admin(store.state("s", "t")) and awaits_admin(store.state("s", "never_listed"))
    assert store.observe("s", "pinned_tool", "sha256:" + "b" * 64, 10) is Seen.CHANGED  # the config's pin holds
    assert store.accept("s", "pinned_tool") is not None
    store.remember_schema("sha256:1", '{"type":"object"}')
    store.remember_schema("sha256:1", '{"type":"string"}')  # equal digests are equal definitions: the first stays
    assert store.schema("sha256:1") == '{"type":"object"}' and store.schema("sha256:2") is None
    store.close()
    again = McpStore(path, {"s": {"pinned_tool": "sha256:" + "a" * 64}})  # restart, same config: the acceptance stays
    state = again.state("s", "pinned_tool")
    assert state is not None and state.pinned == "sha256:" + "b" * 64
    assert again.schema("sha256:1") == '{"type":"object"}'
    assert again.bind_session("sid-1", "t/alice", "s") and again.bind_session("sid-1", "t/alice", "s")
    assert not again.bind_session("sid-1", "t/mallory", "s")
    assert again.session_agent("sid-1") == "t/alice" and again.session_agent("sid-2") is None
    assert all(b"sid-1" not in p.read_bytes() for p in tmp_path.iterdir())  # stored hashed, WAL included
    again.close()
    changed_config = McpStore(path, {"s": {"pinned_tool": "sha256:" + "c" * 64}})  # a new config value wins
    final = changed_config.state("s", "pinned_tool")
    assert final is not None and final.pinned == "sha256:" + "c" * 64
    changed_config.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "name", "arguments"]) | st.text(max_size=4), inner, max_size=5),
    max_leaves=20,
)


@given(JSON)
def test_any_body_is_read_or_refused_as_malformed_never_an_error(value: Any) -> None:
    try:
        messages, _ = jsonrpc.parse(json.dumps(value).encode())
    except jsonrpc.Malformed:
        return
    for m in messages:
        assert m.raw["jsonrpc"] == "2.0"
        if m.is_tool_call:
            try:
                name, arguments = m.tool_call()
            except jsonrpc.Malformed:
                continue
            assert isinstance(name, str) and isinstance(arguments, dict)


@given(JSON)
def test_any_server_answer_is_edited_without_error(value: Any) -> None:
    body = json.dumps(value).encode()
    _editor(server_request=lambda m: False).body(body)
    modify = _editor(server_request=lambda m: False).stream()
    modify(b"data: " + body + b"\n\n")
    modify(b"")


def test_session_owners_are_remembered_and_still_expire(tmp_path: Path) -> None:
    """A binding never changes owner, so a process answers from memory after the first round trip;
    another process on the same store learns it from the store, and an old binding still expires."""
    now = [1000.0]
    path = tmp_path / "mcp.sqlite"
    one, other = McpStore(path, clock=lambda: now[0]), McpStore(path, clock=lambda: now[0])
    assert one.bind_session("sid-1", "t/alice", "s")
    one.close()  # what it answers now comes from memory: a store access would fail on a closed database
    assert one.bind_session("sid-1", "t/alice", "s") and not one.bind_session("sid-1", "t/mallory", "s")
    assert one.session_agent("sid-1") == "t/alice"
    assert other.session_agent("sid-1") == "t/alice" and not other.bind_session("sid-1", "t/mallory", "s")
    now[0] += SESSION_TTL + 1
    assert other.session_agent("sid-1") is None  # expired in memory and in the store
    other.close()


def test_an_answer_whose_id_no_request_carries_never_passes_unedited() -> None:
    """A hostile server answers the tools/list of id 1 with id 1.0 (or 1e0, true, null): no request
    the gateway forwards has such an id, so none was matched, yet a JavaScript client (the
    TypeScript SDK's JSON.parse) reads 1.0 as 1 and takes the list as the answer to its request."""
    for ident in (b"1.0", b"1e0", b"true", b"null", b"[1]"):
        answer = b'{"jsonrpc":"2.0","id":' + ident + b',"result":{"tools":' + json.dumps(TOOLS).encode() + b"}}"
        unanswered = [jsonrpc.error_answer(i, jsonrpc.INTERNAL, UNANSWERED) for i in (1, 2)]
        assert json.loads(_editor().body(answer)) == unanswered
        assert json.loads(_editor().body(b"[" + answer + b"]")) == unanswered
        modify = _editor().stream()
        assert modify(b"event: message\ndata: " + answer + b"\n\n") + modify(b"") == b""


@given(st.integers(min_value=0, max_value=8))
def test_a_byte_order_mark_opening_a_stream_hides_no_event(cut: int) -> None:
    """Clients strip a UTF-8 BOM that opens an SSE stream (the spec says so), so the gateway must
    read the first event as they do, wherever the chunks split, not pass it as one without data."""
    data = b"\xef\xbb\xbfdata: " + json.dumps(SERVER_EVENTS[2]).encode() + b"\n\n"
    modify = _editor().stream()
    out = modify(data[:cut]) + modify(data[cut:]) + modify(b"")
    assert b"delete_customer" not in out and _messages(out) == [_expected()[1]]


def test_a_json_body_labelled_as_a_stream_passes_no_line_unread() -> None:
    """A hostile server answers a tools/list with the whole list as JSON, labelled
    `application/json; profile=text/event-stream` (or with two Content-Type headers): the gateway
    edits it as a stream, the Python SDK (which reads the media type's start) parses it as JSON.
    A line that is no SSE field must not pass as sent; comments, ids, event names and retry hints do."""
    listed = json.dumps(SERVER_EVENTS[2]).encode()
    notice = b"data: " + json.dumps(SERVER_EVENTS[0], separators=(",", ":")).encode()
    for body, expected in (
        (listed + b"\n\n", b""),
        (b": hello\nid: 4\nretry: 9\n" + listed + b"\n\n", b": hello\nid: 4\nretry: 9\n\n"),
        (b"event: message\n" + listed + b"\n" + notice + b"\n\n", b"event: message\n" + notice + b"\n\n"),
    ):
        modify = _editor().stream()
        assert modify(body) + modify(b"") == expected
