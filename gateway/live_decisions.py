"""Every record the gateway notes, pushed to the live decision streams (`GET /v1/decisions/stream`).

Each open feed is a `Subscription` with a bounded queue: a reader that falls behind (a slow
browser, a stalled network) never makes the gateway hold more than `capacity` records for it;
what does not fit is counted and the reader is told how many it lost, so one watcher cannot grow
the gateway's memory or slow the calls it watches. Publishing never blocks and never raises.

The records are this process's, as its audit log holds them (`Runtime._publish`), and the other
workers' and replicas' records, handed over by the decisions feed (`gateway.stores.feed`) in the
same form: a stream cannot tell which process wrote a record but by its `replica`/`worker`.

Records are noted from the event loop and, rarely, from worker threads (the audit log is written
from both): a record published off the loop's thread is handed to the loop first, since an
asyncio queue is not thread-safe.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Subscription:
    """One reader's queue; `lost` counts records dropped since the reader last took one."""

    queue: asyncio.Queue[dict[str, Any]]
    loop: asyncio.AbstractEventLoop
    lost: int = 0

    def offer(self, rec: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            self.lost += 1

    def take_lost(self) -> int:
        lost, self.lost = self.lost, 0
        return lost


@dataclass
class LiveDecisions:
    """The set of open subscriptions, at most `limit` of them."""

    limit: int = 32
    capacity: int = 500
    closed: bool = False  # the gateway is shutting down: streams end, none start
    # Called (on the subscriber's loop) when the first stream opens: a feed that only looks for
    # the other processes' records while a stream is open marks where "from now on" starts, before
    # the reader gets its first byte (`gateway.audit.feed.ChainFollower`).
    on_first: Callable[[], None] | None = None
    _subs: set[Subscription] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def subscribe(self) -> Subscription | None:
        """A new subscription in the running loop, or None when `limit` are already open (or the
        feed is closed)."""
        with self._lock:
            if self.closed or len(self._subs) >= self.limit:
                return None
            first = not self._subs
            sub = Subscription(asyncio.Queue(self.capacity), asyncio.get_running_loop())
            self._subs.add(sub)
        if first and self.on_first is not None:
            self.on_first()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def open(self) -> int:
        return len(self._subs)

    def close(self) -> None:
        """At shutdown: open streams end within a second, so the API server is not held open by a
        browser that would otherwise watch forever."""
        self.closed = True

    def publish(self, rec: dict[str, Any]) -> None:
        if not self._subs:
            return
        with self._lock:
            subs = tuple(self._subs)
        for sub in subs:
            if _on_loop(sub.loop):
                sub.offer(rec)
            elif not sub.loop.is_closed():
                sub.loop.call_soon_threadsafe(sub.offer, rec)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
