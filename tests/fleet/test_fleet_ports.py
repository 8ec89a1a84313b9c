"""The stores ported onto the fleet's state seam: MCP pins and sessions, connectors registered
through the API, and the console's sessions, shared by two replicas on one real redis-server.

The fleet is two real `egress-gateway run` processes with the same config and keys, `stores.state`
on the redis-server, one real MCP server (the SDK's FastMCP) and one fake vendor for the registered
connector. No policies: token scopes decide, so no policy reload stands between a registration and
its first call. One fleet serves the module; every test ends the sessions it started.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from mcp import types
from mcp.shared.exceptions import McpError
from redis import Redis

from gateway.audit.log import RESERVED
from gateway.mcp.store import Seen
from gateway.stores import redis_state
from gateway.stores.sessions import hash_id
from tests.chaos.test_fleet_state import shared_keys
from tests.clients import client, error_of, stream_decisions
from tests.connectors.acme import ACME_HOST, ACME_KEY, document
from tests.console.setup import sign_in
from tests.fakes import PKI, VENDOR_HOSTS, FakeVendor, vendor_settings
from tests.mcp.agents import Exports, agent_exports, http_client, mcp_session, same_exports
from tests.mcp.server import CHANGED_DOC, McpVendor
from tests.processes import GatewayProcess, RedisServer, start_all

MCP_HOST = "mcp.fleet.test"
MCP_URL = f"https://{MCP_HOST}/mcp"
MCP_TOKEN = "mcp-fleet-token-0007"
ACCEPT = {"accept": "application/json, text/event-stream"}
SHARED_BOUND = 1.0  # the contract: what one replica changes, the others apply within a second
CONSOLE = {"max_sessions": 4, "sessions_per_admin": 2}
CONTACT = f"https://{ACME_HOST}/v1/contacts/c_1"


@dataclass
class Fleet:
    a: GatewayProcess
    b: GatewayProcess
    redis: RedisServer
    mcp: McpVendor
    acme: FakeVendor


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet-ports")
    (root / "redis").mkdir()
    redis = RedisServer(root / "redis").start()
    mcp = McpVendor(pki.leaf("mcp-fleet", (MCP_HOST,)), json_response=True)
    acme = FakeVendor(pki.leaf("acme-fleet", (ACME_HOST,)))
    keys = shared_keys(root / "keys")
    base = vendor_settings(pki, vendor_server)
    settings = {
        **base,
        "upstreams": {**{h: vendor_server.url for h in VENDOR_HOSTS}, ACME_HOST: acme.url, MCP_HOST: mcp.url},
        "secrets": {**base["secrets"], "acme": "env:TEST_ACME_KEY"},
        "connector_secrets": {"acme": [ACME_HOST]},
        "mcp_servers": {"payments": {"url": MCP_URL, "credential": "env:TEST_MCP_TOKEN"}},
        "stores": {"state": redis.url, "rate_limits": redis.url},
        "keys": keys["keys"],
        "console": CONSOLE,
    }
    env = {"TEST_ACME_KEY": ACME_KEY, "TEST_MCP_TOKEN": MCP_TOKEN}
    # Started from this thread: a gateway dies with the thread that started it (PDEATHSIG).
    doors = start_all(*(GatewayProcess(root / name, settings, env) for name in ("a", "b")))
    yield Fleet(doors[0], doors[1], redis, mcp, acme)
    for gw in doors:
        gw.stop()
    mcp.close()
    acme.close()
    redis.kill()


def bearer(gw: GatewayProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.token(sub='fleet-ops', role='admin')}"}


def every_audit(fleet: Fleet) -> list[dict[str, Any]]:
    return fleet.a.audit() + fleet.b.audit()


# --- MCP -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def owner_on_a(fleet: Fleet) -> Exports:
    return agent_exports(fleet.a, "mcp-owner", "finance", "payments:*")


def mcp_call(tool: str, arguments: dict[str, Any], request_id: int = 7) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


def test_an_mcp_session_opened_through_a_is_its_agents_alone_through_b(fleet: Fleet, owner_on_a: Exports) -> None:
    owner_on_b = same_exports(fleet.b, owner_on_a, "mcp-owner", "finance", "payments:*")
    thief_on_b = same_exports(fleet.b, owner_on_a, "mcp-thief", "finance", "payments:*")

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with mcp_session(owner_on_a, MCP_URL) as (s, session_id):
            await s.list_tools()  # pins the definitions through A
            headers = {**ACCEPT, "mcp-session-id": session_id() or "", "mcp-protocol-version": "2025-06-18"}
            async with http_client(thief_on_b) as c:
                stolen = await c.post(MCP_URL, json=mcp_call("get_balance", {}), headers=headers)
            async with http_client(owner_on_b) as c:
                own = await c.post(MCP_URL, json=mcp_call("get_balance", {}), headers=headers)
        return stolen, own

    before = len(fleet.mcp.received)
    stolen, own = asyncio.run(run())
    assert stolen.status_code == 200 and stolen.json()["error"]["data"]["code"] == "mcp_session_foreign"
    assert own.status_code == 200, own.text
    assert own.json()["result"]["content"][0]["text"] == "balance: 10000 usd"
    assert fleet.mcp.received[before:] == [("get_balance", {})]  # the owner's call only
    foreign = [r for r in fleet.b.audit() if r.get("code") == "mcp_session_foreign"]
    assert [r["sub"] for r in foreign] == ["mcp-thief"]


def test_a_changed_definition_accepted_through_b_is_callable_through_a(fleet: Fleet, owner_on_a: Exports) -> None:
    owner_on_b = same_exports(fleet.b, owner_on_a, "mcp-owner", "finance", "payments:*")

    async def listing_and_call(exports: Exports) -> tuple[list[str], Any]:
        async with mcp_session(exports, MCP_URL) as (s, _):
            names = sorted(t.name for t in (await s.list_tools()).tools)
            try:
                return names, await s.call_tool("create_refund", {"amount": 5, "customer_email": "c@example.net"})
            except McpError as e:
                return names, e.error.data

    names, _ = asyncio.run(listing_and_call(owner_on_a))
    assert "create_refund" in names
    fleet.mcp.change_refund_description(CHANGED_DOC)
    names_b, refused_b = asyncio.run(listing_and_call(owner_on_b))  # B sees the change first
    names_a, refused_a = asyncio.run(listing_and_call(owner_on_a))  # A sees it pending, already recorded
    assert "create_refund" not in names_b and "create_refund" not in names_a
    assert refused_a["code"] == refused_b["code"] == "mcp_tool_changed"
    changes = [r for r in every_audit(fleet) if r.get("type") == "mcp_tool_changed"]
    assert [(r["server"], r["tool"]) for r in changes] == [("payments", "create_refund")]  # once, for the fleet
    pins = httpx.get(f"{fleet.a.api_url}/v1/mcp/pins?server=payments", headers=bearer(fleet.a)).json()["pins"]
    pending = next(p for p in pins if p["tool"] == "create_refund")["pending"]
    assert pending == changes[0]["definition"]
    accepted = httpx.post(f"{fleet.b.api_url}/v1/mcp/payments/tools/create_refund/accept", headers=bearer(fleet.b))
    assert accepted.status_code == 200 and accepted.json()["pinned"] == pending and accepted.json()["source"] == "admin"
    again = httpx.post(f"{fleet.a.api_url}/v1/mcp/payments/tools/create_refund/accept", headers=bearer(fleet.a))
    assert (again.status_code, error_of(again)["code"]) == (409, "conflict")  # accepted once, for the fleet
    names, result = asyncio.run(listing_and_call(owner_on_a))  # at once: no poll stands between
    assert "create_refund" in names
    assert isinstance(result, types.CallToolResult) and result.structuredContent is not None
    assert result.structuredContent["refunded"] == 5


def test_observe_racing_on_two_clients_pins_exactly_one_definition(fleet: Fleet) -> None:
    """Two replicas' stores (each its own connection) list the same 40 new tools at once, each
    seeing another definition: every tool is pinned once, the other definition waits as a change."""
    stores = [redis_state.RedisMcpStore(redis_state.connect(fleet.redis.url)) for _ in range(2)]
    tools = [f"tool-{i}" for i in range(40)]
    seen: dict[tuple[int, str], Seen] = {}
    start = threading.Barrier(2)

    def lister(n: int) -> None:
        start.wait()
        for tool in tools:
            seen[(n, tool)] = stores[n].observe("race-server", tool, f"sha256:{n}", 1000)

    threads = [threading.Thread(target=lister, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tool in tools:
        outcomes = sorted([seen[(0, tool)].value, seen[(1, tool)].value])
        assert outcomes == ["changed", "new"], (tool, outcomes)
        winner = 0 if seen[(0, tool)] is Seen.NEW else 1
        pin = stores[1 - winner].state("race-server", tool)
        assert pin is not None and (pin.pinned, pin.pending) == (f"sha256:{winner}", f"sha256:{1 - winner}")
    assert len(stores[0].pins("race-server")) == 40
    # A pinned definition's input schema, stored by one replica, is read by the other; the first stays.
    stores[0].remember_schema("sha256:race-schema", '{"type":"object"}')
    stores[1].remember_schema("sha256:race-schema", '{"type":"string"}')
    assert stores[1].schema("sha256:race-schema") == '{"type":"object"}' and stores[0].schema("sha256:none") is None


# --- registered connectors ----------------------------------------------------------------------


def test_a_connector_registered_through_a_serves_through_b_and_a_delete_on_b_stops_it_on_a(fleet: Fleet) -> None:
    agent = fleet.a.token(sub="crm-agent", role="crm", scopes=("acme:*",))
    fleet.acme.reset()
    with client(fleet.b, agent) as c:
        assert error_of(c.get(CONTACT))["code"] == "host_denied"  # nobody claims the host yet
    registered = httpx.post(f"{fleet.a.api_url}/v1/connectors", json=document(), headers=bearer(fleet.a), timeout=20)
    assert registered.status_code == 201, registered.text
    time.sleep(SHARED_BOUND)
    listed = httpx.get(f"{fleet.b.api_url}/v1/connectors", headers=bearer(fleet.b)).json()["connectors"]
    assert {c["name"]: c["origin"] for c in listed}["acme"] == "api"
    with client(fleet.b, agent) as c:
        served = c.get(CONTACT)
    assert served.status_code == 200, served.text
    assert len(fleet.acme.received) == 1 and fleet.acme.received[0].headers["authorization"] == f"Bearer {ACME_KEY}"
    twice = httpx.post(f"{fleet.b.api_url}/v1/connectors", json=document(), headers=bearer(fleet.b), timeout=20)
    assert (twice.status_code, error_of(twice)["code"]) == (409, "conflict")  # the name is the fleet's

    deleted = httpx.delete(f"{fleet.b.api_url}/v1/connectors/acme", headers=bearer(fleet.b))
    assert (deleted.status_code, deleted.json()) == (200, {"deleted": "acme"})
    time.sleep(SHARED_BOUND)
    with client(fleet.a, agent) as c:
        assert error_of(c.get(CONTACT))["code"] == "host_denied"
    assert len(fleet.acme.received) == 1
    gone = httpx.delete(f"{fleet.a.api_url}/v1/connectors/acme", headers=bearer(fleet.a))
    assert (gone.status_code, error_of(gone)["code"]) == (404, "not_found")


def test_a_connector_replaced_between_two_polls_is_served_as_replaced(fleet: Fleet) -> None:
    """Deleted and registered again through A with fewer actions, faster than B polls: B serves
    the new document, not the one it had."""
    agent = fleet.a.token(sub="crm-agent", role="crm", scopes=("acme:*",))
    assert httpx.post(f"{fleet.a.api_url}/v1/connectors", json=document(), headers=bearer(fleet.a)).status_code == 201
    time.sleep(SHARED_BOUND)
    reads_only = document(actions=[a for a in document()["actions"] if a["name"] == "get_contact"])
    assert httpx.delete(f"{fleet.a.api_url}/v1/connectors/acme", headers=bearer(fleet.a)).status_code == 200
    assert httpx.post(f"{fleet.a.api_url}/v1/connectors", json=reads_only, headers=bearer(fleet.a)).status_code == 201
    time.sleep(SHARED_BOUND)
    fleet.acme.reset()
    with client(fleet.b, agent) as c:
        created = c.post(f"https://{ACME_HOST}/v1/contacts", json={"email": "x@example.net"})
        read = c.get(CONTACT)
    assert error_of(created)["code"] == "unknown_action", created.text
    assert read.status_code == 200 and len(fleet.acme.received) == 1
    assert httpx.delete(f"{fleet.b.api_url}/v1/connectors/acme", headers=bearer(fleet.b)).status_code == 200


# --- console sessions ----------------------------------------------------------------------------


def console_get(gw: GatewayProcess, session_id: str, csrf: str | None) -> httpx.Response:
    """GET /v1/approvals as the console's page does it, on a new connection to `gw`."""
    headers = {"Cookie": f"egress_console={session_id}", **({"X-CSRF-Token": csrf} if csrf else {})}
    return httpx.get(f"{gw.api_url}/v1/approvals", headers=headers, timeout=20)


