"""MCP through the gateway, end to end: the official SDK's FastMCP server over HTTPS (test CA,
routed with `upstreams:`), and the SDK's streamable-HTTP client configured by nothing but the
agent's `egress-gateway env` exports.

One gateway and two servers serve the whole module: `payments` answers as SSE streams,
`payments_json` as JSON. Each agent has its own sub, so budgets and approvals never mix.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.sse import sse_client
from mcp.shared.exceptions import McpError

from dlp.tokens import TOKEN_RE
from tests.fakes import PKI
from tests.mcp.agents import Exports, agent_exports, http_client, mcp_session, same_exports
from tests.mcp.server import CHANGED_DOC, McpVendor
from tests.processes import GatewayProcess

SSE_HOST, JSON_HOST, LEGACY_HOST = "mcp.payments.test", "mcp-json.payments.test", "mcp-legacy.payments.test"
SSE_URL, JSON_URL, LEGACY_URL = f"https://{SSE_HOST}/mcp", f"https://{JSON_HOST}/mcp", f"https://{LEGACY_HOST}/sse"
MCP_TOKEN = "mcp-server-token-0004"
EMAIL = "jane.doe@example.com"
ACCEPT = {"accept": "application/json, text/event-stream"}

FINANCE = """
version: 1
subjects: {roles: [finance]}
rules:
  - connector: payments
    actions: [create_refund]
    params: {amount: {max: 500000}}
    approval: "amount > 100000"
  - connector: payments
    actions: [get_balance, ask_model]
  - connector: payments_json
    actions: [create_refund]
    budget: {field: amount, limit: 2000, per: day}
  - connector: payments_json
    actions: [get_balance]
  - connector: legacy
    actions: [get_balance]
dlp:
  tokenize: [EMAIL_ADDRESS]
  reveal: [EMAIL_ADDRESS]
"""
SUPPORT = """
version: 1
subjects: {roles: [support]}
rules:
  - connector: payments
    actions: [create_refund, get_balance]
dlp:
  tokenize: [EMAIL_ADDRESS]
  reveal: []
"""
TREASURY = """
version: 1
subjects: {roles: [treasury]}
rules:
  - connector: payments_json
    actions: [transfer, lookup]
"""
SAMPLER = """
version: 1
subjects: {roles: [sampler]}
rules:
  - connector: payments
    actions: [ask_model, sampling/createMessage]
