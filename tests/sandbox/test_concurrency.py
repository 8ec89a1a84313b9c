"""Runs never block the event loop, and 20 of them run at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import Refusal
from gateway.pipeline.call import new_decision_id
from sandbox.service import run_tool


def test_twenty_concurrent_runs(runner, registry, resolve) -> None:  # type: ignore[no-untyped-def]
    async def main() -> list:
        return await asyncio.gather(
            *(run_tool(runner, registry, "stats", {"values": list(range(i + 1))}, "any", _never, resolve, new_decision_id()) for i in range(20))
        )

    results = asyncio.run(main())
    assert [r.output["count"] for r in results] == list(range(1, 21))
    assert [r.output["sum"] for r in results] == [i * (i + 1) / 2 for i in range(20)]


def test_the_event_loop_keeps_serving_while_a_tool_spins(runner, registry, resolve, sender, http_vendor) -> None:  # type: ignore[no-untyped-def]
    async def main() -> tuple[int, float, float]:
        spinning = asyncio.ensure_future(run_tool(runner, registry, "spin", {}, "any", _never, resolve, new_decision_id()))

        async def tick() -> int:
            """Counts the loop's turns while the tool spins (from its start, however slow the machine)."""
            ticks = 0
            while not spinning.done():
                ticks += 1
                await asyncio.sleep(0.01)
            return ticks

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        started = time.monotonic()
        converted = await run_tool(runner, registry, "currency_convert", {"to": "usd"}, "finance", sender, resolve, new_decision_id())
        other_done = time.monotonic() - started
        assert converted.output["status"] == 200
        ticks = await ticker
        with pytest.raises(Refusal) as e:
            spinning.result()
        assert e.value.code == "sandbox_timeout"
        return ticks, other_done, time.monotonic() - started

    ticks, other_done, spin_done = asyncio.run(main())
    assert other_done < spin_done  # another tool's call went out and back while this one spun
    assert ticks >= 5  # the loop ran its own tasks the whole time (200 ms timeout, 10 ms sleeps)


def _never(request: dict) -> dict:
    raise AssertionError("no host call expected")