def sign_out(gw: GatewayProcess, session_id: str, csrf: str) -> httpx.Response:
    headers = {"Cookie": f"egress_console={session_id}", "X-CSRF-Token": csrf}
    return httpx.delete(f"{gw.api_url}/console/session", headers=headers, timeout=20)


def signed_in(gw: GatewayProcess, sub: str) -> tuple[str, str, str]:
    """(session id, CSRF token, the admin token's jti) of a new sign-in through `gw`."""
    token = gw.token(sub=sub, role="admin")
    c, session = sign_in(gw, token)
    session_id = c.cookies["egress_console"]
    c.close()
    return session_id, session["csrf"], jwt.decode(token, options={"verify_signature": False})["jti"]


def test_a_console_session_signed_in_on_a_works_on_b_and_signing_out_on_b_ends_it_on_a(fleet: Fleet) -> None:
    session_id, csrf, _ = signed_in(fleet.a, "console-ops")
    on_b = console_get(fleet.b, session_id, csrf)
    assert on_b.status_code == 200 and on_b.json() == {"approvals": []}
    assert (console_get(fleet.b, session_id, None).status_code, error_of(console_get(fleet.b, session_id, None))["code"]) == (
        403, "csrf_failed")
    assert error_of(console_get(fleet.b, session_id, "forged"))["code"] == "csrf_failed"
    assert console_get(fleet.a, session_id, csrf).status_code == 200
    resumed = httpx.get(f"{fleet.b.api_url}/console/session", headers={"Cookie": f"egress_console={session_id}"})
    assert resumed.status_code == 200 and resumed.json()["csrf"] == csrf and resumed.json()["sub"] == "console-ops"

    # Redis holds the session under its id's hash only: no key and no value holds the id itself.
    store = Redis.from_url(fleet.redis.url)
    dumped = [(k, store.dump(k)) for k in store.keys("*")]
    assert all(session_id.encode() not in k + (v if isinstance(v, bytes) else b"") for k, v in dumped)
    assert store.exists(redis_state.PREFIX + "console:session:" + hash_id(session_id)) == 1
    ttl = store.pttl(redis_state.PREFIX + "console:session:" + hash_id(session_id))
    assert 0 < ttl <= 600_000  # expires with the session (its token's ttl: 600 s)

    assert sign_out(fleet.b, session_id, csrf).status_code == 200
    ended = console_get(fleet.a, session_id, csrf)
    assert (ended.status_code, error_of(ended)["code"]) == (401, "identity_expired")
    assert store.exists(redis_state.PREFIX + "console:session:" + hash_id(session_id)) == 0
    signs = [(r["phase"], r["sub"]) for r in every_audit(fleet) if str(r.get("phase", "")).startswith("console_sign")]
    assert signs.count(("console_sign_in", "console-ops")) == 1 and signs.count(("console_sign_out", "console-ops")) == 1


