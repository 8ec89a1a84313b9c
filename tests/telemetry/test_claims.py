"""Each quarantine change and CLI baseline request is audited, and so exported to the SIEM, by
exactly one gateway process (issue 16): every process on the store learns of it (workers of one
gateway, replicas of a fleet), the first to claim it records it. Two processes' views of one real
store (SQLite in the state dir, or Redis) stand for two gateway processes here."""

from __future__ import annotations

from pathlib import Path

import redis as redis_client

from gateway.identity.quarantine import Quarantines
from gateway.stores.redis_state import QUARANTINES, QUARANTINES_AUDITED, RedisQuarantines
from gateway.telemetry.baseline import BaselineFile
from tests.processes import RedisServer


def test_a_quarantine_change_is_claimed_by_one_process_of_the_state_dir(tmp_path: Path) -> None:
    path = tmp_path / "revocations.sqlite"
    api_worker, other_worker = Quarantines(path), Quarantines(path)
    (made,) = api_worker.set("sub", "agent-1", release=False, reason="incident", by="api:ops")
    (seen,) = other_worker.refresh()  # its watcher learns of it too
    assert seen == made
    assert [api_worker.claim(made), other_worker.claim(seen), api_worker.claim(made)] == [True, False, False]
    # A change made by the CLI (a third process) is claimed by whichever gateway asks first.
    (by_cli,) = Quarantines(path).set("sub", "agent-1", release=True, reason="resolved", by="cli")
    assert [other_worker.claim(c) for c in other_worker.refresh()] == [True]
    assert [api_worker.claim(c) for c in api_worker.refresh()] == [False]
    assert by_cli.id == made.id + 1


def test_a_quarantine_change_is_claimed_once_across_a_fleet(redis: RedisServer) -> None:
    client = redis_client.Redis.from_url(redis.url)
    client.delete(QUARANTINES, QUARANTINES_AUDITED)
    replica_a, replica_b = RedisQuarantines(client), RedisQuarantines(client)
    (made,) = replica_a.set("tenant", "acme", release=False, reason="incident", by="anomaly")
    (seen,) = replica_b.refresh()
    assert [replica_b.claim(seen), replica_a.claim(made)] == [True, False]
    client.delete(QUARANTINES, QUARANTINES_AUDITED)


def test_a_cli_baseline_request_is_claimed_by_one_process(tmp_path: Path) -> None:
    path = tmp_path / "baselines.sqlite"
    workers = [BaselineFile(path), BaselineFile(path), BaselineFile(path)]
    assert [w.take_requests() for w in workers] == [[], [], []]  # the first look only notes where it is
    cli = BaselineFile(path)
    cli.request("/agent-1", "reset")
    cli.request("acme/agent-2", "ratify")
    taken = [w.take_requests() for w in workers]
    assert [[(r.agent, r.verb) for r in t] for t in taken] == [[("/agent-1", "reset"), ("acme/agent-2", "ratify")]] * 3
    assert [[r.mine for r in t] for t in taken] == [[True, True], [False, False], [False, False]]
    assert [w.take_requests() for w in workers] == [[], [], []]  # each request is taken once per process
