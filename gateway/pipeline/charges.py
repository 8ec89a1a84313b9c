"""Budget charges on Redis, applied exactly once per call.

Replicas sharing a budget must never overspend it nor charge one payment twice. `limits`' own
sliding-window script is atomic (no interleaving of replicas can overspend), but it is not
idempotent, and coredis retried it by default: when a connection dropped after Redis had run the
script (another command on the same multiplexed connection timed out, or Redis restarted), the
retry charged the payment a second time, and a budget raced over two replicas admitted 7-9 of the
10 payments it allowed (issue 14).

So, two rules:
- the quota store's client never retries by itself (`NoRetryPolicy`, set in `quota.Quotas.from_uri`):
  a rate hit whose reply is lost fails closed (`store_unavailable`) instead of counting twice;
- a budget charge runs `_ACQUIRE`: `limits`' acquire-sliding-window script plus one key per call
  id (the decision id). The first run stores its answer there; a re-run of the same call returns
  that answer and charges nothing. Only this script is retried, by `ExactlyOnceBudgets.hit`,
  within the quota step's timeout;
- a charge still unanswered when the quota step gives up (its timeout, or Redis gone) refuses the
  call (`store_unavailable`) and is given back (`_RELEASE`, retried in the background until Redis
  answers): the call is marked released first, so a charge still on its way arrives as a no-op.
  So Redis holds exactly one charge per call let out, whatever the failures.

The window keys are `limits`' own (`LIMITS:{key}` and `LIMITS:{key}/-1`), so its
`get_sliding_window` still reads them for `Retry-After`; the charge key `LIMITS:{key}/charge/<id>`
shares their hash tag, so the three keys stay in one Cluster slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.errors import StorageError

log = logging.getLogger(__name__)

CHARGE_MEMORY_MS = 600_000  # how long a call's answer is kept: far longer than any retry of it
RETRY_PAUSES = (0.02, 0.05, 0.1)  # then one last try; the quota step's timeout bounds them all

# KEYS: previous window, current window, this call's charge. ARGV: limit, expiry (s), cost, memory (ms).
# Returns 1 (charged, now or by an earlier run of this call) or 0 (refused).
_ACQUIRE = """
local done = redis.call('GET', KEYS[3])
if done == 'released' then return 0 end
if done then return tonumber(done) end
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local amount = tonumber(ARGV[3])
local function answer(ok)
  redis.call('SET', KEYS[3], ok, 'PX', tonumber(ARGV[4]))
  return ok
end
if amount > limit then return answer(0) end
local current_ttl = tonumber(redis.call('PTTL', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
  redis.call('RENAME', KEYS[2], KEYS[1])
  redis.call('SET', KEYS[2], 0, 'PX', current_ttl + expiry)
end
local previous_count = tonumber(redis.call('GET', KEYS[1])) or 0
local previous_ttl = math.max(tonumber(redis.call('PTTL', KEYS[1])) or 0, 0)
local current_count = tonumber(redis.call('GET', KEYS[2])) or 0
if math.floor(previous_count * previous_ttl / expiry) + current_count + amount > limit then
  return answer(0)
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], amount)
else
  redis.call('SET', KEYS[2], amount, 'PX', expiry * 2)
end
return answer(1)
"""

# Give back what a call whose charge went unanswered may have been charged. KEYS as `_ACQUIRE`;
# ARGV: cost, memory (ms). Marks the call released first, so a charge still on its way does nothing.
_RELEASE = """
local done = redis.call('GET', KEYS[3])
redis.call('SET', KEYS[3], 'released', 'PX', tonumber(ARGV[2]))
if done ~= '1' then return 0 end
local cost = tonumber(ARGV[1])
for _, window in ipairs({KEYS[2], KEYS[1]}) do
  if (tonumber(redis.call('GET', window)) or 0) >= cost then
    redis.call('DECRBY', window, cost)
    return 1
  end
end
return 0
"""
RELEASE_PAUSES = (0.1, 0.5, 1, 2, 5, 10, 30)  # Redis may be down for a while; then the call is forgotten


class ExactlyOnceBudgets:
    """Budget hits on a `limits` Redis storage, idempotent by call id."""

    def __init__(self, storage: RedisStorage) -> None:
        # The Redis client (~0.4 s to import, with beartype) only where the quota store is Redis:
        # every gateway's start-up paid for it, most of them on memory://.
        from coredis import exceptions

        self._lost = (exceptions.ConnectionError, exceptions.TimeoutError)  # a reply that may come again
        self._failed = exceptions.RedisError
        self._storage = storage
        connection = storage.bridge.get_connection()  # type: ignore[attr-defined]
        self._script = connection.register_script(_ACQUIRE)
        self._release = connection.register_script(_RELEASE)
        self._releasing: set[asyncio.Task[None]] = set()

    def keys(self, key: str, call_id: str) -> list[str]:
        """The previous window, the current window and the call's charge key, as stored, of the
        counter `key` (`quota.counter_key`)."""
        bridge = self._storage.bridge
        current = self._storage._current_window_key(key)
        return [bridge.prefixed_key(self._storage._previous_window_key(key)), bridge.prefixed_key(current),
                bridge.prefixed_key(f"{current}/charge/{call_id}")]

    async def hit(self, item: RateLimitItem, key: str, cost: int, call_id: str) -> bool:
        """Charge `cost` once for `call_id` to counter `key` under `item`'s limit; a lost reply is
        retried, never charged again."""
        keys = self.keys(key, call_id)
        args = [item.amount, item.get_expiry(), cost, CHARGE_MEMORY_MS]
        try:
            for pause in RETRY_PAUSES:
                with contextlib.suppress(*self._lost):
                    return bool(await self._script.execute(keys, args))
                await asyncio.sleep(pause)
            return bool(await self._script.execute(keys, args))
        except self._failed as e:
            raise StorageError(e) from None

    def release_later(self, key: str, cost: int, call_id: str) -> None:
        """The call is refused because its charge went unanswered (a timeout, Redis gone): give the
        charge back if it was made, in the background, retrying while Redis is away. A charge for a
        refused call would be spend without a payment (the issue's 7-9 of 10)."""
        task = asyncio.get_running_loop().create_task(self._release_until_done(self.keys(key, call_id), cost))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_until_done(self, keys: list[str], cost: int) -> None:
        for pause in RELEASE_PAUSES:
            with contextlib.suppress(self._failed):
                await self._release.execute(keys, [cost, CHARGE_MEMORY_MS])
                return
            await asyncio.sleep(pause)
        log.error("a budget charge of a refused call could not be given back: Redis did not answer for a minute")