def test_a_token_revoked_through_a_ends_its_console_session_on_b(fleet: Fleet) -> None:
    session_id, csrf, jti = signed_in(fleet.b, "revoked-ops")
    assert console_get(fleet.a, session_id, csrf).status_code == 200
    fleet.a.cli("token", "revoke", "--jti", jti)
    time.sleep(SHARED_BOUND)
    refused = console_get(fleet.b, session_id, csrf)
    assert (refused.status_code, error_of(refused)["code"]) == (401, "identity_revoked")
    after = console_get(fleet.a, session_id, csrf)  # the session was forgotten on the way
    assert (after.status_code, error_of(after)["code"]) == (401, "identity_expired")


def test_the_session_bounds_hold_across_replicas(fleet: Fleet) -> None:
    """`sessions_per_admin` 2 and `max_sessions` 4, for the fleet: sign-ins alternate replicas."""
    first = signed_in(fleet.a, "bounded-ops")
    second = signed_in(fleet.b, "bounded-ops")
    third = signed_in(fleet.a, "bounded-ops")  # the admin's oldest (first) ends for it
    assert error_of(console_get(fleet.b, first[0], first[1]))["code"] == "identity_expired"
    assert [console_get(fleet.b, s, c).status_code for s, c, _ in (second, third)] == [200, 200]
    others = [signed_in(fleet.b, "other-ops-1"), signed_in(fleet.a, "other-ops-2")]  # 4 open now
    token = fleet.b.token(sub="other-ops-3", role="admin")
    for gw in (fleet.a, fleet.b):
        full = httpx.post(f"{gw.api_url}/console/session", json={"token": token})
        assert (full.status_code, error_of(full)["code"]) == (429, "rate_limited")
    for session_id, csrf, _ in (second, third, *others):
        assert sign_out(fleet.a, session_id, csrf).status_code == 200
    store = Redis.from_url(fleet.redis.url)
    assert store.zcard(redis_state.CONSOLE_SESSIONS) == 0 and store.keys(redis_state.PREFIX + "console:session:*") == []