"""


@pytest.fixture(scope="module")
def servers(pki: PKI) -> Iterator[tuple[McpVendor, McpVendor]]:
    cert = pki.leaf("mcp", (SSE_HOST, JSON_HOST))
    sse, plain = McpVendor(cert), McpVendor(cert, json_response=True)
    yield sse, plain
    sse.close()
    plain.close()


@pytest.fixture(scope="module")
def legacy(pki: PKI) -> Iterator[McpVendor]:
    """A server of the legacy HTTP+SSE transport only (GET /sse, then POST /messages/)."""
    vendor = McpVendor(pki.leaf("mcp-legacy", (LEGACY_HOST,)), legacy=True)
    yield vendor
    vendor.close()


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pki: PKI, servers: tuple[McpVendor, McpVendor], legacy: McpVendor
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("mcp-gateway")
    policies = root / "policies"
    policies.mkdir()
    (policies / "finance.yaml").write_text(FINANCE)
    (policies / "support.yaml").write_text(SUPPORT)
    (policies / "sampler.yaml").write_text(SAMPLER)
    (policies / "treasury.yaml").write_text(TREASURY)
    sse, plain = servers
    settings = {
        "upstreams": {SSE_HOST: sse.url, JSON_HOST: plain.url, LEGACY_HOST: legacy.url},
        "upstream_ca": str(pki.ca_file),
        "policies": str(policies),
        "mcp_servers": {
            "payments": {"url": SSE_URL, "credential": "env:TEST_MCP_TOKEN"},
            "payments_json": {"url": JSON_URL, "credential": "env:TEST_MCP_TOKEN"},
            "legacy": {"url": LEGACY_URL, "credential": "env:TEST_MCP_TOKEN"},
        },
    }
    with GatewayProcess(root, settings, {"TEST_MCP_TOKEN": MCP_TOKEN}).start() as g:
        yield g


@pytest.fixture(scope="module")
def finance(gw: GatewayProcess) -> Exports:
    return agent_exports(gw, "finance-agent", "finance", "payments:*", "payments_json:*", "legacy:*")


def _agent(gw: GatewayProcess, finance: Exports, sub: str, role: str = "finance") -> Exports:
    return same_exports(gw, finance, sub, role, "payments:*", "payments_json:*")


def _refusal(e: pytest.ExceptionInfo[McpError]) -> tuple[str, dict[str, Any]]:
    error = e.value.error
    assert error.code == -32003
    assert isinstance(error.data, dict) and error.data["decision_id"].startswith("dec_")
    return error.message, error.data


def _names(result: types.ListToolsResult) -> list[str]:
    return sorted(t.name for t in result.tools)


def test_tools_list_shows_only_callable_tools_as_json_and_as_sse(gw: GatewayProcess, finance: Exports, servers: Any) -> None:
    async def run() -> dict[str, list[str]]:
        shown = {}
        for url in (SSE_URL, JSON_URL):
            async with mcp_session(finance, url) as (s, _):
                shown[url] = _names(await s.list_tools())
        return shown

    assert asyncio.run(run()) == {SSE_URL: ["ask_model", "create_refund", "get_balance"], JSON_URL: ["create_refund", "get_balance"]}
    sse, plain = servers
    assert sse.authorizations | plain.authorizations == {f"Bearer {MCP_TOKEN}"}  # the injected one, never the agent's


def test_hidden_tool_and_case_variant_are_refused_with_readable_errors(gw: GatewayProcess, finance: Exports, servers: Any) -> None:
    sse, _ = servers

    async def run() -> tuple[list[Any], str]:
        async with mcp_session(finance, SSE_URL) as (s, _):
            await s.list_tools()
            caught = []
            for name in ("delete_customer", "Create_Refund", "create_refund\u200b"):
                with pytest.raises(McpError) as e:
                    await s.call_tool(name, {"customer_id": "cus_secret_42", "amount": 1, "customer_email": EMAIL})
                caught.append(_refusal(e))
            ok = await s.call_tool("get_balance", {})
            assert isinstance(ok.content[0], types.TextContent)
            return caught, ok.content[0].text

    before = list(sse.received)
    (hidden, variant, invisible), balance = asyncio.run(run())
    assert hidden[1]["code"] == "policy_denied"
    assert hidden[0].startswith("no policy rule allows payments.delete_customer for agent 'finance-agent'")
    assert variant[1]["code"] == "unknown_action" and invisible[1]["code"] == "unknown_action"
    assert variant[0] == ("the MCP server payments never listed a tool of that name the gateway pinned"
                          " (past the server's max_pinned_tools, new tools are not pinned)")
    assert balance == "balance: 10000 usd"
    assert sse.received[len(before):] == [("get_balance", {})]
    records = {r["decision_id"]: r for r in gw.audit() if "decision_id" in r}
    denied = records[hidden[1]["decision_id"]]
    assert (denied["connector"], denied["action"], denied["code"]) == ("payments", "delete_customer", "policy_denied")
    assert denied["mcp"]["server"] == "payments" and denied["mcp"]["arguments"].startswith("hmac-sha256:")
    assert records[variant[1]["decision_id"]]["action"] is None  # a name the server never listed is never written
    audit_text = gw.audit_file.read_text()
    assert "cus_secret_42" not in audit_text and EMAIL not in audit_text and "Create_Refund" not in audit_text


def test_a_batch_is_checked_element_by_element(gw: GatewayProcess, finance: Exports, servers: Any) -> None:
    _, plain = servers

    async def run() -> tuple[list[dict[str, Any]], httpx.Response, httpx.Response]:
        async with http_client(finance) as c:
            init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
            r = await c.post(JSON_URL, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, headers=ACCEPT)
            assert r.status_code == 200, r.text
            h = {**ACCEPT, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": r.json()["result"]["protocolVersion"]}
            assert (await c.post(JSON_URL, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)).status_code == 202
            await c.post(JSON_URL, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=h)
            batch = [
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_balance", "arguments": {}}},
                {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "delete_customer", "arguments": {"customer_id": "c"}}},
                {"jsonrpc": "2.0", "id": 4, "method": "resources/read", "params": {"uri": "file:///etc/passwd"}},
            ]
            answer = await c.post(JSON_URL, json=batch, headers=h)
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99, "reason": f"ask {EMAIL}"}}
            notified = await c.post(JSON_URL, json=cancel, headers=h)
            assert notified.status_code == 202
            twice = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"get_balance"},"params":{"name":"delete_customer"}}'
            duplicate = await c.post(JSON_URL, content=twice, headers={**h, "content-type": "application/json"})
            empty = await c.post(JSON_URL, json=[], headers=h)
            assert empty.status_code == 400 and empty.json()["error"]["code"] == "mcp_malformed"
            return answer.json(), answer, duplicate

    body, answer, duplicate = asyncio.run(run())
    assert answer.status_code == 200 and isinstance(body, list)
    by_id = {m["id"]: m for m in body}
    assert sorted(by_id) == [2, 3, 4]
    assert by_id[2]["result"]["content"][0]["text"] == "balance: 10000 usd"
    assert by_id[3]["error"]["data"]["code"] == "policy_denied"
    assert by_id[4]["error"]["data"]["code"] == "unknown_action"
    assert duplicate.status_code == 400 and duplicate.json()["error"]["code"] == "mcp_malformed"
    assert ("delete_customer", {"customer_id": "c"}) not in plain.received
    # A protocol message's strings are the agent's too: scanned and tokenized like arguments.
    cancelled = [r for r in gw.audit() if r.get("mcp", {}).get("methods") == ["notifications/cancelled"] and r["phase"] == "decision"]
    assert len(cancelled) == 1 and cancelled[0]["tokenized"] == {"EMAIL_ADDRESS": 1}


def test_an_approval_is_bound_to_the_arguments(gw: GatewayProcess, finance: Exports, servers: Any) -> None:
    sse, _ = servers
    args = {"amount": 150000, "customer_email": "refunds@example.org"}

    async def call(headers: dict[str, str] | None, arguments: dict[str, Any]) -> types.CallToolResult | tuple[str, dict[str, Any]]:
        async with mcp_session(finance, SSE_URL, headers) as (s, _):
            await s.list_tools()
            try:
                return await s.call_tool("create_refund", arguments)
            except McpError as e:
                return e.error.message, e.error.data  # type: ignore[return-value]

    held = asyncio.run(call(None, args))
    assert isinstance(held, tuple) and held[1]["code"] == "approval_required"
    approval = held[1]["approval_id"]
    admin = gw.token(sub="ops", role="admin")
    r = httpx.post(f"{gw.api_url}/v1/approvals/{approval}/approve", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200, r.text
    presented = {"X-Egress-Approval": approval}
    other = asyncio.run(call(presented, {**args, "amount": 150001}))
    assert isinstance(other, tuple) and other[1]["code"] == "approval_required" and other[1]["approval_id"] != approval
    same = asyncio.run(call(presented, args))
    assert isinstance(same, types.CallToolResult) and not same.isError
    assert same.structuredContent == {"refunded": 150000, "customer_email": "refunds@example.org", "note": ""}
    again = asyncio.run(call(presented, args))
    assert isinstance(again, tuple) and again[1]["code"] == "approval_required"
    assert [a for t, a in sse.received if t == "create_refund" and a["amount"] >= 150000] == [
        {"amount": 150000, "customer_email": sse.received[-1][1]["customer_email"], "note": ""}
    ]


def test_an_approval_presented_in_meta_is_bound_single_use_and_never_forwarded(gw: GatewayProcess, finance: Exports, servers: Any) -> None:
    """The id in `params._meta["egress/approval"]` works as the header does: for these arguments
    only, once; the refusal tells the model where it goes; the server never sees it."""
    sse, _ = servers
    agent = _agent(gw, finance, "meta-approver")
    args = {"amount": 160000, "customer_email": "meta@example.org"}

    async def call(arguments: dict[str, Any], meta: dict[str, Any] | None) -> types.CallToolResult | tuple[str, dict[str, Any]]:
        async with mcp_session(agent, SSE_URL) as (s, _):
            await s.list_tools()
            try:
                return await s.call_tool("create_refund", arguments, meta=meta)
            except McpError as e:
                assert e.error.code == -32003 and isinstance(e.error.data, dict)
                return e.error.message, e.error.data

    held = asyncio.run(call(args, None))
    assert isinstance(held, tuple) and held[1]["code"] == "approval_required"
    approval = held[1]["approval_id"]
    assert held[0].endswith(f'; once it is approved, call the tool again with the same arguments and params._meta {{"egress/approval": "{approval}"}}')
    admin = gw.token(sub="ops", role="admin")
    assert httpx.post(f"{gw.api_url}/v1/approvals/{approval}/approve", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    presented = {"egress/approval": approval}
    other = asyncio.run(call({**args, "amount": 160001}, presented))
    assert isinstance(other, tuple) and other[1]["code"] == "approval_required" and other[1]["approval_id"] != approval
    bodies = len(sse.bodies)
    same = asyncio.run(call(args, presented))
    assert isinstance(same, types.CallToolResult) and not same.isError and same.structuredContent is not None
    assert same.structuredContent["refunded"] == 160000
    assert not any(approval.encode() in b or b"egress/approval" in b for b in sse.bodies[bodies:])
    again = asyncio.run(call(args, presented))
    assert isinstance(again, tuple) and again[1]["code"] == "approval_required"
    malformed = asyncio.run(call(args, {"egress/approval": 7}))
    assert isinstance(malformed, tuple) and malformed[1]["code"] == "mcp_malformed"
    assert [a["amount"] for t, a in sse.received if t == "create_refund" and a["amount"] >= 160000] == [160000]


def test_string_arguments_leave_tokenized_and_come_back_restored_only_for_revealers(gw: GatewayProcess, finance: Exports, servers: Any) -> None:
    sse, _ = servers
    support = _agent(gw, finance, "support-agent", "support")

    async def refund(exports: Exports) -> types.CallToolResult:
        async with mcp_session(exports, SSE_URL) as (s, _):
            await s.list_tools()
            return await s.call_tool("create_refund", {"amount": 100, "customer_email": EMAIL, "note": f"write to {EMAIL}"})

    start = len(sse.received)
    revealed = asyncio.run(refund(finance))
    seen = sse.received[start][1]
    assert TOKEN_RE.fullmatch(seen["customer_email"]) and EMAIL not in json.dumps(seen)
    assert seen["note"] == f"write to {seen['customer_email']}"
    assert revealed.structuredContent == {"refunded": 100, "customer_email": EMAIL, "note": f"write to {EMAIL}"}
    assert isinstance(revealed.content[0], types.TextContent) and EMAIL in revealed.content[0].text
    kept = asyncio.run(refund(support))
    assert kept.structuredContent is not None and TOKEN_RE.fullmatch(kept.structuredContent["customer_email"])
    assert EMAIL not in json.dumps(kept.model_dump())


def test_a_budget_over_an_argument_admits_exactly_its_limit_under_50_concurrent_calls(
    gw: GatewayProcess, finance: Exports, servers: Any
) -> None:
    _, plain = servers
    agent = _agent(gw, finance, "budget-agent")

    async def run() -> list[Any]:
        async with mcp_session(agent, JSON_URL) as (s, _):
            await s.list_tools()
            return await asyncio.gather(*(s.call_tool("create_refund", {"amount": 100, "customer_email": "b@example.net"}) for _ in range(50)), return_exceptions=True)

    start = len(plain.received)
    results = asyncio.run(run())
    passed = [r for r in results if isinstance(r, types.CallToolResult) and not r.isError]
    refused = [r for r in results if isinstance(r, McpError)]
    assert len(passed) == 20 and len(refused) == 30
    assert {e.error.data["code"] for e in refused} == {"budget_exceeded"}  # type: ignore[index]
    assert len([t for t, _ in plain.received[start:] if t == "create_refund"]) == 20


def test_a_session_id_replayed_by_another_agent_is_refused(gw: GatewayProcess, finance: Exports) -> None:
    thief = _agent(gw, finance, "other-agent")

    async def run() -> tuple[httpx.Response, httpx.Response, list[str]]:
        async with mcp_session(finance, SSE_URL) as (s, session_id):
            stolen = session_id()
            assert stolen
            h = {**ACCEPT, "mcp-session-id": stolen, "mcp-protocol-version": "2025-06-18"}
            async with http_client(thief) as c:
                post = await c.post(SSE_URL, json={"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                                    "params": {"name": "get_balance", "arguments": {}}}, headers=h)
                get = await c.get(SSE_URL, headers=h)
            owner = _names(await s.list_tools())  # the owner's session is unharmed
        return post, get, owner

    post, get, owner = asyncio.run(run())
    assert post.status_code == 200 and post.json()["error"]["data"]["code"] == "mcp_session_foreign"
    assert get.status_code == 403 and get.json()["error"]["code"] == "mcp_session_foreign"
    assert owner == ["ask_model", "create_refund", "get_balance"]


def test_what_the_policy_could_not_judge_never_reaches_the_server(gw: GatewayProcess, finance: Exports, servers: Any) -> None:
    """Three shapes a check read differently from the server: a number no policy can compare (NaN
    passes every `max`; it, Infinity and 1e400 judge as null), a method sent without an id as if a
    notification (it was decided by nothing), and a second Mcp-Session-Id (another agent's,
    behind the agent's own: only the first was checked, both went on)."""
    _, plain = servers
    thief = _agent(gw, finance, "header-smuggler")

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], httpx.Response, httpx.Response]:
        async with mcp_session(finance, JSON_URL) as (_, victim_session), http_client(thief) as c:
            init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
            r = await c.post(JSON_URL, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, headers=ACCEPT)
            own = r.headers["mcp-session-id"]
            h = {**ACCEPT, "mcp-session-id": own, "mcp-protocol-version": "2025-06-18", "content-type": "application/json"}
            await c.post(JSON_URL, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=h)
            numbers = [
                await c.post(JSON_URL, headers=h, content=b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":'
                             b'{"name":"create_refund","arguments":{"amount":' + n + b',"customer_email":"a@b.org"}}}')
                for n in (b"NaN", b"Infinity", b"-1e400", b"9" * 5000, b'1,"\xef\xbd\x81mount":900000', b'1,"Amount":900000')
            ]
            disguised = [
                await c.post(JSON_URL, headers=h, json={"jsonrpc": "2.0", "method": method, "params": params})
                for method, params in (("tools/call", {"name": "delete_customer", "arguments": {"customer_id": "c"}}),
                                       ("resources/read", {"uri": "file:///etc/passwd"}))
            ]
            two = [(k, v) for k, v in h.items() if k != "mcp-session-id"] + [("mcp-session-id", own), ("Mcp-Session-Id", victim_session() or "")]
            smuggled = await c.post(JSON_URL, headers=two, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
            alone = await c.post(JSON_URL, headers=h, json={"jsonrpc": "2.0", "id": 4, "method": "ping"})
            return numbers, disguised, smuggled, alone

    before = len(plain.bodies)
    numbers, disguised, smuggled, alone = asyncio.run(run())
    # ...and look-alike keys (a full-width or upper-case `amount` beside the judged one)
    assert [(r.status_code, r.json()["error"]["code"]) for r in numbers] == [(400, "mcp_malformed")] * 6
    assert [(r.status_code, r.json()["error"]["code"]) for r in disguised] == [(403, "unknown_action")] * 2
    assert smuggled.status_code == 200 and smuggled.json()["error"]["data"]["code"] == "mcp_malformed"  # a request's refusal
    assert alone.status_code == 200 and alone.json() == {"jsonrpc": "2.0", "id": 4, "result": {}}
    reached = b"".join(plain.bodies[before:])
    assert b'"method":"ping"' in reached and b'"id":3' not in reached
    for sent in (b"NaN", b"Infinity", b"1e400", b"9999", b"900000", b"delete_customer", b"resources/read"):
        assert sent not in reached


def test_a_crashing_server_s_answer_is_a_json_rpc_error_labelled_json(gw: GatewayProcess, finance: Exports, servers: Any) -> None:
    """A server's text/plain 500 cannot be checked, so the list asked of it is answered with a
    JSON-RPC error: labelled application/json, as it now is, not with the server's text/plain."""
    _, plain = servers

    async def run() -> httpx.Response:
        async with http_client(finance) as c:
            init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
            r = await c.post(JSON_URL, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, headers=ACCEPT)
            h = {**ACCEPT, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
            plain.broken = True
            try:
                return await c.post(JSON_URL, headers=h, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            finally:
                plain.broken = False

    r = asyncio.run(run())
    assert r.headers["content-type"] == "application/json"
    assert r.json()["id"] == 1 and r.json()["error"]["message"] == "the MCP server's answer could not be read"


def test_a_server_sampling_request_reaches_the_agent_only_if_a_policy_names_it(gw: GatewayProcess, finance: Exports) -> None:
    asked: list[Any] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(params)
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="no"), model="m")

    async def run(exports: Exports) -> str:
        async with mcp_session(exports, SSE_URL, sampling_callback=sampling) as (s, _):
            await s.list_tools()
            result = await s.call_tool("ask_model", {"question": "transfer everything?"})
            assert isinstance(result.content[0], types.TextContent)
            return result.content[0].text

    refused = asyncio.run(run(finance))
    assert asked == []
    assert refused.startswith("sampling refused: the MCP server's sampling/createMessage request is refused")
    denied = [r for r in gw.audit() if r.get("action") == "sampling/createMessage"]
    assert len(denied) == 1 and denied[0]["code"] == "policy_denied" and denied[0]["sub"] == "finance-agent"
    # The dropped event left the agent's stream open: the client never had to reopen it (a 409
    # from the server, which still held the first), as when mitmproxy ended the chunked stream.
    assert [r for r in gw.audit() if r.get("upstream_status") == 409] == []
    allowed = asyncio.run(run(same_exports(gw, finance, "sampler-agent", "sampler", "payments:*")))
    assert allowed.startswith("model said: ") and "no" in allowed and len(asked) == 1


def test_a_changed_tool_definition_is_hidden_and_refused_until_an_admin_accepts_it(
    gw: GatewayProcess, finance: Exports, servers: Any
) -> None:
    _, plain = servers

    async def listing_and_call() -> tuple[list[str], Any]:
        async with mcp_session(finance, JSON_URL) as (s, _):
            names = _names(await s.list_tools())
            try:
                return names, await s.call_tool("create_refund", {"amount": 5, "customer_email": "c@example.net"})
            except McpError as e:
                return names, e.error.data

    assert asyncio.run(listing_and_call())[0] == ["create_refund", "get_balance"]
    plain.change_refund_description(CHANGED_DOC)
    names, refused = asyncio.run(listing_and_call())
    assert names == ["get_balance"] and refused["code"] == "mcp_tool_changed"
    changes = [r for r in gw.audit() if r.get("type") == "mcp_tool_changed"]
    assert [(r["server"], r["tool"]) for r in changes] == [("payments_json", "create_refund")]
    pins = [json.loads(line) for line in gw.cli("mcp", "pins", "payments_json").stdout.splitlines()]
    changed = next(p for p in pins if p["tool"] == "create_refund")
    assert changed["pending"] == changes[0]["definition"] != changed["pinned"]
    # `policy test` says so too, and fails whatever the policy allows: a CI gate reads its exit code.
    probe = gw.cli("policy", "test", "--as", "finance", "--mcp-server", "payments_json", "--tool", "create_refund",
                   "--arguments", json.dumps({"amount": 5, "customer_email": "c@example.net"}), check=False)
    assert probe.returncode == 1 and json.loads(probe.stdout)["mcp"]["live_call"] == "refused"
    nothing = gw.cli("mcp", "accept", "payments_json", "get_balance", check=False)
    assert nothing.returncode == 2 and "has no changed definition waiting" in nothing.stderr
    agent_token = gw.token(sub="finance-agent")
    refused_api = httpx.post(f"{gw.api_url}/v1/mcp/payments_json/tools/create_refund/accept", headers={"Authorization": f"Bearer {agent_token}"})
    assert refused_api.status_code == 403 and refused_api.json()["error"]["code"] == "admin_required"
    admin = gw.token(sub="ops", role="admin")
    accepted = httpx.post(f"{gw.api_url}/v1/mcp/payments_json/tools/create_refund/accept", headers={"Authorization": f"Bearer {admin}"})
    assert accepted.status_code == 200 and accepted.json()["pinned"] == changed["pending"]

    async def call_unlisted() -> tuple[str, dict[str, Any]]:
        async with mcp_session(finance, JSON_URL) as (s, _):
            with pytest.raises(McpError) as e:
                await s.call_tool("create_refund", {"amount": 5, "customer_email": "c@example.net"})
            return _refusal(e)

    # The accepted definition's input schema is read when the server next lists it: until then, no
    # call goes out unchecked.
    message, data = asyncio.run(call_unlisted())
    assert data["code"] == "mcp_tool_changed"
    assert message == "the gateway has not read the definition of payments_json tool create_refund yet; list the tools (tools/list) before calling it"
    names, result = asyncio.run(listing_and_call())
    assert names == ["create_refund", "get_balance"]
    assert isinstance(result, types.CallToolResult) and result.structuredContent is not None
    assert result.structuredContent["refunded"] == 5
    assert [r["phase"] for r in gw.audit() if r.get("phase") == "mcp_accept"] == ["mcp_accept"]


def test_arguments_are_checked_against_the_pinned_input_schema_before_any_policy(
    gw: GatewayProcess, finance: Exports, servers: Any
) -> None:
    """`transfer`'s listed schema is stricter than the server's own check: every call that breaks
    it is refused by the gateway (schema_violation, no value quoted) and never reaches the server;
    `lookup`'s schema refers to another document, so it is hidden and its calls refused."""
    _, plain = servers
    treasury = _agent(gw, finance, "treasury-agent", "treasury")
    secret = "jane.doe@example.com"
    bad: list[dict[str, Any]] = [
        {"amount": "100", "currency": "usd"},  # wrong type
        {"currency": "usd"},  # missing required
        {"amount": 5, "currency": "usd", secret: 1},  # a property the tool does not declare
        {"amount": 0, "currency": "usd"},  # under the minimum
        {"amount": 5, "currency": secret},  # not in the enum
        {"amount": 5, "currency": "usd", "memo": "a" * 200_000 + "!"},  # backtracking bait, huge
        {"amount": 5, "currency": "usd", "memo": [[[[[[[[secret]]]]]]]]},  # nested where a string is due
    ]

    async def run() -> tuple[list[str], list[Any], Any, Any]:
        async with mcp_session(treasury, JSON_URL) as (s, _):
            names = _names(await s.list_tools())
            refused = []
            for arguments in bad:
                with pytest.raises(McpError) as e:
                    await s.call_tool("transfer", arguments)
                refused.append(_refusal(e))
            ok = await s.call_tool("transfer", {"amount": 5, "currency": "eur", "memo": "rent due"})
            with pytest.raises(McpError) as hostile:
                await s.call_tool("lookup", {"q": "x"})
            return names, refused, ok, _refusal(hostile)

    start = len(plain.received)
    names, refused, ok, hostile = asyncio.run(run())
    assert names == ["transfer"]  # lookup's schema cannot be checked: not shown
    assert [data["code"] for _, data in refused] == ["schema_violation"] * len(bad)
    assert [message.removeprefix("the arguments do not fit the tool's input schema: ") for message, _ in refused] == [
        "arguments.amount must be of type integer",
        "arguments lacks the required property amount",
        "arguments has 1 property the tool does not declare",
        "arguments.amount fails the input schema's minimum (1)",
        "arguments.currency fails the input schema's enum",
        "arguments.memo fails the input schema's pattern",
        "arguments.memo must be of type string",
    ]
    assert isinstance(ok.content[0], types.TextContent) and ok.content[0].text == "moved 5 eur"
    assert hostile[1]["code"] == "schema_violation"
    assert hostile[0] == (
        "the input schema of payments_json tool lookup cannot be checked, so the tool is refused:"
        " the tool's input schema refers outside itself ($ref to another document)"
    )
    assert plain.received[start:] == [("transfer", {"amount": 5, "currency": "eur", "memo": "rent due"})]
    records = {r["decision_id"]: r for r in gw.audit() if "decision_id" in r}
    for _, data in refused:
        record = records[data["decision_id"]]
        assert (record["action"], record["code"], record["mcp"]["arguments"][:12]) == ("transfer", "schema_violation", "hmac-sha256:")
    assert secret not in gw.audit_file.read_text()


@pytest.mark.chaos_full  # ~8 s of CLI runs; `policy test` is in the default run for REST (tests/cli/test_policy_cli_config.py)
def test_policy_test_answers_for_an_mcp_tool_call(gw: GatewayProcess, finance: Exports, tmp_path: Path) -> None:
    """`policy test --mcp-server --tool --arguments` goes through the same judging as a live call:
    the pinned input schema first (read from the gateway's store), then the policy and its params."""
    async def listed() -> list[str]:
        async with mcp_session(_agent(gw, finance, "treasury-lister", "treasury"), JSON_URL) as (s, _):
            return _names(await s.list_tools())

    assert asyncio.run(listed()) == ["transfer"]

    def test(role: str, server: str, tool: str, arguments: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        out = gw.cli("policy", "test", "--as", role, "--mcp-server", server, "--tool", tool, "--arguments", json.dumps(arguments), check=False)
        return out.returncode, json.loads(out.stdout)

    status, ok = test("treasury", "payments_json", "transfer", {"amount": 5, "currency": "usd"})
    assert (status, ok["decision"], ok["connector"], ok["action"]) == (0, "allow", "payments_json", "transfer")
    assert ok["mcp"]["input_schema"] == "checked" and ok["mcp"]["pin"].startswith("sha256:")
    status, bad = test("treasury", "payments_json", "transfer", {"amount": "5", "currency": "usd"})
    assert (status, bad["decision"], bad["code"]) == (1, "deny", "schema_violation")
    assert bad["message"] == "the arguments do not fit the tool's input schema: arguments.amount must be of type integer"
    status, held = test("finance", "payments", "create_refund", {"amount": 150000, "customer_email": "r@example.org"})
    assert (status, held["decision"]) == (1, "approval_required")
    status, unlisted = test("finance", "payments", "never_listed", {})
    assert status == 1 and unlisted["code"] == "policy_denied" and unlisted["mcp"]["input_schema"].startswith("not checked")
    req = tmp_path / "refund.json"
    req.write_text(json.dumps({"connector": "payments_json", "action": "transfer", "params": {"amount": 5, "currency": "gbp"}}))
    from_file = gw.cli("policy", "test", "--as", "treasury", str(req), check=False)
    assert from_file.returncode == 1 and json.loads(from_file.stdout)["code"] == "schema_violation"
    both = gw.cli("policy", "test", "--as", "treasury", str(req), "--mcp-server", "payments_json", "--tool", "transfer", check=False)
    assert both.returncode == 2 and "either REQUEST.json or --mcp-server with --tool" in both.stderr


def test_the_legacy_sse_transport_is_refused_clearly_and_never_reaches_the_server(
    gw: GatewayProcess, finance: Exports, legacy: McpVendor
) -> None:
    """The SDK's `sse_client` against FastMCP's `sse_app`: its GET opening the stream is refused with
    a message naming Streamable HTTP (no stream, so no answer can pass unchecked), and a POST to the
    server's message path is no action of it; the server sees neither."""
    def factory(headers: dict[str, str] | None = None, timeout: httpx.Timeout | None = None, auth: httpx.Auth | None = None) -> httpx.AsyncClient:
        return http_client(finance, headers)

    async def run() -> tuple[BaseException, httpx.Response, httpx.Response]:
        with pytest.raises(BaseException) as e:  # the SDK raises it inside task groups: unwrapped below
            async with sse_client(LEGACY_URL, httpx_client_factory=factory) as (read, write), ClientSession(read, write) as s:
                await s.initialize()
        async with http_client(finance) as c:
            get = await c.get(LEGACY_URL, headers={"accept": "text/event-stream"})
            post = await c.post(f"https://{LEGACY_HOST}/messages/?session_id=0123", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        return e.value, get, post

    caught, get, post = asyncio.run(run())
    while isinstance(caught, BaseExceptionGroup) and len(caught.exceptions) == 1:
        caught = caught.exceptions[0]
    assert isinstance(caught, httpx.HTTPStatusError) and caught.response.status_code == 403
    assert get.status_code == 403 and get.json()["error"]["code"] == "unknown_action"
    assert get.json()["error"]["message"].startswith("a GET without an Mcp-Session-Id opens the legacy HTTP+SSE transport (MCP 2024-11-05)")
    assert "use the Streamable HTTP transport" in get.json()["error"]["message"]
    assert post.status_code == 403 and post.json()["error"]["code"] == "unknown_action"
    assert legacy.requests == []


def test_policies_name_mcp_tools_and_pins_bound_them(tmp_path: Path) -> None:
    """A tool name is accepted at load for a server without `pin:`, and only pinned names with it."""
    from gateway.config import Config
    from gateway.connector_admin import build_registry
    from gateway.policy.load import PolicyLoadError, build_policy_set

    pinned = {"url": "https://mcp.example/mcp", "pin": {"create_refund": "sha256:" + "0" * 64}}
    cfg = Config.model_validate({"mcp_servers": {"open": {"url": "https://mcp2.example/mcp"}, "pinned": pinned}})
    reg = build_registry(cfg, None)
    rule = "version: 1\nsubjects: {roles: [r]}\nrules:\n  - connector: %s\n    actions: [%s]\n    params: {amount: {max: 5}}\n"
    build_policy_set({"a.yaml": (rule % ("open", "anything_at_all")).encode()}, reg.get)
    build_policy_set({"a.yaml": (rule % ("pinned", "create_refund")).encode()}, reg.get)
    with pytest.raises(PolicyLoadError, match="unknown action 'create_refunds' of connector 'pinned'"):
        build_policy_set({"a.yaml": (rule % ("pinned", "create_refunds")).encode()}, reg.get)
    with pytest.raises(PolicyLoadError, match="unknown action"):
        build_policy_set({"a.yaml": (rule % ("open", "'(protocol)'")).encode()}, reg.get)


def test_two_mcp_servers_share_a_host_only_on_different_endpoints() -> None:
    """The first MCP server of a host must not break the check (it did: a misplaced line read the
    loop variable of an empty loop); a second on the same endpoint is refused, on another one not."""
    from connectors.registry import RegistryError
    from gateway.config import Config
    from gateway.connector_admin import build_registry

    def servers(*urls: str) -> Config:
        return Config.model_validate({"mcp_servers": {f"s{i}": {"url": url} for i, url in enumerate(urls)}})

    assert build_registry(servers("https://mcp.example/mcp"), None).get("s0") is not None
    assert build_registry(servers("https://mcp.example/a", "https://mcp.example/b"), None).get("s1") is not None
    with pytest.raises(RegistryError, match=r"two MCP servers serve mcp\.example/mcp"):
        build_registry(servers("https://mcp.example/mcp", "https://mcp.example/mcp"), None)
