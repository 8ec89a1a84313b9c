"""A few threads for CPU-bound DLP work, shared fairly between agents.

A plain `ThreadPoolExecutor` serves jobs first come, first served: one agent that sends a body of
900 KB of digit groups queues seconds of Presidio work ahead of every other agent's small chat
(measured: a bystander's 0.06 s chat took 5.9 s). Here every job belongs to an owner (the agent's
vault scope); each owner has a queue of its own, the threads take turns between owners (round
robin), and an owner runs at most `per_owner` jobs at once.

One job at a time per owner costs an agent nothing: Presidio is Python holding the GIL, so two
threads on one agent's text are not faster than one, they only take the GIL from the event loop
and from other agents. With `workers` threads and one job per owner, a flood by one agent leaves
`workers - 1` threads to everyone else, and a newcomer waits at most one job (one chunk, see
`dlp.chunks`) for a thread. The callers keep jobs small by chunking long text.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Job(Generic[T]):
    fn: Callable[[], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: deliver a job's outcome, unless its caller has gone (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class FairPool:
    """Round-robin between owners over `workers` threads, at most `per_owner` jobs per owner at once."""

    def __init__(self, workers: int, *, per_owner: int = 1, name: str = "dlp-analyze") -> None:
        self._per_owner = per_owner
        self._cond = threading.Condition()
        self._queues: OrderedDict[str, deque[_Job[Any]]] = OrderedDict()
        self._running: Counter[str] = Counter()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    async def run(self, owner: str, fn: Callable[[], T]) -> T:
        """`fn()` on a worker thread, in `owner`'s turn."""
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(fn, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise RuntimeError("the DLP worker pool is closed")
            self._queues.setdefault(owner, deque()).append(job)
            self._cond.notify()
        return await job.future

    def queued(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        """Stop the threads after their current job; queued jobs are cancelled."""
        with self._cond:
            self._closed = True
            pending = [job for q in self._queues.values() for job in q]
            self._queues.clear()
            self._cond.notify_all()
        for job in pending:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                job.loop.call_soon_threadsafe(job.future.cancel)

    def _next(self) -> tuple[str, _Job[Any]] | None:
        """The first owner in turn with room for another job; it goes to the back of the line.
        Called with the lock held."""
        for owner, queue in self._queues.items():
            if self._running[owner] < self._per_owner:
                job = queue.popleft()
                if queue:
                    self._queues.move_to_end(owner)
                else:
                    del self._queues[owner]
                return owner, job
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                picked = self._next()
                while picked is None and not self._closed:
                    self._cond.wait()
                    picked = self._next()
                if picked is None:
                    return
                owner, job = picked
                self._running[owner] += 1
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running[owner] -= 1
                    if not self._running[owner]:
                        del self._running[owner]
                    self._cond.notify_all()

    @staticmethod
    def _run(job: _Job[Any]) -> None:
        if job.future.cancelled():  # its caller left (the agent hung up): skip the work
            return
        result: Any = None
        error: BaseException | None = None
        try:
            result = job.fn()
        except Exception as e:  # noqa: BLE001  (delivered to the awaiting caller, which decides)
            error = e
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)