# --- the live decision stream --------------------------------------------------------------------

PAY = ("https://api.stripe.com/v1/payment_intents", {"amount": "1500", "currency": "usd"})


def pay_as(gw: GatewayProcess, sub: str, tenant: str) -> str:
    """One payment through `gw` by `sub` of `tenant`; its decision id."""
    with client(gw, gw.token(sub=sub, scopes=("stripe:*",), tenant=tenant)) as c:
        r = c.post(PAY[0], data=PAY[1])
    assert r.status_code == 200, r.text
    return r.headers["x-egress-decision-id"]


def open_stream(gw: GatewayProcess, tenant: str) -> AbstractContextManager[httpx.Response]:
    """A decisions stream on `gw` of an admin of `tenant`, read until it is quiet for SHARED_BOUND."""
    token = gw.token(sub=f"{tenant}-watcher", role="admin", tenant=tenant)
    return httpx.stream("GET", f"{gw.api_url}/v1/decisions/stream", headers={"Authorization": f"Bearer {token}"},
                        timeout=httpx.Timeout(20, read=SHARED_BOUND))


def held(fleet: Fleet, subs: set[str]) -> list[dict[str, Any]]:
    """The records of `subs` as both replicas' audit logs hold them, less the chain's own fields."""
    return sorted(({k: v for k, v in r.items() if k not in RESERVED} for r in every_audit(fleet) if r.get("sub") in subs),
                  key=lambda r: (r["decision_id"], r["phase"]))


