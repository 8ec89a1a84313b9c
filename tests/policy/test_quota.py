"""Rates and budgets with the real `limits` memory storage, under 50-way concurrency."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from limits.aio.storage import MemoryStorage

from gateway.errors import Refusal
from gateway.pipeline.quota import Quotas, async_storage_uri, budget_retry_after
from gateway.policy.engine import Decision, PolicySet, Subject
from gateway.stores import redis_state

FIN = Subject("fin-01", "finance", "acme")


def policy(extra: str, action: str = "create", mode: str = "enforce") -> str:
    return f"""
        version: 1
        subjects: {{roles: [finance]}}
        mode: {mode}
        rules:
          - connector: pay
            actions: [{action}]
{extra}
    """


async def attempt(q: Quotas, d: Decision, params: dict[str, Any]) -> Refusal | None:
    try:
        await q.charge(d, params)
    except Refusal as r:
        return r
    return None


def test_storage_uris() -> None:
    assert async_storage_uri("memory://") == "async+memory://"
    assert async_storage_uri("redis://h:6379/0") == "async+redis://h:6379/0"
    assert async_storage_uri("async+redis://h") == "async+redis://h"
    with pytest.raises(ValueError):
        async_storage_uri("mongodb://h")


def test_rate_limit_holds_under_concurrency(load: Callable[..., PolicySet]) -> None:
    ps = load(p=policy("            rate: 20/minute"))
    d = ps.decide(FIN, "pay", "create", {})

    async def run() -> list[Refusal | None]:
        q = Quotas.from_uri("memory://")
        return await asyncio.gather(*(attempt(q, d, {}) for _ in range(50)))

    results = asyncio.run(run())
    refused = [r for r in results if r is not None]
    assert len(refused) == 30
    r = refused[0]
    assert r.code == "rate_limited" and r.status == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert "rate limit 20 per minute of rule p.yaml#0" in r.message


def test_rate_is_per_agent(load: Callable[..., PolicySet]) -> None:
    ps = load(p=policy("            rate: 1/minute"))

    async def run() -> tuple[Refusal | None, ...]:
        q = Quotas.from_uri("memory://")
        a = ps.decide(FIN, "pay", "create", {})
        b = ps.decide(Subject("fin-02", "finance", "acme"), "pay", "create", {})
        return await attempt(q, a, {}), await attempt(q, b, {}), await attempt(q, a, {})

    first, other, again = asyncio.run(run())
    assert first is None and other is None and again is not None


def test_budget_never_lets_more_than_the_limit_through(load: Callable[..., PolicySet]) -> None:
    ps = load(p=policy("            budget: {field: amount, limit: 2000000, per: day}"))
    rng = random.Random(7)
    amounts = [rng.randrange(10000, 120000) for _ in range(50)]
    assert sum(amounts) > 2000000

    async def run() -> list[Refusal | None]:
        q = Quotas.from_uri("memory://")
        calls = [attempt(q, ps.decide(FIN, "pay", "create", {"amount": a}), {"amount": a}) for a in amounts]
        return await asyncio.gather(*calls)

    results = asyncio.run(run())
    spent = sum(a for a, r in zip(amounts, results) if r is None)
    assert 0 < spent <= 2000000
    refused = [r for r in results if r is not None]
    assert refused and all(r.code == "budget_exceeded" for r in refused)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)


def test_budget_exact_fill_with_equal_payments(load: Callable[..., PolicySet]) -> None:
    ps = load(p=policy("            budget: {field: amount, limit: 2000000, per: day}"))
    d = ps.decide(FIN, "pay", "create", {"amount": 50000})

    async def run() -> list[Refusal | None]:
        q = Quotas.from_uri("memory://")
        return await asyncio.gather(*(attempt(q, d, {"amount": 50000}) for _ in range(50)))

    assert sum(r is None for r in asyncio.run(run())) == 40


def test_budget_skips_calls_without_the_field_and_refuses_bad_values(load: Callable[..., PolicySet]) -> None:
    ps = load(p=policy("            budget: {field: amount, limit: 100, per: hour}"))
    d = ps.decide(FIN, "pay", "create", {})

    async def run() -> tuple[Refusal | None, ...]:
        q = Quotas.from_uri("memory://")
        return (
            await attempt(q, d, {}),
            await attempt(q, d, {"amount": -5}),
            await attempt(q, d, {"amount": "50"}),
            await attempt(q, d, {"amount": 101}),
        )

    missing, negative, text, too_big = asyncio.run(run())
    assert missing is None
    assert negative is not None and negative.code == "param_violation"
    assert text is not None and text.code == "param_violation"
    assert too_big is not None and too_big.code == "budget_exceeded" and too_big.headers["Retry-After"] == "3600"


@pytest.mark.parametrize("amount", [10**309, 10**4000], ids=["1e309", "4001-digits"])
def test_budget_refuses_an_amount_too_large_for_a_float(load: Callable[..., PolicySet], amount: int) -> None:
    """An integer beyond float range (JSON and form bodies carry any number of digits) used to
    raise OverflowError while the cost was summed: `internal_error` instead of `budget_exceeded`."""
    ps = load(p=policy("            budget: {field: amount, limit: 100, per: hour}"))
    d = ps.decide(FIN, "pay", "create", {})
    refused = asyncio.run(attempt(Quotas.from_uri("memory://"), d, {"amount": amount}))
    assert refused is not None and refused.code == "budget_exceeded", refused
    assert refused.headers["Retry-After"] == "3600"


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_payment_refused_by_one_budget_gives_back_what_another_budget_charged(
    load: Callable[..., PolicySet], request: pytest.FixtureRequest, store: str
) -> None:
    """A guardrail file's budget (10000) composes with a role file's (3000). Two 5000 payments the
    role budget refuses used to keep their charge on the guardrail: its whole 10000 was gone with
    nothing paid, and a 1000 payment that fits both was refused."""
    guard = policy("            name: guard\n            budget: {field: amount, limit: 10000, per: day}")
    ps = load(a_guard=guard, b_role=guard.replace("10000", "3000").replace("guard", "role"))

    async def run() -> list[str | None]:
        q = Quotas.from_uri(uri)
        out = []
        for amount in (5000, 5000, 1000, 2000, 1):
            r = await attempt(q, ps.decide(FIN, "pay", "create", {"amount": amount}), {"amount": amount})
            out.append(None if r is None else f"{r.code} {r.message.split(' of rule ')[1].split(' ')[0]}")
            if q._exact is not None:  # Redis gives back in the background: let it finish first
                await asyncio.gather(*q._exact._releasing)
        return out

    uri = "memory://"
    if store == "redis":
        uri = f"redis://127.0.0.1:{request.getfixturevalue('redis').port}/8"
        redis_state.connect(uri).flushdb()

    assert asyncio.run(run()) == ["budget_exceeded role", "budget_exceeded role", None, None, "budget_exceeded role"]


def test_shadow_rule_records_instead_of_refusing(load: Callable[..., PolicySet]) -> None:
    ps = load(p=policy("            rate: 1/minute", mode="shadow"))
    d = ps.decide(FIN, "pay", "create", {})

    async def run() -> list[Any]:
        q = Quotas.from_uri("memory://")
        return [(await q.charge(d, {})).findings, (await q.charge(d, {})).findings]

    first, second = asyncio.run(run())
    assert first == [] and [f.code for f in second] == ["rate_limited"]


class BrokenStorage(MemoryStorage):
    """The real memory storage, made to fail or hang like an unreachable Redis."""

    def __init__(self, hang: bool) -> None:
        super().__init__()
        self.hang = hang

    async def acquire_entry(self, *args: Any, **kwargs: Any) -> bool:
        if self.hang:
            await asyncio.sleep(10)
        raise ConnectionError("store down")


@pytest.mark.parametrize("hang", [False, True])
def test_store_failure_fails_closed(load: Callable[..., PolicySet], hang: bool) -> None:
    ps = load(p=policy("            rate: 5/minute"))
    d = ps.decide(FIN, "pay", "create", {})
    r = asyncio.run(attempt(Quotas(BrokenStorage(hang), timeout=0.05), d, {}))
    assert r is not None and r.code == "store_unavailable" and r.status == 503


def test_unreachable_redis_fails_closed(load: Callable[..., PolicySet]) -> None:
    pytest.importorskip("coredis", reason="needs limits[async-redis]")
    ps = load(p=policy("            rate: 5/minute"))
    d = ps.decide(FIN, "pay", "create", {})
    r = asyncio.run(attempt(Quotas.from_uri("redis://127.0.0.1:1", timeout=2), d, {}))
    assert r is not None and r.code == "store_unavailable"


def test_fail_open_read_rule_goes_on_when_the_store_fails(load: Callable[..., PolicySet]) -> None:
    ps = load(p=policy("            rate: 5/minute\n            fail_open: true", action="get"))
    d = ps.decide(FIN, "pay", "get", {})
    assert asyncio.run(attempt(Quotas(BrokenStorage(False)), d, {})) is None


def test_budget_retry_after() -> None:
    day = 86400
    assert budget_retry_after(100, day, 200, 0, 0, 0, 0) == day  # never fits
    # the current window alone has room: wait for the previous window's weight to decay
    assert budget_retry_after(100, day, 10, 100, day / 2, 50, day * 1.5) == pytest.approx(day / 2 - 40 * day / 100, abs=1)
    # the current window is full: wait for it to end and decay
    assert budget_retry_after(100, day, 50, 0, 0, 100, day + 3600) == 3600 + day // 2
