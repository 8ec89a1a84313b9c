"""Rate limits and spend budgets of the covering policy rules, with the `limits` library (async API).

Storage comes from the config URI: `memory://` (this process) or `redis://host:port` (shared by
replicas; needs `limits[async-redis]`); `async+...` URIs are accepted as they are.

Two strategies, chosen for what each limit counts:
- `rate` (calls): the *moving window* — exact: never more than N calls in any window of the length.
- `budget` (a sum such as `amount` in minor units): the *sliding window counter*, hit with
  `cost=amount`. The moving window stores one entry per unit of cost, so a 2,000,000-cent daily
  budget means up to 2,000,000 timestamps per agent (16 MB in memory, and a Lua loop pushing
  `amount` list items per payment in Redis; measured 0.8 ms per hit in memory vs 0.08 ms here).
  The counter keeps two integers per window and weights the previous window by the time left in
  it. Windows are aligned to multiples of the period (`day` = UTC day; `month` = 30 days).

Both hits are atomic per storage (memory: under a lock per key; Redis: one Lua script), and a budget
hit that would bring the weighted sum over the limit is refused and undone, so concurrent payments
never let more than the budget through. The check and the charge are one operation (`hit`), never
a `test` followed by a `hit`. On Redis a budget charge is also applied exactly once per call (by its
decision id), and the client never retries a script blindly (`gateway.pipeline.charges`).

Order and accounting: every covering rule's rates are hit first, then its budget; the first refusal
stops; a budget refusal gives back the budgets this call already charged (a guardrail budget
composed with a tighter one is not spent by payments never made). Budgets count what is let out:
a call a later step refuses (DLP, the circuit breaker, the audit write) gets its budget charges
back too (`Quotas.give_back`, called by `gateway.pipeline.decision.decide`); a call let out keeps
its charge even if the vendor then fails or cannot be reached, since the vendor may have acted on
it (the safe side). Rates count attempts that passed the policy: a call refused by its budget or a
later step keeps its rate hit, so a refused agent cannot retry faster than its rate.

Fail closed: a storage error or a store that takes longer than `timeout` to answer refuses with
`store_unavailable` (503), unless the rule says `fail_open: true` (read actions only, checked at
load); then the call goes on, a warning is logged and the call's audit record says `fail_open`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import quote

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, MovingWindowSupport, RedisStorage, SlidingWindowCounterSupport, Storage
from limits.errors import StorageError
from limits.storage import storage_from_string

from connectors import fieldpath
from gateway.errors import ConfigError, Refusal, StoreUnavailable
from gateway.pipeline.charges import ExactlyOnceBudgets
from gateway.policy.counters import CounterId
from gateway.policy.engine import Decision, Finding, MatchedRule

log = logging.getLogger(__name__)
T = TypeVar("T")
TICK = 0.05  # the most one wake-up of the event loop charges to a store's time
SWEEP_EVERY = 1.0  # seconds between two sweeps of expired entries in the memory store

_SCHEMES = {
    "memory": "async+memory",
    "redis": "async+redis",
    "rediss": "async+rediss",
    "redis+unix": "async+redis+unix",
    "redis+sentinel": "async+redis+sentinel",
    "redis+cluster": "async+redis+cluster",
}


def async_storage_uri(uri: str) -> str:
    """The `limits` async storage URI for a config URI (`memory://` -> `async+memory://`)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ConfigError(f"rate limit store {uri!r}: expected a URI such as memory:// or redis://host")
    if scheme.startswith("async+"):
        return uri
    if scheme not in _SCHEMES:
        raise ConfigError(f"rate limit store {uri!r}: unsupported scheme {scheme!r}")
    return f"{_SCHEMES[scheme]}://{rest}"


class StoreFailure(StoreUnavailable):
    """The quota store failed or was too slow."""


class SweptMemoryStorage(MemoryStorage):
    """`memory://`: limits' memory storage, sweeping expired entries at most every `SWEEP_EVERY`.

    Its own sweep is started after every hit, as a new task with a thread hop per moving-window
    key: on the proxy's event loop that was about 2% of a call's CPU and a GIL hand-off per key.
    No read depends on the sweep (each compares timestamps); it only frees memory, which once a
    second does as well. The hook is limits' private `__schedule_expiry` (name-mangled), which
    `tests/pipeline/test_quota_memory.py` checks is still the one the storage calls.
    """

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False) -> None:
        super().__init__(uri, wrap_exceptions)
        self._swept_at = -SWEEP_EVERY

    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now - self._swept_at >= SWEEP_EVERY:
            self._swept_at = now
            await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


