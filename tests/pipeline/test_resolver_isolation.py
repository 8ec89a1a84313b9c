"""One agent's DNS trouble must not slow the others (gateway.pipeline.egress.Resolver).

The gateway resolves with the system resolver (getaddrinfo), which cannot be pointed at a fake DNS
server from a test without root (glibc reads the name servers from /etc/resolv.conf only), so these
tests drive the Resolver through its one seam, the blocking `lookup` function, with a real slow
lookup: a thread that blocks until the test lets it go, exactly as getaddrinfo blocks on a silent
name server. Every property is shown by order of events and exact lookup counts, never by timing.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter

import pytest

from gateway.errors import Refusal
from gateway.pipeline import egress

SLOW, HEALTHY = "slow.vendor.example", "api.vendor.example"
PUBLIC = "93.184.216.34"


class SlowDns:
    """A resolver whose SLOW name hangs until `release` is set and then fails; HEALTHY answers at once."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[str]:
        with self._lock:
            self.calls[host] += 1
        if host == SLOW:
            self.entered.set()
            self.release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [PUBLIC]


async def _flood_then_healthy(dns: SlowDns, resolver: egress.Resolver, flood: int) -> None:
    slow = [asyncio.ensure_future(resolver.resolve(SLOW, 443)) for _ in range(flood)]
    assert await asyncio.to_thread(dns.entered.wait, 10)
    # The healthy name is answered while every call to the slow name is still waiting.
    assert await resolver.resolve(HEALTHY, 443) == (PUBLIC, 443)
    assert not any(t.done() for t in slow)
    # asyncio's default executor (revocation refresh, stores) is not held by the stuck lookup either.
    assert await asyncio.to_thread(lambda: "free") == "free"
    dns.release.set()
    outcomes = await asyncio.gather(*slow, return_exceptions=True)
    assert all(isinstance(o, Refusal) and o.code == "upstream_failed" for o in outcomes), outcomes


def test_a_flood_to_a_hanging_name_costs_one_lookup_and_does_not_delay_a_healthy_name() -> None:
    dns = SlowDns()
    resolver = egress.Resolver({}, lookup=dns)
    try:
        asyncio.run(_flood_then_healthy(dns, resolver, flood=200))
        assert dns.calls == Counter({SLOW: 1, HEALTHY: 1})
        # The failure is cached: another flood inside the negative-cache window looks nothing up.
        for _ in range(50):
            with pytest.raises(Refusal) as e:
                asyncio.run(resolver.resolve(SLOW, 443))
            assert e.value.code == "upstream_failed"
        assert dns.calls == Counter({SLOW: 1, HEALTHY: 1})
    finally:
        resolver.close()


def test_a_failure_is_looked_up_again_once_the_negative_cache_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(egress, "_FAILURE_TTL", 0.0)
    dns = SlowDns()
    dns.release.set()
    resolver = egress.Resolver({}, lookup=dns)
    try:
        for _ in range(3):
            with pytest.raises(Refusal):
                asyncio.run(resolver.resolve(SLOW, 443))
        assert dns.calls[SLOW] == 3
    finally:
        resolver.close()


def test_a_private_answer_is_cached_as_a_refusal_too() -> None:
    calls: Counter[str] = Counter()

    def rebinding(host: str, port: int) -> list[str]:
        calls[host] += 1
        return [PUBLIC, "10.0.0.7"]

    resolver = egress.Resolver({}, lookup=rebinding)
    try:
        for _ in range(5):
            with pytest.raises(Refusal) as e:
                asyncio.run(resolver.resolve(HEALTHY, 443))
            assert e.value.code == "address_denied"
        assert calls[HEALTHY] == 1
    finally:
        resolver.close()


async def _waits_are_bounded(dns: SlowDns, resolver: egress.Resolver) -> None:
    first = [asyncio.ensure_future(resolver.resolve(SLOW, 443)) for _ in range(20)]
    outcomes = await asyncio.gather(*first, return_exceptions=True)
    assert all(isinstance(o, Refusal) and o.code == "upstream_failed" and "took longer" in o.message for o in outcomes)
    # The lookup is still stuck: later callers join it instead of starting another one.
    late = [asyncio.ensure_future(resolver.resolve(SLOW, 443)) for _ in range(20)]
    await asyncio.gather(*late, return_exceptions=True)
    assert dns.calls[SLOW] == 1
    dns.release.set()


def test_a_caller_stops_waiting_for_a_hanging_lookup_and_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(egress, "_LOOKUP_WAIT", 0.05)
    dns = SlowDns()
    resolver = egress.Resolver({}, lookup=dns)
    try:
        asyncio.run(_waits_are_bounded(dns, resolver))
    finally:
        dns.release.set()
        resolver.close()
