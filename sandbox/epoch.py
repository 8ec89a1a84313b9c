"""The ticker that advances a wasmtime engine's epoch, which is how a run's wall-clock deadline is
enforced (each `Store` gets an epoch deadline counted in ticks)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import wasmtime


class EpochTicker(threading.Thread):
    """Advances an engine's epoch every `interval` while a run is in flight (`running()`), and
    waits otherwise: ticking always, each engine's ticker took the GIL from the proxy's event loop
    a hundred times a second on a gateway that ran no tool. A run's epoch deadline counts ticks
    from when it was set, so ticks while nothing runs were never needed."""

    def __init__(self, engine: wasmtime.Engine, interval: float):
        super().__init__(name="sandbox-epoch", daemon=True)
        self._engine = engine
        self._interval = interval
        self._cond = threading.Condition()
        self._active = 0
        self._stopped = False

    def run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._active == 0:
                    self._cond.wait()
                elif not self._cond.wait(self._interval) and self._active:
                    self._engine.increment_epoch()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Ticks while the block runs (a run's deadline is counted in them)."""
        with self._cond:
            self._active += 1
            if self._active == 1:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