@dataclass(frozen=True)
class Charge:
    """What one call was charged: the findings for its record, and the budgets to give back
    (`Quotas.give_back`) if the call is refused after all."""

    decision: Decision
    call_id: str
    findings: list[Finding]
    budgets: list[tuple[MatchedRule, int]]


class Quotas:
    """Charges calls against the rates and budgets of the rules that allowed them."""

    def __init__(self, storage: Storage, timeout: float = 0.5) -> None:
        self.storage = storage
        self.timeout = timeout
        self.on_store_error: Callable[[], None] = lambda: None  # told of each failed store call (metrics)
        # `limits`' strategies key a counter with its limit; ours are called on the storage with
        # keys without it (`counter_key`), so raising a limit keeps what was spent.
        self._rates = cast(MovingWindowSupport, storage)
        self._budgets = cast(SlidingWindowCounterSupport, storage)
        # On Redis a budget charge is idempotent by call id (`gateway.pipeline.charges`).
        self._exact = ExactlyOnceBudgets(storage) if isinstance(storage, RedisStorage) else None

    @classmethod
    def from_uri(cls, uri: str = "memory://", timeout: float = 0.5) -> Quotas:
        full = async_storage_uri(uri)
        # Never a blind client retry of a script on Redis: it charged payments twice (see charges).
        if full.startswith("async+memory"):
            return cls(SweptMemoryStorage(full, wrap_exceptions=True), timeout)
        from coredis.retry import NoRetryPolicy  # the Redis client, imported only for a Redis store

        options: dict[str, Any] = {"retry_policy": NoRetryPolicy()}
        storage = storage_from_string(full, wrap_exceptions=True, **options)
        assert isinstance(storage, Storage)
        return cls(storage, timeout)

    async def warm_up(self) -> None:
        """Load the store's scripts before any traffic. On a fresh Redis the first calls each meet
        a script not loaded yet; fifty at once made some fail (closed, `store_unavailable`) while
        it loaded. A store down at start is only logged: calls are refused until it is back."""
        item, ids = parse("1000000/minute"), ("egress-gateway", "warm-up")
        try:
            await asyncio.wait_for(self._warm(item, ids), 5)
        except (StorageError, TimeoutError, OSError) as e:
            self.on_store_error()
            log.warning("quota store unreachable at start (%s): calls under rates or budgets are refused until it is back",
                        type(e).__name__)

    async def _warm(self, item: RateLimitItem, ids: tuple[str, ...]) -> None:
        key = counter_key(item, ids)
        await self._rates.acquire_entry(key, item.amount, item.get_expiry())
        await self._rates.get_moving_window(key, item.amount, item.get_expiry())
        await self._budgets.acquire_sliding_window_entry(key, item.amount, item.get_expiry(), 1)
        if self._exact is not None:
            await self._exact.hit(item, key, 1, "warm-up")
        await self._budgets.get_sliding_window(key, item.get_expiry())

    async def charge(
        self, decision: Decision, params: Any, budgets: bool = True, call_id: str | None = None
    ) -> Charge:
        """Hit every covering rule's rate and (unless `budgets` is False: nothing is spent yet)
        budget for an allowed call. `call_id` (the decision id) makes a budget charge on Redis
        idempotent: a re-run of the same call's charge never charges twice.

        Raises `Refusal` (`rate_limited` / `budget_exceeded` with `Retry-After`, or
        `store_unavailable`) for an enforced rule; returns the would-deny findings of shadow rules,
        whose calls go out anyway, and a `fail_open` finding for each rule whose unavailable store
        was let through, so the audit record says the limit was not checked; and the budgets charged.
        """
        findings: list[Finding] = []
        call_id = call_id or uuid.uuid4().hex
        for m in decision.rules:
            for item, counter in zip(m.rule.rate_items, m.counters.rates, strict=True):
                outcome = await self._guard(m, decision, self._hit_rate(m, decision, item, counter))
                if outcome is not None:
                    findings.append(self._refuse_or_record(m, outcome))
        charged: list[tuple[MatchedRule, int]] = []
        for m in decision.rules:
            if m.rule.budget is None or not budgets:
                continue
            cost = budget_cost(m, params, decision)
            if cost > 0:
                outcome = await self._guard(m, decision, self._hit_budget(m, decision, cost, call_id))
                unanswered = isinstance(outcome, Refusal) and outcome.code == "store_unavailable"
                if self._exact is not None and unanswered and not m.shadow:  # refused: give a late charge back
                    self._exact.release_later(_budget_key(m, decision)[1], cost, call_id)
                if outcome is None:
                    charged.append((m, cost))
                elif isinstance(outcome, Refusal) and not m.shadow:
                    await self.give_back(Charge(decision, call_id, findings, charged))
                    raise outcome
                else:
                    findings.append(self._refuse_or_record(m, outcome))
        return Charge(decision, call_id, findings, charged)

    async def give_back(self, charge: Charge) -> None:
        """The call was refused after its budgets were charged (by a later budget, or a later step):
        what it was charged is given back, or a budget would be spent by payments never made (a
        guardrail budget composed with a tighter one, a payment DLP blocked). Only the current
        window is credited (a charge made just before the window turned stays: safe side); on
        Redis the give-back is keyed by the call id, so it undoes exactly the charge made."""
        for m, cost in charge.budgets:
            item, key = _budget_key(m, charge.decision)
            if self._exact is not None:
                self._exact.release_later(key, cost, charge.call_id)
            elif isinstance(self.storage, MemoryStorage):
                current = self.storage.sliding_window_keys(key, item.get_expiry(), time.time())[1]
                await self.storage.decr(current, cost)

    @staticmethod
    def _refuse_or_record(m: MatchedRule, outcome: Refusal | Finding) -> Finding:
        if isinstance(outcome, Finding):
            return outcome
        if not m.shadow:
            raise outcome
        return Finding(outcome.code, outcome.message, m.ref.id, True)

    async def _guard(
        self, m: MatchedRule, d: Decision, hit: Awaitable[Refusal | None]
    ) -> Refusal | Finding | None:
        """Run a storage call with the timeout; map failures to fail closed (or open, if allowed).

        A `fail_open` rule's failure comes back as a `Finding` marked `fail_open`: the call goes on
        and its audit record carries it.
        """
        try:
            if isinstance(self.storage, SweptMemoryStorage):  # `memory://`: nothing to wait for, no timeout
                return await hit
            return await within_store_time(hit, self.timeout)
        except (StorageError, TimeoutError, OSError) as e:
            self.on_store_error()
            if m.rule.fail_open:
                log.warning("quota store unavailable (%s); rule %s fails open", type(e).__name__, m.ref.id)
                return Finding(
                    "store_unavailable",
                    f"the quota store is unavailable; rule {m.ref.id} is fail_open, its limit was not checked",
                    m.ref.id,
                    m.shadow,
                    fail_open=True,
                )
            return Refusal(
                "store_unavailable",
                f"the quota store is unavailable (rule {m.ref.id})",
                connector=d.connector,
                action=d.action,
            )

    async def _hit_rate(self, m: MatchedRule, d: Decision, item: RateLimitItem, counter: CounterId) -> Refusal | None:
        key = counter_key(item, _ids(d.subject.tenant, d.subject.sub, d.connector, d.action, *counter))
        if await self._rates.acquire_entry(key, item.amount, item.get_expiry()):
            return None
        window_start, _ = await self._rates.get_moving_window(key, item.amount, item.get_expiry())
        retry = max(1, math.ceil(window_start + item.get_expiry() - time.time()))
        return Refusal(
            "rate_limited",
            f"rate limit {item.amount} per {_period(item)} of rule {m.ref.id} is used up; retry in {retry} s",
            connector=d.connector,
            action=d.action,
            headers={"Retry-After": str(retry)},
        )

    async def _hit_budget(self, m: MatchedRule, d: Decision, cost: int, call_id: str) -> Refusal | None:
        budget = m.rule.budget
        assert budget is not None
        item, key = _budget_key(m, d)
        if self._exact is not None:
            if await self._exact.hit(item, key, cost, call_id):
                return None
        elif await self._budgets.acquire_sliding_window_entry(key, item.amount, item.get_expiry(), cost):
            return None
        prev, prev_ttl, cur, cur_ttl = await self._budgets.get_sliding_window(key, item.get_expiry())
        retry = budget_retry_after(budget.limit, item.get_expiry(), cost, prev, prev_ttl, cur, cur_ttl)
        return Refusal(
            "budget_exceeded",
            f"budget {budget.limit} {budget.field} per {budget.per} of rule {m.ref.id} is used up: "
            f"{budget.field} {cost} does not fit; retry in {retry} s",
            connector=d.connector,
            action=d.action,
            headers={"Retry-After": str(retry)},
        )


