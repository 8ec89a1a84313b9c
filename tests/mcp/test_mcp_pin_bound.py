"""A hostile MCP server listing new tool names on every call cannot grow the pins or the audit log
without bound: `mcp_servers.NAME.max_pinned_tools` caps the names pinned per server, in SQLite and
on Redis (`stores.state`); past it a new name is hidden and refused, and each listing that hid some
is audited once, never once per tool. Real gateway processes, the raw-socket hostile server.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.mcp.store import McpStore, Seen
from gateway.stores import redis_state
from tests.chaos.test_fleet_state import shared_keys
from tests.fakes import PKI
from tests.mcp.test_hostile_mcp_server import HOST, MCP_TOKEN, POLICY, URL, HostileMcp, _records, _tool, rpc
from tests.processes import GatewayProcess, RedisServer

BOUND = 5
NEW_PER_LIST = 10


@pytest.fixture(scope="module")
def server(pki: PKI) -> Iterator[HostileMcp]:
    s = HostileMcp(pki)
    yield s
    s.close()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    r = RedisServer(tmp_path_factory.mktemp("pin-bound-redis")).start()
    yield r
    r.kill()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: PKI, server: HostileMcp) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp(f"pin-bound-{request.param}")
    (root / "policies").mkdir()
    (root / "policies" / "finance.yaml").write_text(POLICY)
    settings: dict[str, Any] = {
        "upstreams": {HOST: server.url},
        "upstream_ca": str(pki.ca_file),
        "policies": str(root / "policies"),
        "mcp_servers": {"evil": {"url": URL, "credential": "env:TEST_MCP_TOKEN", "max_pinned_tools": BOUND}},
        "timeouts": {"connect": "2s", "read": "3s"},
    }
    if request.param == "redis":
        settings["stores"] = {"state": request.getfixturevalue("redis").url}
        settings["keys"] = shared_keys(root / "keys")["keys"]
    with GatewayProcess(root, settings, {"TEST_MCP_TOKEN": MCP_TOKEN}).start() as g:
        yield g


def test_new_names_past_the_bound_are_hidden_refused_and_audited_once_per_listing(gw: GatewayProcess, server: HostileMcp) -> None:
    fresh = itertools.count()
    # Every listing names NEW_PER_LIST tools never seen before, after the one the policy allows.
    server.methods["tools/list"] = lambda m: {"tools": [_tool("get_balance")] + [_tool(f"rug_{next(fresh)}") for _ in range(NEW_PER_LIST)]}
    since = len(gw.audit())
    for _ in range(3):
        r = rpc(gw, "tools/list")
        assert [t["name"] for t in r.json()["result"]["tools"]] == ["get_balance"]
    pins = [json.loads(line)["tool"] for line in gw.cli("mcp", "pins", "evil").stdout.splitlines()]
    assert pins == sorted(["get_balance", "rug_0", "rug_1", "rug_2", "rug_3"])
    assert len(_records(gw, since, type="mcp_tool_pinned")) == BOUND
    over = _records(gw, since, type="mcp_tools_over_limit")
    assert [(rec["server"], rec["hidden"], rec["max_pinned_tools"]) for rec in over] == [
        ("evil", NEW_PER_LIST + 1 - BOUND, BOUND), ("evil", NEW_PER_LIST, BOUND), ("evil", NEW_PER_LIST, BOUND)]
    assert not any("rug_" in json.dumps(rec) for rec in over)  # counts, never the server's names

    server.methods["tools/call"] = lambda m: {"content": [{"type": "text", "text": "10000 usd"}]}
    called = len(server.bodies)
    hidden = rpc(gw, "tools/call", {"name": "rug_25", "arguments": {}}, ident=5).json()
    assert hidden["error"]["data"]["code"] == "unknown_action"
    assert len(server.bodies) == called  # refused before the server
    ok = rpc(gw, "tools/call", {"name": "get_balance", "arguments": {}}, ident=6).json()
    assert ok["result"]["content"][0]["text"] == "10000 usd"


def _bounded(store: McpStore) -> None:
    assert [store.observe("a", f"t{i}", "sha256:1", 3) for i in range(5)] == [Seen.NEW] * 3 + [Seen.OVER_LIMIT] * 2
    assert store.observe("b", "t0", "sha256:1", 3) is Seen.NEW  # per server
    assert store.observe("a", "t0", "sha256:2", 3) is Seen.CHANGED  # a pinned tool is still guarded
    assert store.observe("a", "t4", "sha256:1", 4) is Seen.NEW  # a raised bound pins again
    assert [p.tool for p in store.pins("a")] == ["t0", "t1", "t2", "t4"]


def test_the_sqlite_store_bounds_pins_per_server(tmp_path: Path) -> None:
    store = McpStore(tmp_path / "mcp.sqlite")
    try:
        _bounded(store)
    finally:
        store.close()


def test_the_redis_store_bounds_pins_per_server_and_recounts_a_store_written_before_the_counts(redis: RedisServer) -> None:
    client = redis_state.connect(redis.url.removesuffix("/0") + "/1")  # not the gateway's database
    _bounded(redis_state.RedisMcpStore(client))
    client.delete(redis_state.MCP_PIN_COUNTS)  # as a store written by the previous version
    again = redis_state.RedisMcpStore(client, {"a": {"cfg": "sha256:" + "c" * 64}})
    assert client.hgetall(redis_state.MCP_PIN_COUNTS) == {b"a": b"5", b"b": b"1"}
    assert again.observe("a", "t9", "sha256:1", 5) is Seen.OVER_LIMIT


def test_a_full_server_costs_the_sqlite_store_no_scan_of_its_pins(tmp_path: Path) -> None:
    """Each new name of a server at its bound counted every pin of that server (`COUNT(*)`), on the
    proxy's event loop, for each name of each listing: 1000 new names against 50 000 pins held
    every agent's traffic about 2.5 s per listing (0.4 s at the default 5000). Pins are never
    deleted, so a count once at the bound stays there: later names are refused without a count."""
    store = McpStore(tmp_path / "mcp.sqlite")
    try:
        assert [store.observe("a", f"t{i}", "sha256:1", 3) for i in range(4)] == [Seen.NEW] * 3 + [Seen.OVER_LIMIT]
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        assert [store.observe("a", f"rug{i}", "sha256:1", 3) for i in range(100)] == [Seen.OVER_LIMIT] * 100
        assert store.observe("a", "t0", "sha256:1", 3) is Seen.SAME  # a pinned tool is still served
        assert store.observe("a", "t0", "sha256:2", 3) is Seen.CHANGED  # and still guarded
        assert not [s for s in statements if "COUNT(" in s.upper()]
        assert store.observe("a", "t9", "sha256:1", 5) is Seen.NEW  # a raised bound counts again
    finally:
        store.close()
