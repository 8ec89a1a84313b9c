"""The memory quota store sweeps expired entries at most once a second, not after every hit."""

from __future__ import annotations

import asyncio

from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter

from gateway.pipeline.quota import SweptMemoryStorage


def test_one_sweep_for_many_hits_and_limits_still_exact() -> None:
    async def run() -> tuple[int, int, bool]:
        storage = SweptMemoryStorage("async+memory://", wrap_exceptions=True)
        limiter = MovingWindowRateLimiter(storage)
        item = parse("5/minute")
        admitted = 0
        sweeps: set[int] = set()
        for _ in range(20):
            admitted += await limiter.hit(item, "agent", "action")
            await storage.incr("counter", 60)
            if storage.timer is not None:
                sweeps.add(id(storage.timer))
            await asyncio.sleep(0)
        assert storage.timer is not None
        await storage.timer
        return admitted, len(sweeps), await storage.get("counter") == 20

    admitted, sweeps, counted = asyncio.run(run())
    assert admitted == 5  # the moving window is exact without the sweep
    assert sweeps == 1  # limits' own hook would have swept after each of the 40 hits
    assert counted
