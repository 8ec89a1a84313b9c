"""The epoch ticker ticks only while a run is in flight: an idle gateway's sandbox costs nothing."""

from __future__ import annotations

import threading
import time

import wasmtime

from sandbox.epoch import EpochTicker


class CountingEngine:
    """A real engine whose epoch increments are counted."""

    def __init__(self) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.ticks = 0
        self.lock = threading.Lock()

    def increment_epoch(self) -> None:
        with self.lock:
            self.ticks += 1
        self.engine.increment_epoch()


def test_ticks_only_while_running() -> None:
    engine = CountingEngine()
    ticker = EpochTicker(engine, 0.005)  # type: ignore[arg-type]
    ticker.start()
    try:
        time.sleep(0.1)
        assert engine.ticks == 0
        with ticker.running(), ticker.running():  # two runs at once share the ticks
            time.sleep(0.1)
        after_runs = engine.ticks
        assert after_runs > 0
        time.sleep(0.1)
        assert engine.ticks == after_runs
    finally:
        ticker.stop()
        ticker.join(timeout=5)
    assert not ticker.is_alive()