def shown(records: list[dict[str, Any]], subs: set[str]) -> list[dict[str, Any]]:
    return sorted((r for r in records if r.get("sub") in subs), key=lambda r: (r["decision_id"], r["phase"]))


def test_a_stream_on_b_shows_calls_through_a_once_as_local_records_in_the_admins_tenant_only(fleet: Fleet) -> None:
    """Calls of two tenants through A and one through B, watched on B by a global admin and by
    acme's admin: each record once (B's own not echoed back through Redis), equal to what the audit
    logs hold less seq/prev/hash, within SHARED_BOUND of the call; acme's admin sees acme's only."""
    with open_stream(fleet.b, "*") as everyone, open_stream(fleet.b, "acme") as acme:
        assert (everyone.status_code, acme.status_code) == (200, 200)
        calls = [pay_as(fleet.a, "live-acme", "acme"), pay_as(fleet.a, "live-globex", "globex"),
                 pay_as(fleet.b, "live-acme", "acme")]
        on_everyone, on_acme = stream_decisions(everyone), stream_decisions(acme)
    subs = {"live-acme", "live-globex"}
    audited = held(fleet, subs)
    assert [(r["decision_id"], r["phase"]) for r in audited] == sorted((d, p) for d in calls for p in ("decision", "outcome"))
    assert shown(on_everyone, subs) == audited
    assert shown(on_acme, subs) == [r for r in audited if r["tenant"] == "acme"]
    assert {r["tenant"] for r in on_acme} == {"acme"}


