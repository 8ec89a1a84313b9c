"""Where a DLP job runs: small ones on the calling thread, large ones in child processes.

Threads alone do not protect other agents. Presidio is Python and holds the GIL; the event loop,
which serves every agent's connection, gives the GIL up on each socket operation and then waits up
to the switch interval (5 ms) to get it back from a busy analysis thread. A request makes dozens of
such operations, so one agent's large text on a worker thread made another agent's small chat go
from 7 ms to 207 ms (measured, tests/chaos/test_dlp_fair_share.py), however fairly the threads
were shared. In a child process the analysis holds no GIL of the gateway's; the worker thread
that waits for it releases the GIL while it waits.

Children cost memory (~140 MB each: Presidio, spaCy's tokenizer, the names lists) and about two
seconds to start, so they start only when the first large job arrives, and small jobs (a chat's
new message, up to `dlp.inline_chars`) keep running in-process, without the pickling round trip.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from dlp.config import DlpConfig
from dlp.engine import PiiEngine, PiiFinding, build_engine

_ENGINE: PiiEngine | None = None  # in a child: its own engine, built from the gateway's config


def _start(config_json: str) -> None:
    """A child's set-up. It runs at a lower CPU priority (nice +10): bulk scanning of large
    texts yields the CPU to the gateway's event loop, which serves every agent's connection."""
    global _ENGINE
    os.nice(10)
    _ENGINE = build_engine(DlpConfig.model_validate_json(config_json))


def _analyze(texts: list[str], entities: frozenset[str]) -> list[tuple[PiiFinding, ...]]:
    if _ENGINE is None:
        raise RuntimeError("DLP child process started without an engine")
    return [_ENGINE.analyze(t, entities) for t in texts]


class Analyzer:
    """Runs one job's analysis; called on a worker thread of `dlp.fair.FairPool`.

    With no `config` every job runs in-process (the unit tests' and the benchmark's set-up)."""

    def __init__(self, engine: PiiEngine, config: DlpConfig | None = None, *, children: int = 2, inline_chars: int = 2_000) -> None:
        self._engine = engine
        self._config = config
        self._children = children
        self._inline_chars = inline_chars
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, texts: list[str], entities: frozenset[str]) -> list[tuple[PiiFinding, ...]]:
        if self._config is None or sum(len(t) for t in texts) <= self._inline_chars:
            return [self._engine.analyze(t, entities) for t in texts]
        pool = self._pool_now()
        try:
            return pool.submit(_analyze, texts, entities).result()
        except BrokenProcessPool:
            # A child died (killed, out of memory): this job fails (the call is refused, never let
            # through unscanned); the next large job starts fresh children.
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            raise

    def _pool_now(self) -> ProcessPoolExecutor:
        assert self._config is not None
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self._children,
                    mp_context=multiprocessing.get_context("spawn"),  # never fork a process with threads
                    initializer=_start,
                    initargs=(self._config.model_dump_json(),),
                )
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
