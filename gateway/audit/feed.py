"""The recent-decisions feed of a host's workers, read back from their audit chains.

With `run --workers N` each worker sees only the calls it served; `GET /v1/decisions` must show the
host's, whichever worker answers. Every record the feed shows is already in some worker's chain in
the state directory, so the feed is the newest records of all chains, merged by time: nothing to
keep in step between processes, and nothing a dead worker takes with it. Only the end of each file
is read (the chains grow without bound). A torn last line (a worker killed mid-write) is skipped.
Aggregated records of unauthenticated noise appear as the audit holds them (one per source and
window), not one per refused connection as a single process's in-memory feed shows them.

The live streams (`GET /v1/decisions/stream`) see the other workers' records the same way: while
at least one stream is open in this worker, `ChainFollower` reads what the other chains gained
since the first stream opened, every `FOLLOW_SECONDS`, at most `FOLLOW_BYTES` of each chain per
read, only whole lines (a line still being written is read once it ends), and hands the records to
the streams alone. With no stream open it does nothing, not even a stat.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.audit.log import RESERVED, SIGNATURE
from gateway.live_decisions import LiveDecisions
from gateway.stores.feed import RECENT_DECISIONS

if TYPE_CHECKING:
    from gateway.state import StateDir

_BYTES_PER_RECORD = 2048  # a generous average: decision records are ~0.5-1 KiB
FOLLOW_SECONDS = 0.25
FOLLOW_BYTES = 256 * 1024  # per chain and read: ~250 records, so a busy worker is followed at ~1000/s


def tail(path: Path, limit: int) -> list[dict[str, Any]]:
    """The last `limit` records of one chain (signatures left out), oldest first."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            want = limit * _BYTES_PER_RECORD
            while True:
                start = max(0, size - want)
                f.seek(start)
                lines = f.read(size - start).split(b"\n")
                if start > 0:
                    lines = lines[1:]  # the first line read may be the end of a longer one
                records = [r for r in map(_record, lines) if r is not None]
                if len(records) >= limit or start == 0:
                    return records[-limit:]
                want *= 4
    except FileNotFoundError:
        return []


def recent(paths: Iterable[Path], limit: int) -> list[dict[str, Any]]:
    """The newest `limit` records of all chains, oldest first (ordered by their `ts`)."""
    merged = heapq.merge(*(tail(p, limit) for p in paths), key=lambda r: str(r.get("ts", "")))
    return list(merged)[-limit:]


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("type") == SIGNATURE:
        return None
    return {k: v for k, v in rec.items() if k not in RESERVED}


@dataclass
class _Position:
    inode: int  # a chain replaced by another file is read from its start
    offset: int  # where the next whole line begins (or the rest of a skipped one)
    skipping: bool = False  # the bytes up to the next newline are the end of a line not to read


class ChainFollower:
    """Reads the records the other workers' chains gained since `start`, for the live streams.

    `start` runs on the event loop when the first stream opens (a few stats); `poll` runs in a
    thread. A line longer than `chunk` (no record is near it) is skipped rather than held whole.
    """

    def __init__(self, own: Path, chunk: int = FOLLOW_BYTES) -> None:
        self._own, self._chunk = own, chunk
        self._at: dict[Path, _Position] | None = None  # None: not following (no stream open)
        self._lock = threading.Lock()

    def start(self, paths: Iterable[Path]) -> None:
        """From each chain's end now: a stream shows what is written after it opened."""
        ends = {p: end for p in paths if p != self._own and (end := _end(p)) is not None}
        with self._lock:
            self._at = ends

    def stop(self) -> None:
        with self._lock:
            self._at = None

    def poll(self, paths: Iterable[Path]) -> list[dict[str, Any]]:
        """The new records of every other chain, each chain's in its order. A chain that appeared
        after `start` is new since then: read from its start."""
        with self._lock:
            at = self._at
            if at is None:
                return []
            lines = [line for p in paths if p != self._own for line in self._read(p, at)]
        return [r for r in map(_record, lines) if r is not None]

    def _read(self, path: Path, positions: dict[Path, _Position]) -> list[bytes]:
        try:
            with path.open("rb") as f:
                st = os.fstat(f.fileno())
                at = positions.get(path)
                if at is None or at.inode != st.st_ino:
                    at = positions[path] = _Position(st.st_ino, 0)
                elif st.st_size < at.offset:  # cut back in place: go on from its new end
                    at.offset, at.skipping = st.st_size, False
                f.seek(at.offset)
                data = f.read(self._chunk)
        except FileNotFoundError:
            positions.pop(path, None)
            return []
        end = data.rfind(b"\n")
        if end < 0:  # no whole line yet, or the middle of an overlong one
            if len(data) == self._chunk:
                at.offset, at.skipping = at.offset + len(data), True
            return []
        at.offset += end + 1
        lines = data[:end].split(b"\n")
        if at.skipping:
            lines, at.skipping = lines[1:], False
        return lines


def _end(path: Path) -> _Position | None:
    """A chain's end now; a last line still being written is skipped, not read from its middle."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            torn = st.st_size > 0 and os.pread(f.fileno(), 1, st.st_size - 1) != b"\n"
            return _Position(st.st_ino, st.st_size, torn)
    except FileNotFoundError:
        return None


class AuditChainsFeed:
    """The `DecisionFeed` (`gateway.stores.feed`) of workers sharing a state dir but no
    `stores.state`: nothing to append, the chains are the feed. `own` is this worker's chain,
    whose records its streams already got as they were written."""

    def __init__(self, state: StateDir, own: Path, size: int = RECENT_DECISIONS) -> None:
        self._state, self._size = state, size
        self._follower = ChainFollower(own)

    def append(self, rec: dict[str, Any]) -> None:
        """Already in this worker's chain."""

    async def latest(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(recent, self._state.audit_logs(), self._size)

    async def run(self, live: LiveDecisions) -> None:
        """The other workers' new records to the live streams, while any is open."""
        live.on_first = lambda: self._follower.start(self._state.audit_logs())
        while True:
            await asyncio.sleep(FOLLOW_SECONDS)
            if not live.open:
                self._follower.stop()
                continue
            for rec in await asyncio.to_thread(self._follower.poll, self._state.audit_logs()):
                live.publish(rec)
