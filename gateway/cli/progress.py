"""Progress on stderr for waits a user would otherwise take for a hang.

A step that finishes within `after` seconds prints nothing, so scripts and `eval "$(...)"` see
clean output; a longer one says what it is waiting for once, and how long it took at the end.
Always stderr: stdout carries the command's result.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


@contextmanager
def progress(what: str, after: float = 1.0, stream: TextIO | None = None) -> Iterator[None]:
    out = stream or sys.stderr
    started = time.monotonic()
    lock = threading.Lock()
    state = {"said": False, "done": False}

    def say() -> None:
        with lock:
            if not state["done"]:
                print(f"egress-gateway: {what}...", file=out, flush=True)
                state["said"] = True

    timer = threading.Timer(after, say)
    timer.daemon = True
    timer.start()
    ended = "failed after"
    try:
        yield
        ended = "done in"
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            if state["said"]:
                print(f"egress-gateway: {what}: {ended} {time.monotonic() - started:.1f}s", file=out, flush=True)