def budget_cost(m: MatchedRule, params: Any, d: Decision) -> int:
    """The amount a call charges to its rule's budget: the sum of the numbers at `budget.field`.

    Absent field: nothing to charge (e.g. `confirm_payment_intent` carries no amount). A value that
    is not a non-negative number is refused rather than charged as zero. The sum stops just above
    the limit, where the call is refused anyway: an integer beyond float range (a body may carry
    any number of digits) made a float sum raise OverflowError.
    """
    budget = m.rule.budget
    assert budget is not None
    over = budget.limit + 1
    total: int | float = 0
    for x in fieldpath.select(params, budget.field):
        v = x.value
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (isinstance(v, float) and math.isnan(v)):
            raise Refusal(
                "param_violation",
                f"{x.path} is not a non-negative number; budget of rule {m.ref.id} cannot be charged",
                connector=d.connector,
                action=d.action,
            )
        total = min(total + min(v, over), over)
    return math.ceil(total)


def budget_retry_after(
    limit: int, period: int, cost: int, prev: int, prev_ttl: float, cur: int, cur_ttl: float
) -> int:
    """Seconds until `cost` fits in the sliding window counter, from its window stats.

    The weighted sum is `prev * (time left in the previous window's weight) / period + cur`. If the
    current window alone has room, wait for the previous window's weight to decay enough; otherwise
    wait for the current window to end and its own weight to decay. A cost above the whole limit
    never fits: answer one period.
    """
    if cost > limit:
        return period
    if cur + cost <= limit:
        wait = prev_ttl - (limit - cur - cost) * period / prev if prev else 0.0
    else:
        window_left = cur_ttl - period if cur_ttl > period else prev_ttl
        wait = window_left + period * (1 - (limit - cost) / cur)
    return max(1, min(2 * period, math.ceil(wait)))


