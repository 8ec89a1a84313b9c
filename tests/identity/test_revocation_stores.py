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


# Entries no gateway writes, planted by another program with write access to the Redis: not JSON,
# not an object, a missing or mistyped field, NaN, bytes that are not UTF-8.
FOREIGN_ENTRIES = [
    b"not json", b"\xff\xfe", b"[]", b'"jti"', b'{"kind": "jti"}', b'{"kind": "jti", "value": ["x"], "at": 1}',
    b'{"kind": "sub", "value": "x", "at": "soon"}', b'{"kind": "sub", "value": "x", "at": NaN}',
    b'{"kind": "sub", "value": "x", "at": true}', b'{"kind": "group", "value": "x", "at": 1}',
]


@pytest.mark.parametrize("entry", FOREIGN_ENTRIES)
def test_an_entry_no_gateway_wrote_refuses_until_it_is_gone(redis: RedisServer, entry: bytes) -> None:
    """It used to raise out of `refresh` (a JSON or key error), which ended the replica's watcher
    without a log line: every identity refused until a restart, even after the entry was removed."""
    store = _redis_revocations(redis)
    store.revoke(jti="kept")
    raw = redis_state.connect(f"redis://127.0.0.1:{redis.port}/{REDIS_DB}")
    raw.rpush(redis_state.REVOCATIONS, entry)
    with pytest.raises(redis_state.StateStoreDown) as down:
        store.refresh()
    assert str(down.value) == "the revocation list in Redis holds an entry no gateway wrote (position 2)"
    raw.rpop(redis_state.REVOCATIONS)
    store.refresh()
    assert store.is_revoked("kept", "x", time.time()) and not store.is_revoked("other", "x", time.time())


@pytest.mark.parametrize("entry", [b"{bad", b"{}", b'{"scope": "sub", "value": "a", "released": 0, "reason": "r", "by": "b", "at": 1}',
                                   b'{"scope": "galaxy", "value": "a", "released": false, "reason": "r", "by": "b", "at": 1}'])
def test_a_quarantine_list_that_cannot_be_read_refuses_every_agent(redis: RedisServer, entry: bytes) -> None:
    """A quarantine list this replica cannot read must not leave agents let through: a quarantine
    made after the foreign entry was silently never applied (the watcher died on the entry)."""
    url = f"redis://127.0.0.1:{redis.port}/{REDIS_DB}"
    raw = redis_state.connect(url)
    raw.flushdb()
    writer = redis_state.RedisQuarantines(redis_state.connect(url))
    writer.set("sub", "earlier", release=False, reason="probe", by="test")
    raw.rpush(redis_state.QUARANTINES, entry)
    reader = redis_state.RedisQuarantines(redis_state.connect(url))  # starts with the entry in place: logged
    with pytest.raises(Refusal) as refused:
        reader.hit("bystander", "t")
    assert refused.value.code == "store_unavailable"
    with pytest.raises(redis_state.StateStoreDown, match=r"quarantine list .* \(position 2\)$"):
        reader.refresh()
    raw.rpop(redis_state.QUARANTINES)
    reader.refresh()
    assert reader.hit("bystander", "t") is None
    found = reader.hit("earlier", "t")
    assert found is not None and found.scope == "sub"