# --- Redis down (last: the module's Redis comes back empty) --------------------------------------


def test_with_redis_down_the_ported_stores_refuse_503_never_500(fleet: Fleet) -> None:
    session_id, csrf, _ = signed_in(fleet.a, "outage-ops")
    stores = redis_state.connect(fleet.redis.url)
    mcp, connectors = redis_state.RedisMcpStore(stores), redis_state.RedisConnectorStore(stores)
    fleet.redis.kill()
    console = console_get(fleet.b, session_id, csrf)
    pins = httpx.get(f"{fleet.a.api_url}/v1/mcp/pins", headers=bearer(fleet.a))
    registered = httpx.post(f"{fleet.b.api_url}/v1/connectors", json=document(), headers=bearer(fleet.b))
    for r in (console, pins, registered):
        assert (r.status_code, error_of(r)["code"]) == (503, "store_unavailable"), r.text
    for read in (lambda: mcp.session_agent("s"), lambda: mcp.observe("s", "t", "d", 10), connectors.version):
        with pytest.raises(redis_state.StateStoreDown):
            read()
    fleet.redis.start()
    for gw in (fleet.a, fleet.b):  # Redis came back empty: what was registered there is gone, and nothing else
        deadline = time.monotonic() + 30
        while httpx.get(f"{gw.api_url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, f"{gw} never became ready"
            time.sleep(0.1)
    gone = console_get(fleet.a, session_id, csrf)
    assert (gone.status_code, error_of(gone)["code"]) == (401, "identity_expired")


def test_after_redis_comes_back_a_stream_on_b_shows_calls_through_a_again(fleet: Fleet) -> None:
    """Both replicas subscribe again by themselves (no restart), and the relay goes on."""
    store = Redis.from_url(fleet.redis.url)
    deadline = time.monotonic() + 30
    while store.pubsub_numsub(redis_state.DECISIONS_CHANNEL) != [(redis_state.DECISIONS_CHANNEL.encode(), 2)]:
        assert time.monotonic() < deadline, store.pubsub_numsub(redis_state.DECISIONS_CHANNEL)
        time.sleep(0.1)
    with open_stream(fleet.b, "*") as stream:
        call = pay_as(fleet.a, "live-after-outage", "acme")
        seen = stream_decisions(stream)
    assert [(r["decision_id"], r["phase"]) for r in shown(seen, {"live-after-outage"})] == [(call, "decision"), (call, "outcome")]