def _budget_key(m: MatchedRule, d: Decision) -> tuple[RateLimitItem, str]:
    """The budget of rule `m` for the agent of `d`: its limit item and counter key."""
    budget, counter = m.rule.budget, m.counters.budget
    assert budget is not None and counter is not None
    item = parse(f"{budget.limit}/{budget.per}")
    return item, counter_key(item, _ids(d.subject.tenant, d.subject.sub, "budget", *counter))


def counter_key(item: RateLimitItem, ids: tuple[str, ...]) -> str:
    """The storage key of a counter: `limits`' layout (`LIMITER/<ids>/<window>`) without the
    limit, which `limits` puts in its keys, so a raised limit counts on from what was spent."""
    return "/".join([item.namespace, *ids, str(item.multiples), item.GRANULARITY.name])


def _ids(*parts: str | None) -> tuple[str, ...]:
    """Key parts, escaped: `limits` joins them with '/', so 'a/b','c' must not equal 'a','b/c'."""
    return tuple(quote(p or "-", safe="") for p in parts)


def _period(item: RateLimitItem) -> str:
    name = item.GRANULARITY.name
    return name if item.multiples == 1 else f"{item.multiples} {name}s"


async def within_store_time(call: Awaitable[T], timeout: float, tick: float = TICK) -> T:
    """`call`'s result, or TimeoutError once the store has had `timeout` seconds to answer.

    The store's time, not the clock's: each wake-up of the event loop charges at most `tick`. A loop
    that is late (fifty TLS handshakes at once on a busy machine) leaves a reply that came in time
    unread in its socket, and `asyncio.wait_for` then blamed the store: a 50-way budget race on a
    loaded 2-core machine refused calls `store_unavailable` with Redis answering in microseconds. A
    store that does not answer still fails after `timeout` on an idle loop, and after
    `timeout / tick` wake-ups on a busy one.
    """
    task = asyncio.ensure_future(call)
    left = timeout
    try:
        while not task.done():
            if left <= 0:
                raise TimeoutError
            wait = min(tick, left)
            await asyncio.wait({task}, timeout=wait)
            left -= wait
        return task.result()
    finally:
        if not task.done():
            task.cancel()
