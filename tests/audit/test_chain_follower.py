"""Following the other workers' audit chains for the live streams (`gateway.audit.feed.ChainFollower`),
and the Redis relay's handling of what arrives on its channel, on real files and real `AuditLog`s.

A chain written by a worker is hostile input here only in its shape (torn, overlong, replaced): the
follower must show each whole record once, from the stream's start on, and hold no more than its
chunk of any chain.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.feed import ChainFollower
from gateway.audit.log import AuditLog, canonical
from gateway.live_decisions import LiveDecisions
from gateway.stores.redis_state import RedisFeed, connect

KEY = Ed25519PrivateKey.generate()


def chain(root: Path, worker: int) -> AuditLog:
    return AuditLog(root / f"audit.r1.{worker}.jsonl", KEY, sign_every=2, origin={"replica": "r1", "worker": worker})


def paths(root: Path) -> list[Path]:
    return sorted(root.glob("audit*.jsonl"))


def test_only_the_other_chains_records_written_since_start_each_once_as_written(tmp_path: Path) -> None:
    own, other = chain(tmp_path, 0), chain(tmp_path, 1)
    follower = ChainFollower(own.path)
    other.write({"decision_id": "before", "phase": "decision"})
    assert follower.poll(paths(tmp_path)) == []  # not following: no stream open
    follower.start(paths(tmp_path))
    written = [other.write({"decision_id": f"d{i}", "phase": "decision", "tenant": "acme"}) for i in range(5)]
    own.write({"decision_id": "mine", "phase": "decision"})
    got = follower.poll(paths(tmp_path))
    assert got == written  # signatures (every 2nd line) left out; seq/prev/hash stripped; origin kept
    assert [r["worker"] for r in got] == [1] * 5 and all("seq" not in r and "hash" not in r for r in got)
    assert follower.poll(paths(tmp_path)) == []
    late = chain(tmp_path, 2)  # a worker whose chain began after the stream opened: read from its start
    late_record = late.write({"decision_id": "late", "phase": "decision"})
    assert follower.poll(paths(tmp_path)) == [late_record]
    follower.stop()
    other.write({"decision_id": "unwatched", "phase": "decision"})
    assert follower.poll(paths(tmp_path)) == []


def test_a_line_being_written_is_read_once_whole_and_one_begun_before_start_never(tmp_path: Path) -> None:
    own = chain(tmp_path, 0)
    other = tmp_path / "audit.r1.1.jsonl"
    line = canonical({"decision_id": "torn", "phase": "decision"})
    other.write_bytes(line[:10])  # a worker mid-write when the stream opens
    follower = ChainFollower(own.path)
    follower.start(paths(tmp_path))
    with other.open("ab") as f:
        f.write(line[10:] + b"\n")
        f.write(canonical({"decision_id": "next", "phase": "decision"})[:7])
    assert follower.poll(paths(tmp_path)) == []  # the first began before the start; the next is not whole
    with other.open("ab") as f:
        f.write(canonical({"decision_id": "next", "phase": "decision"})[7:] + b"\n")
    assert follower.poll(paths(tmp_path)) == [{"decision_id": "next", "phase": "decision"}]


def test_an_overlong_line_is_skipped_without_being_held_and_what_follows_is_read(tmp_path: Path) -> None:
    own = chain(tmp_path, 0)
    other = tmp_path / "audit.r1.1.jsonl"
    other.write_bytes(b"")
    follower = ChainFollower(own.path, chunk=1024)
    follower.start(paths(tmp_path))
    huge = canonical({"decision_id": "huge", "phase": "decision", "pad": "x" * 5000})
    after = {"decision_id": "after", "phase": "decision"}
    other.write_bytes(huge + b"\n" + canonical(after) + b"\n")
    polls = [follower.poll(paths(tmp_path)) for _ in range(6)]  # 1 KiB a read: 5 reads to pass the line
    assert [p for p in polls if p] == [[after]]
    assert polls[-1] == []


def test_a_chain_replaced_by_a_new_file_is_read_from_its_start(tmp_path: Path) -> None:
    own = chain(tmp_path, 0)
    other = chain(tmp_path, 1)
    follower = ChainFollower(own.path)
    for i in range(3):
        other.write({"decision_id": f"old{i}", "phase": "decision"})
    follower.start(paths(tmp_path))
    other.close()
    other.path.rename(tmp_path / "moved.jsonl")
    fresh = chain(tmp_path, 1)
    new_record = fresh.write({"decision_id": "new", "phase": "decision"})
    assert follower.poll(paths(tmp_path)) == [new_record]


def test_the_redis_relay_publishes_other_origins_batches_in_order_and_drops_its_own_and_garbage() -> None:
    unused = "redis://127.0.0.1:1/0"  # the handler sends no command: nothing listens there
    feed = RedisFeed(connect(unused), unused, "r1", 0)

    async def run() -> list[dict[str, Any]]:
        live = LiveDecisions()
        await feed._relay(json.dumps({"origin": "r2/-/x", "records": [{"n": 0}]}).encode(), live)  # no stream: dropped
        sub = live.subscribe()
        assert sub is not None
        for data in (
            json.dumps({"origin": "r2/-/x", "records": [{"n": 1}, {"n": 2}]}).encode(),
            json.dumps({"origin": feed.origin, "records": [{"n": "mine"}]}).encode(),
            b"not json", b"[1, 2]", json.dumps({"origin": "r3/0/y"}).encode(),
            json.dumps({"origin": "r3/0/y", "records": {"n": "not a list"}}).encode(),
            json.dumps({"origin": "r3/0/y", "records": [7, {"n": 3}]}).encode(),
        ):
            await feed._relay(data, live)
        return [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]

    assert asyncio.run(run()) == [{"n": 1}, {"n": 2}, {"n": 3}]
