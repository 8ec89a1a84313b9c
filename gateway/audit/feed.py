"""The recent-decisions feed of a host's workers, read back from their audit chains.

With `run --workers N` each worker sees only the calls it served; `GET /v1/decisions` must show the
host's, whichever worker answers. Every record the feed shows is already in some worker's chain in
the state directory, so the feed is the newest records of all chains, merged by time: nothing to
keep in step between processes, and nothing a dead worker takes with it. Only the end of each file
is read (the chains grow without bound). A torn last line (a worker killed mid-write) is skipped.
Aggregated records of unauthenticated noise appear as the audit holds them (one per source and
window), not one per refused connection as a single process's in-memory feed shows them.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.audit.log import SIGNATURE
from gateway.stores.feed import RECENT_DECISIONS

if TYPE_CHECKING:
    from gateway.state import StateDir

_BYTES_PER_RECORD = 2048  # a generous average: decision records are ~0.5-1 KiB


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
    return {k: v for k, v in rec.items() if k not in ("seq", "prev", "hash")}


class AuditChainsFeed:
    """The `DecisionFeed` (`gateway.stores.feed`) of workers sharing a state dir but no
    `stores.state`: nothing to append, the chains are the feed."""

    def __init__(self, state: StateDir, size: int = RECENT_DECISIONS) -> None:
        self._state, self._size = state, size

    def append(self, rec: dict[str, Any]) -> None:
        """Already in this worker's chain."""

    async def latest(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(recent, self._state.audit_logs(), self._size)

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to do until cancelled
