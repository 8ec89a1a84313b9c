"""Revocations are kept only while a token they stop could still be valid (they were kept forever).

Every accepted token's lifetime is capped (`max_token_ttl`, `metrics_token_ttl`, plus the leeway),
so an entry older than `kept_for(config)` stops nothing an expiry check would not. Both stores
drop such entries on every revoke and on the periodic prune, and a replica's in-memory union drops
them too. The store tests drive a clock; the gateway test waits out a real 4 s lifetime.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Config
from gateway.identity.revocation import PRUNE_SECONDS, Revocations, kept_for
from gateway.state import StateDir
from gateway.stores import redis_state
from tests.chaos.test_fleet_state import shared_keys
from tests.clients import client, error_of
from tests.fakes import FakeVendor, vendor_settings
from tests.processes import GatewayProcess, RedisServer

REDIS_DB = 9  # a database of the session's redis-server of its own, emptied for each test
KEPT = 100.0
TTL = 4  # the gateway test's token lifetime cap, long enough for a CLI revoke and a call inside it


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _stores(kind: str, tmp_path: Path, clock: Clock, request: pytest.FixtureRequest) -> tuple[Revocations, Revocations]:
    """Where `token revoke` writes, and what a gateway reads, on one store."""
    if kind == "sqlite":
        return Revocations(tmp_path / "r.sqlite", KEPT, clock), Revocations(tmp_path / "r.sqlite", KEPT, clock)
    server: RedisServer = request.getfixturevalue("redis")
    url = f"redis://127.0.0.1:{server.port}/{REDIS_DB}"
    redis_state.connect(url).flushdb()
    return (redis_state.RedisRevocations(redis_state.connect(url), url, KEPT, clock),
            redis_state.RedisRevocations(redis_state.connect(url), url, KEPT, clock))


def test_kept_for_is_the_longest_lifetime_cap_plus_three_leeways() -> None:
    assert kept_for(Config.model_validate({"max_token_ttl": "30m", "metrics_token_ttl": "1h", "token_leeway": "10s"})) == 3630
    assert kept_for(Config.model_validate({"max_token_ttl": "2h", "metrics_token_ttl": "1h", "token_leeway": "100ms"})) == 7200.3


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_old_entries_are_pruned_on_write_and_periodically_and_live_ones_stay(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    clock = Clock()
    writer, reader = _stores(kind, tmp_path, clock, request)
    issued = clock.now - 1
    writer.revoke(jti="old-jti")
    writer.revoke(sub="old-agent")
    clock.now += 50
    writer.revoke(jti="mid-jti")
    reader.refresh()
    assert writer.count() == 3
    assert reader.is_revoked("old-jti", "x", issued) and reader.is_revoked("any", "old-agent", issued)

    clock.now += 51  # the first two are now older than KEPT
    writer.revoke(jti="new-jti")  # prune on write
    assert writer.count() == 2
    reader.refresh()
    assert not reader.is_revoked("old-jti", "x", issued)
    assert not reader.is_revoked("any", "old-agent", issued)
    assert reader.is_revoked("mid-jti", "x", issued) and reader.is_revoked("new-jti", "x", issued)

    clock.now += 50  # mid-jti now older than KEPT: the periodic prune drops it
    reader.prune()
    assert writer.count() == 1
    assert not reader.is_revoked("mid-jti", "x", issued) and reader.is_revoked("new-jti", "x", issued)


def test_without_a_bound_nothing_is_pruned(tmp_path: Path) -> None:
    clock = Clock()
    store = Revocations(tmp_path / "r.sqlite", clock=clock)
    store.revoke(jti="a")
    clock.now += 10 * 365 * 86400
    store.revoke(jti="b")
    store.prune()
    assert store.count() == 2 and store.is_revoked("a", "x", 0)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.chaos_full)])  # the Redis store's pruning is above
def test_a_pruned_token_is_refused_as_expired_and_a_live_one_stays_revoked(
    make_gateway: Any, pki: Any, vendor: FakeVendor, store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    extra: dict[str, Any] = {"max_token_ttl": f"{TTL}s", "metrics_token_ttl": f"{TTL}s", "token_leeway": "100ms"}
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        extra["stores"] = {"state": f"redis://127.0.0.1:{server.port}/{REDIS_DB}"}
        extra["keys"] = shared_keys(tmp_path / "keys")["keys"]
        redis_state.connect(extra["stores"]["state"]).flushdb()
    gw: GatewayProcess = make_gateway(vendor_settings(pki, vendor, **extra))

    def count() -> int:
        if store == "redis":
            return int(redis_state.connect(extra["stores"]["state"]).llen(redis_state.REVOCATIONS))
        return Revocations(StateDir.open(gw.state_dir).revocations).count()

    def call(token: str) -> tuple[int, str | None]:
        with client(gw, token) as c:
            r = c.get("https://api.stripe.com/v1/balance")
        return r.status_code, error_of(r)["code"] if r.status_code != 200 else None

    def revoke(sub: str) -> None:
        """Through the running gateway's API (no CLI start-up inside a 4 s lifetime); it writes
        the same store `token revoke` does, and prunes on that write."""
        admin = gw.token(sub="ops", role="admin", ttl=TTL, max_ttl=TTL)
        for _ in range(20):  # on Redis the call's record reaches the shared feed in its next batch
            r = httpx.post(f"{gw.api_url}/v1/agents/{sub}/revoke", headers={"Authorization": f"Bearer {admin}"}, timeout=10)
            if r.status_code != 404:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text

    pruned = gw.token(sub="pruned", scopes=("stripe:*",), ttl=TTL, max_ttl=TTL)
    assert call(pruned) == (200, None)  # the API revokes agents it has seen
    revoke("pruned")
    assert count() == 1
    time.sleep(TTL + 0.5)  # the token's whole lifetime: kept_for is TTL + 0.3 s here
    live = gw.token(sub="live", scopes=("stripe:*",), ttl=TTL, max_ttl=TTL)
    assert call(live) == (200, None)
    revoke("live")
    assert count() == 1  # the first entry went on this write
    time.sleep(0.6)  # the gateway's reload (every 0.25 s)
    assert [call(pruned), call(live)] == [(407, "identity_expired"), (407, "identity_revoked")]


def test_a_redis_that_refuses_writes_still_serves_the_revocations_it_holds(tmp_path: Path) -> None:
    """Pruning is a write, reading is not: a Redis that refuses writes (disk full: MISCONF; too
    few replicas: NOREPLICAS; a demoted primary: READONLY) still answers reads, and a replica must
    keep reading the list through it. Its refresh pruned first and gave up when the prune failed,
    so every agent of every replica started then was refused `store_unavailable` (and a running
    replica, at its next prune) for as long as the writes were refused."""
    server = RedisServer(tmp_path).start()  # its own: the write refusal is server-wide
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        clock = Clock()
        writer = redis_state.RedisRevocations(redis_state.connect(url), url, KEPT, clock)
        issued = clock.now - 1
        writer.revoke(jti="old-jti")
        clock.now += 50
        writer.revoke(jti="live-jti")
        redis_state.connect(url).config_set("min-replicas-to-write", 1)  # every write now NOREPLICAS
        clock.now += 51  # old-jti is now prunable; cutting it is refused

        reader = redis_state.RedisRevocations(redis_state.connect(url), url, KEPT, clock)  # a replica starting now
        assert reader.is_revoked("live-jti", "x", issued)
        assert not reader.is_revoked("old-jti", "x", issued)  # past kept_for: refused as expired anyway
        assert not reader.is_revoked("other-jti", "x", issued)
        assert writer.count() == 2  # nothing could be cut
        with pytest.raises(redis_state.StateStoreDown):
            reader.prune()  # asked for explicitly, the failure is the caller's

        redis_state.connect(url).config_set("min-replicas-to-write", 0)
        writer.revoke(jti="next-jti")  # the next write prunes
        reader.refresh()
        assert writer.count() == 2 and reader.is_revoked("next-jti", "x", issued) and reader.is_revoked("live-jti", "x", issued)
    finally:
        server.kill()


@pytest.mark.chaos_full  # waits out PRUNE_SECONDS; the store test above is the fast case
def test_a_gateway_keeps_serving_when_its_redis_refuses_the_periodic_prune(
    make_gateway: Any, pki: Any, vendor: FakeVendor, tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        extra: dict[str, Any] = {"stores": {"state": url}, "keys": shared_keys(tmp_path / "keys")["keys"]}
        gw: GatewayProcess = make_gateway(vendor_settings(pki, vendor, **extra))
        store = redis_state.connect(url)
        revoked = gw.token(sub="revoked", scopes=("stripe:*",))
        token = gw.token(sub="worker", scopes=("stripe:*",))
        gw.cli("token", "revoke", "--sub", "revoked")
        # An entry far older than kept_for, which the next periodic prune must cut, and cannot.
        store.lpush(redis_state.REVOCATIONS, json.dumps({"kind": "sub", "value": "gone", "at": time.time() - 400 * 86400}))
        store.config_set("min-replicas-to-write", 1)  # from now on every write is NOREPLICAS
        time.sleep(PRUNE_SECONDS + 2)  # the watcher's prune has been tried, and refused

        def call(tok: str) -> tuple[int, str | None]:
            with client(gw, tok) as c:
                r = c.get("https://api.stripe.com/v1/balance")
            return r.status_code, error_of(r)["code"] if r.status_code != 200 else None

        assert [call(token), call(revoked)] == [(200, None), (407, "identity_revoked")]
        assert store.llen(redis_state.REVOCATIONS) == 2
        assert "cannot prune old revocations" in gw.log_file.read_text()
    finally:
        server.kill()
