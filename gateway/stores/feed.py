"""The recent-decisions feed behind `GET /v1/decisions`: the last `RECENT_DECISIONS` audit records.

`append` is on the hot path of every call and must never block it or fail it (the audit log is the
record; the feed is a view), so it only queues in memory; `latest` is read by the admin API.
`MemoryFeed` is one process's view; `gateway.stores.redis_state.RedisFeed` pushes the queue to a
capped Redis list from a background task (`run`), so every replica shows the fleet's decisions.

The feed is also how the live streams (`gateway.live_decisions`) of one process see the records
the OTHER processes of the gateway wrote: `run` hands those to `LiveDecisions.publish` (from Redis
pub/sub, or from the other workers' audit chains: `gateway.audit.feed`), and only to it, so they are
never counted, logged or exported twice. Each origin's records arrive in its order; records of
different origins interleave as they arrive (best effort, no global order).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from gateway.live_decisions import LiveDecisions

RECENT_DECISIONS = 1000


class DecisionFeed(Protocol):
    def append(self, rec: dict[str, Any]) -> None: ...

    async def latest(self) -> list[dict[str, Any]]:
        """The newest records, oldest first; raises `StoreUnavailable` if the feed cannot be read."""
        ...

    async def run(self, live: LiveDecisions) -> None:
        """What the feed does in the background while the gateway runs: share this process's
        records, and hand the other processes' to `live` (nothing, in memory: one process)."""
        ...


class MemoryFeed:
    def __init__(self, size: int = RECENT_DECISIONS) -> None:
        self._recent: deque[dict[str, Any]] = deque(maxlen=size)

    def append(self, rec: dict[str, Any]) -> None:
        self._recent.append(rec)

    async def latest(self) -> list[dict[str, Any]]:
        return list(self._recent)

    async def run(self, live: LiveDecisions) -> None:
        await asyncio.Event().wait()  # nothing to do until cancelled
