"""The revocation list on SQLite (one gateway) and on Redis (a fleet): the same answers, and the
Redis store's own rules: revocations are never forgotten, and a list that cannot be read refuses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.errors import Refusal
from gateway.identity.revocation import Revocations
from gateway.stores import redis_state
from tests.processes import RedisServer, free_port

REDIS_DB = 8  # a database of the session's redis-server of its own, emptied for each test


def _redis_revocations(server: RedisServer) -> redis_state.RedisRevocations:
    url = f"redis://127.0.0.1:{server.port}/{REDIS_DB}"
    redis_state.connect(url).flushdb()
    return redis_state.RedisRevocations(redis_state.connect(url), url)


@pytest.fixture(params=["sqlite", "redis"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Revocations, Revocations]:
    """Two handles on one store: where `token revoke` writes, and what a (second) gateway reads."""
    if request.param == "sqlite":
        return Revocations(tmp_path / "r.sqlite"), Revocations(tmp_path / "r.sqlite")
    server = request.getfixturevalue("redis")
    writer = _redis_revocations(server)
    url = f"redis://127.0.0.1:{server.port}/{REDIS_DB}"
    return writer, redis_state.RedisRevocations(redis_state.connect(url), url)


def test_a_revocation_written_by_one_is_seen_by_the_other(pair: tuple[Revocations, Revocations]) -> None:
    writer, reader = pair
    now = time.time()
    writer.revoke(jti="j-1")
    writer.revoke(sub="agent-7")
    reader.refresh()
    assert reader.is_revoked("j-1", "someone", now)
    assert reader.is_revoked("j-2", "agent-7", now - 5)  # issued before the subject's revocation
    assert not reader.is_revoked("j-3", "agent-7", now + 60)  # issued after it
    assert not reader.is_revoked("j-4", "agent-8", now)
    with pytest.raises(ValueError):
        writer.revoke(jti="a", sub="b")


def test_a_redis_that_comes_back_empty_does_not_unrevoke(redis: RedisServer) -> None:
    store = _redis_revocations(redis)
    store.revoke(jti="kept")
    redis_state.connect(f"redis://127.0.0.1:{redis.port}/{REDIS_DB}").flushdb()  # as a restart without persistence
    store.refresh()
    assert store.is_revoked("kept", "x", time.time())


def test_a_list_that_cannot_be_read_refuses_every_identity() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = redis_state.RedisRevocations(redis_state.connect(url), url)  # down from the start: logged, not fatal
    with pytest.raises(Refusal) as refused:
        store.is_revoked("j", "s", time.time())
    assert refused.value.code == "store_unavailable"
    with pytest.raises(redis_state.StateStoreDown):
        store.refresh()
