"""The fleet's state on Redis (`stores.state: redis://…`): revocations, approvals, decisions feed.

See `gateway.stores` for the seam and the failure rules. Keys are under `PREFIX`:
- `revocations`: a list of `{"kind", "value", "at"}` entries, appended to, and cut from its head
  once an entry is too old to stop a valid token (`gateway.identity.revocation.kept_for`; on every
  revoke and every `PRUNE_SECONDS`), counted in `revocations:pruned`; every revoke is also published
  on `revoked`. Each replica holds the union of what it has read, less what is too old (a Redis that
  comes back empty cannot un-revoke a token for a replica that saw it), re-reads when the list's
  length or pruned count changes (polled every `POLL_SECONDS`, and at once on a `revoked` message), and re-reads
  it whole every `FULL_READ_SECONDS`. When the list could not be read for `STALE_SECONDS`, identity
  checks refuse with `store_unavailable`: a replica that cannot see revocations cannot honour them.
- `apr:<id>`: one approval as a hash (absent fields are None; `summary` is JSON);
  `apr:digest:<sha256>`: the pending approval of a request; `apr:pending:<agent>`: a sorted set of
  the agent's pending approvals by expiry (the `approval_max_pending` cap); `apr:index`: every
  approval by creation time (`approvals list`). Creating, deciding and consuming are each one Lua
  script, so an approval is single-use across the fleet. Records are kept `RETENTION_SECONDS`.
- `decisions`: a list capped at `RECENT_DECISIONS` audit records, newest first; every batch pushed
  is also published on `decisions:live` as `{"origin": ..., "records": [...]}`, for the other
  processes' live streams.
- `quarantines`: a list of `{"scope", "value", "released", "reason", "by", "at"}` changes, only ever
  appended to (a release is a change too), read like the revocations; `quarantines:audited`: the set
  of change ids (positions) a gateway has claimed to audit and export, so that each is recorded once.
- `tools`: a hash of registered tools, name -> manifest and module (`gateway.stores.tools`).
- `mcp:pins`: a hash of MCP tool pins, JSON `[server, tool]` -> the pin's row; `mcp:pin_counts`: server
  -> how many pins it has (recounted from `mcp:pins` at start, kept by the scripts); `mcp:session:<sha256>`:
  the agent (and server) a session id is bound to, expiring `SESSION_TTL` after the binding.
- `connectors`: a hash of connectors registered through the API, name -> document, who and when;
  `connectors:version`: bumped by every add and delete, polled by every replica.
- `console:session:<sha256 of the id>`: one console session, expiring with it; `console:sessions`:
  every live one by expiry (`max_sessions`); `console:admin:<sha256>`: an admin's by creation
  (`sessions_per_admin`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.connector_store import AlreadyStored, ConnectorStore, StoredConnector
from gateway.errors import ApprovalError, Refusal, StoreUnavailable
from gateway.identity.quarantine import SCOPES, Change, Quarantines
from gateway.identity.revocation import POLL_SECONDS, PRUNE_SECONDS, Revocations
from gateway.live_decisions import LiveDecisions
from gateway.mcp.store import SESSION_TTL, McpStore, Pin, Seen, SessionOwners
from gateway.policy.approvals import DEFAULT_TTL, Approval, ApprovalStore
from gateway.stores.feed import RECENT_DECISIONS
from gateway.stores.sessions import SessionStore, StoredSession

log = logging.getLogger(__name__)

PREFIX = "egw:state:"
REVOCATIONS = PREFIX + "revocations"
REVOKED_CHANNEL = PREFIX + "revoked"
REVOCATIONS_PRUNED = PREFIX + "revocations:pruned"  # entries ever cut from the list's head
FULL_READ_SECONDS = 5.0
STALE_SECONDS = 2.0
RETENTION_SECONDS = 30 * 86400
DECISIONS = PREFIX + "decisions"
DECISIONS_CHANNEL = PREFIX + "decisions:live"
FLUSH_SECONDS = 0.1
TIMEOUT = 0.5  # per command: a hung Redis stalls a call at most this long, then it is refused


class StateStoreDown(StoreUnavailable):
    """Redis did not answer a state store's command."""


def connect(url: str) -> redis.Redis:
    """The state stores' client: short timeouts and no retries of its own (see `gateway.stores`)."""
    return redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0))


@contextmanager
def _store(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as e:
        raise StateStoreDown(f"the {what} store (Redis) is unavailable: {type(e).__name__}") from None


@contextmanager
def _foreign(what: str) -> Iterator[None]:
    """Decoding what a gateway wrote: a value that does not decode (another program wrote the key)
    makes the store one this gateway cannot use (`StateStoreDown`: `store_unavailable`), not an
    `internal_error` with a traceback."""
    try:
        yield
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StateStoreDown(f"the {what} store (Redis) holds a value no gateway wrote: {type(e).__name__}") from None


def _entries(raw: Sequence[bytes | str], what: str, valid: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The entries of an append-only list (revocations, quarantines), each checked to be what a
    gateway writes. One that is not (another program wrote the key) raises `StateStoreDown`, naming
    its position, never its bytes: skipping it could drop a revocation, and the JSON or key error
    it used to raise ended the replica's watcher for good, without a word in the log."""
    rows = []
    for position, item in enumerate(raw, start=1):
        try:
            row = json.loads(item)
        except ValueError:
            row = None
        if not (isinstance(row, dict) and valid(row)):
            raise StateStoreDown(f"the {what} list in Redis holds an entry no gateway wrote (position {position})")
        rows.append(row)
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _revocation(row: dict[str, Any]) -> bool:
    return row.get("kind") in ("jti", "sub") and isinstance(row.get("value"), str) and _number(row.get("at"))


def _quarantine(row: dict[str, Any]) -> bool:
    return (row.get("scope") in SCOPES and isinstance(row.get("released"), bool) and _number(row.get("at"))
            and all(isinstance(row.get(k), str) for k in ("value", "reason", "by")))


async def listen(url: str, channel: str, on_message: Callable[[bytes], Awaitable[None]]) -> None:
    """Every message on `channel` until cancelled, on a connection of its own (a subscribed
    connection can do nothing else); after Redis goes away, subscribes again every
    `POLL_SECONDS` until it answers. What was published meanwhile is not seen: pub/sub is a hint
    or a view here, never the only copy."""
    while True:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=TIMEOUT)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await on_message(message["data"])
        except (RedisError, OSError):
            await asyncio.sleep(POLL_SECONDS)
        finally:
            await client.aclose()


# --- revocations -----------------------------------------------------------------------------


# KEYS: the list, its pruned count. ARGV: the cutoff time. Entries are appended in time order (up
# to the replicas' clock skew: one a little out of order is kept a little longer); the head is cut
# while it is older than the cutoff, and stops at anything it cannot read (`refresh` reports it).
_REVOCATIONS_PRUNE = """
local n = 0
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  local ok, row = pcall(cjson.decode, head)
  if not ok or type(row) ~= 'table' or type(row.at) ~= 'number' or row.at >= tonumber(ARGV[1]) then break end
  redis.call('LPOP', KEYS[1])
  n = n + 1
end
if n > 0 then redis.call('INCRBY', KEYS[2], n) end
return n
"""


class RedisRevocations(Revocations):
    store_errors = (StateStoreDown,)

    def __init__(self, client: redis.Redis, url: str, kept: float = math.inf, clock: Callable[[], float] = time.time) -> None:
        self._redis, self._url = client, url
        self._kept, self._clock = kept, clock
        self._prune_script = client.register_script(_REVOCATIONS_PRUNE)
        self._jtis: set[str] = set()
        self._jti_at: dict[str, float] = {}
        self._subs: dict[str, float] = {}
        self._seen = (-1, -1)  # (pruned, length) of the list at the last read
        self._confirmed = -math.inf  # monotonic time of the last successful read
        self._full_at = -math.inf
        self._pruned_at = -math.inf
        self._down = False
        try:
            self.refresh()
        except StateStoreDown as e:
            log.warning("%s at start: identities are refused until it answers", e)

    def revoke(self, *, jti: str | None = None, sub: str | None = None) -> None:
        if (jti is None) == (sub is None):
            raise ValueError("revoke exactly one of jti or sub")
        kind, value = ("jti", jti) if jti is not None else ("sub", sub)
        entry = json.dumps({"kind": kind, "value": value, "at": self._clock()})
        with _store("revocation"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.rpush(REVOCATIONS, entry)
            pipe.publish(REVOKED_CHANNEL, kind)
            pipe.execute()
        self._pruned_at = -math.inf  # the write is done: a failed prune only leaves old entries
        self.refresh()

    def prune(self) -> None:
        """Cut the entries too old to stop a valid token, then re-read; raises `StateStoreDown`."""
        self._cut()
        self.refresh()

    def _cut(self) -> None:
        self._pruned_at = time.monotonic()  # a prune that fails is tried again PRUNE_SECONDS later
        if math.isfinite(self._kept):
            with _store("revocation"):
                self._prune_script(keys=[REVOCATIONS, REVOCATIONS_PRUNED], args=[repr(self._clock() - self._kept)])

    def refresh(self) -> None:
        """Read the list when it changed (or every FULL_READ_SECONDS), pruning it every
        PRUNE_SECONDS first; raises `StateStoreDown` when the list cannot be read. A prune that
        fails is logged and the list read all the same: pruning writes, and a Redis that refuses
        writes (MISCONF, NOREPLICAS, READONLY) still serves reads; refusing every agent because
        old entries cannot be cut would be worse than keeping them (as the SQLite watcher does)."""
        if time.monotonic() - self._pruned_at >= PRUNE_SECONDS:
            try:
                self._cut()
            except StateStoreDown as e:
                log.warning("cannot prune old revocations: %s", e)
        now = time.monotonic()
        with _store("revocation"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(REVOCATIONS_PRUNED)
            pipe.llen(REVOCATIONS)
            pruned_raw, length = pipe.execute()
            seen = (int(pruned_raw or 0), int(length))
            if seen != self._seen or now - self._full_at > FULL_READ_SECONDS:
                raw = self._redis.lrange(REVOCATIONS, 0, -1)
                self._merge(_entries(raw, "revocation", _revocation), seen[0])
                self._full_at = now
        self._confirmed = time.monotonic()

    def count(self) -> int:
        with _store("revocation"):
            return int(self._redis.llen(REVOCATIONS))

    def _merge(self, rows: list[dict[str, Any]], pruned: int) -> None:
        """The union of what this replica has read and `rows`, less what is too old to matter."""
        if pruned + len(rows) < sum(self._seen):
            log.error("the revocation list in Redis shrank (%d -> %d entries ever written): was Redis restarted without "
                      "persistence? This replica keeps every revocation it saw", sum(self._seen), pruned + len(rows))
        jti_at, subs = dict(self._jti_at), dict(self._subs)
        for row in rows:
            if row["kind"] == "jti":
                jti_at[row["value"]] = max(float(row["at"]), jti_at.get(row["value"], 0.0))
            else:
                subs[row["value"]] = max(float(row["at"]), subs.get(row["value"], 0.0))
        cutoff = self._clock() - self._kept
        self._jti_at = {jti: at for jti, at in jti_at.items() if at >= cutoff}
        self._subs = {sub: at for sub, at in subs.items() if at >= cutoff}
        self._jtis, self._seen = set(self._jti_at), (pruned, len(rows))

    def is_revoked(self, jti: str, sub: str, iat: float) -> bool:
        if time.monotonic() - self._confirmed > STALE_SECONDS:
            raise Refusal("store_unavailable", "the revocation list cannot be read; identities are refused until it can")
        return super().is_revoked(jti, sub, iat)

    async def watch(self) -> None:
        listener = asyncio.create_task(listen(self._url, REVOKED_CHANNEL, self._revoked))
        try:
            while True:  # a first read at once: the one at start-up is old by the time calls come
                await self._refresh_logged()
                await asyncio.sleep(POLL_SECONDS)
        finally:
            listener.cancel()

    async def _refresh_logged(self) -> None:
        """Refresh off the loop; log an outage once, and its end."""
        try:
            await asyncio.to_thread(self.refresh)
        except StateStoreDown as e:
            if not self._down:
                log.error("%s: identities are refused after %.0f s without it", e, STALE_SECONDS)
            self._down = True
            return
        if self._down:
            log.warning("the revocation store (Redis) answers again")
        self._down = False

    async def _revoked(self, _kind: bytes) -> None:
        """Re-read at once when any replica revokes."""
        await self._refresh_logged()


# --- quarantine ------------------------------------------------------------------------------

QUARANTINES = PREFIX + "quarantines"
QUARANTINES_AUDITED = PREFIX + "quarantines:audited"  # the ids of changes a gateway has claimed to audit


class RedisQuarantines(Quarantines):
    """Quarantines as an append-only list beside the revocations: a change's id is its position.
    Polled like the SQLite table. A list that has not been read for `STALE_SECONDS` refuses every
    agent (`store_unavailable`), as the revocations do: a quarantine made meanwhile could not be
    honoured. (Relying on the revocation store alone to refuse was not enough: an entry no gateway
    wrote stopped this list's reads while the revocations still read fine.)"""

    store_errors = (StateStoreDown,)

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._active: dict[tuple[str, str], Change] = {}
        self._seen = -1
        self._confirmed = -math.inf  # monotonic time of the last successful read
        self._lock = threading.RLock()  # as `Quarantines._lock`
        try:
            self.refresh()
        except StateStoreDown as e:
            log.warning("%s at start: agents are refused until it answers", e)

    def _append(self, scope: str, value: str, release: bool, reason: str, by: str) -> None:
        entry = json.dumps({"scope": scope, "value": value, "released": release, "reason": reason, "by": by, "at": time.time()})
        with _store("quarantine"):
            self._redis.rpush(QUARANTINES, entry)

    def claim(self, change: Change) -> bool:
        with _store("quarantine"):
            return bool(self._redis.sadd(QUARANTINES_AUDITED, change.id))

    def refresh(self) -> list[Change]:
        with self._lock, _store("quarantine"):
            length = self._redis.llen(QUARANTINES)
            if length == self._seen:
                self._confirmed = time.monotonic()
                return []
            raw = self._redis.lrange(QUARANTINES, 0, -1)
        rows = [(i, d["scope"], d["value"], d["released"], d["reason"], d["by"], d["at"])
                for i, d in enumerate(_entries(raw, "quarantine", _quarantine), start=1)]
        with self._lock:
            changes = self._load(rows, len(rows))
        self._confirmed = time.monotonic()
        return changes

    def hit(self, sub: str, tenant: str | None, connector: str | None = None) -> Change | None:
        if time.monotonic() - self._confirmed > STALE_SECONDS:
            raise Refusal("store_unavailable", "the quarantine list cannot be read; agents are refused until it can")
        return super().hit(sub, tenant, connector)


# --- approvals -------------------------------------------------------------------------------

_APPROVAL = PREFIX + "apr:"
_INDEX = _APPROVAL + "index"
_FIELDS = tuple(Approval.__dataclass_fields__)
_FLOATS = {"created_at", "expires_at", "decided_at", "used_at"}

# KEYS: digest key, agent's pending set, index. ARGV: now, ttl, cap (-1: none), id, record prefix,
# retention s, then the new record's field/value pairs. Returns {created (1/0), id} or false (capped).
_REQUEST = """
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local id = redis.call('GET', KEYS[1])
if id then
  local state, exp = unpack(redis.call('HMGET', ARGV[5] .. id, 'state', 'expires_at'))
  if state == 'pending' and tonumber(exp) > now then return {0, id} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local cap = tonumber(ARGV[3])
if cap >= 0 and redis.call('ZCARD', KEYS[2]) >= cap then return false end
local key = ARGV[5] .. ARGV[4]
redis.call('HSET', key, unpack(ARGV, 7))
redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[6])))
redis.call('SET', KEYS[1], ARGV[4], 'PX', math.ceil(ttl * 1000))
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]))
return {1, ARGV[4]}
"""

# KEYS: the approval, its agent's pending set, its digest key. ARGV: now, new state, by, ttl, id,
# reason (optional). Returns 1 when decided, 0 when it was not pending (or had expired).
_DECIDE = """
local now = tonumber(ARGV[1])
local state, exp = unpack(redis.call('HMGET', KEYS[1], 'state', 'expires_at'))
if state ~= 'pending' or tonumber(exp) <= now then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'decided_by', ARGV[3], 'decided_at', ARGV[1],
           'expires_at', tostring(now + tonumber(ARGV[4])))
if ARGV[6] then redis.call('HSET', KEYS[1], 'decision_reason', ARGV[6]) end
redis.call('ZREM', KEYS[2], ARGV[5])
if redis.call('GET', KEYS[3]) == ARGV[5] then redis.call('DEL', KEYS[3]) end
return 1
"""

# KEYS: the approval. ARGV: now, sub, connector, action, digest, the using call's id (optional).
# Returns 1 for exactly one caller.
_CONSUME = """
local now = tonumber(ARGV[1])
local a = redis.call('HMGET', KEYS[1], 'state', 'expires_at', 'sub', 'connector', 'action', 'digest')
if a[1] ~= 'approved' or tonumber(a[2]) <= now or a[3] ~= ARGV[2] or a[4] ~= ARGV[3]
   or a[5] ~= ARGV[4] or a[6] ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'used', 'used_at', ARGV[1])
if ARGV[6] then redis.call('HSET', KEYS[1], 'used_by', ARGV[6]) end
return 1
"""

# KEYS: the approval. ARGV: the id of the call that used it. Returns 1 when given back.
_RELEASE = """
local state, by = unpack(redis.call('HMGET', KEYS[1], 'state', 'used_by'))
if state ~= 'used' or by ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'approved')
redis.call('HDEL', KEYS[1], 'used_at', 'used_by')
return 1
"""


def _agent_key(tenant: str | None, sub: str) -> str:
    return _APPROVAL + "pending:" + hashlib.sha256(json.dumps([tenant, sub]).encode()).hexdigest()


class RedisApprovals(ApprovalStore):
    """Approvals in Redis: the same rules as the SQLite store, single-use across the fleet."""

    def __init__(
        self,
        client: redis.Redis,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
        on_new: Callable[[Approval], None] | None = None,
    ) -> None:
        self.ttl, self.on_new, self._clock = ttl, on_new, clock
        self._redis = client
        self._request = client.register_script(_REQUEST)
        self._decide_script = client.register_script(_DECIDE)
        self._consume = client.register_script(_CONSUME)
        self._release = client.register_script(_RELEASE)

    def close(self) -> None:
        """Nothing to close: the shared client's connections end with the process."""

    def request(
        self,
        tenant: str | None,
        sub: str,
        connector: str,
        action: str,
        digest: str,
        summary: dict[str, Any],
        reason: str,
        max_pending: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> Approval | None:
        now = self._clock()
        new = Approval(
            id="apr_" + secrets.token_urlsafe(12), tenant=tenant, sub=sub, connector=connector, action=action,
            digest=digest, summary=summary, reason=reason, state="pending", created_at=now,
            expires_at=now + self.ttl, decided_by=None, decided_at=None, used_at=None, body=body,
        )
        fields = [x for k, v in _to_hash(new).items() for x in (k, v)]
        keys = [_APPROVAL + "digest:" + digest, _agent_key(tenant, sub), _INDEX]
        args: list[str | int] = [repr(now), repr(self.ttl), -1 if max_pending is None else max_pending, new.id,
                                 _APPROVAL, RETENTION_SECONDS, *fields]
        with _store("approval"):
            answer = self._request(keys=keys, args=args)
        if answer is None:
            return None
        created, approval_id = int(answer[0]), answer[1].decode()
        if created:
            if self.on_new is not None:
                self.on_new(new)
            return new
        found = self.get(approval_id)
        if found is None:
            raise StateStoreDown("the approval store (Redis) lost a pending approval while it was read")
        return found

    def get(self, approval_id: str) -> Approval | None:
        with _store("approval"):
            raw = self._redis.hgetall(_APPROVAL + approval_id)
        with _foreign("approval"):
            return self._view(raw) if raw else None

    def list(self, states: Sequence[str] = ("pending",)) -> list[Approval]:
        with _store("approval"):
            ids = self._redis.zrange(_INDEX, 0, -1)
            pipe = self._redis.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(_APPROVAL + _text(i))
            rows = pipe.execute()
        with _foreign("approval"):
            found = [self._view(raw) for raw in rows if raw]
        return [a for a in found if a.state in states]

    def _decide(self, approval_id: str, by: str, state: str, reason: str | None) -> Approval:
        found = self.get(approval_id)
        if found is None:
            raise ApprovalError(f"no approval {approval_id}")
        keys = [_APPROVAL + approval_id, _agent_key(found.tenant, found.sub), _APPROVAL + "digest:" + found.digest]
        args = [repr(self._clock()), state, by, repr(self.ttl), approval_id, *([reason] if reason is not None else [])]
        with _store("approval"):
            changed = self._decide_script(keys=keys, args=args)
        after = self.get(approval_id)
        assert after is not None  # records outlive any decision by RETENTION_SECONDS
        if not changed:
            raise ApprovalError(f"approval {approval_id} is {after.state}, not pending")
        return after

    def consume(
        self, approval_id: str, tenant: str | None, sub: str, connector: str, action: str, digest: str, call_id: str,
    ) -> bool:
        """Single use across the fleet: the script marks it used for exactly one caller. `tenant`
        is bound by `digest` (the digest covers tenant, agent, action and parameters)."""
        args = [repr(self._clock()), sub, connector, action, digest, call_id]
        with _store("approval"):
            return self._consume(keys=[_APPROVAL + approval_id], args=args) == 1

    def release(self, approval_id: str, call_id: str) -> bool:
        """As the SQLite store's: one script, so only the call that used it gives it back."""
        with _store("approval"):
            return self._release(keys=[_APPROVAL + approval_id], args=[call_id]) == 1

    def _view(self, raw: dict[Any, Any]) -> Approval:
        """The stored hash as an `Approval`; one past its expiry reads as `expired`, as in SQLite."""
        d: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
        values: dict[str, Any] = {f: d.get(f) for f in _FIELDS}
        for f in _FLOATS:
            values[f] = float(values[f]) if values[f] is not None else None
        values["summary"] = json.loads(values["summary"])
        values["body"] = None if values["body"] is None else json.loads(values["body"])
        if values["state"] in ("pending", "approved") and values["expires_at"] <= self._clock():
            values["state"] = "expired"
        return Approval(**values)


def _object(raw: bytes | str) -> dict[str, Any]:
    """One JSON object, as a gateway writes every record: anything else is a `TypeError`."""
    found = json.loads(raw)
    if not isinstance(found, dict):
        raise TypeError("not a JSON object")
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _to_hash(a: Approval) -> dict[str, str]:
    out = {k: v for k, v in a.__dict__.items() if v is not None}
    out["summary"] = json.dumps(a.summary)
    if a.body is not None:
        out["body"] = json.dumps(a.body)
    return {k: repr(v) if isinstance(v, float) else str(v) for k, v in out.items()}


# --- decisions feed ------------------------------------------------------------------------------


class RedisFeed:
    """The fleet's recent decisions: queued here, pushed by `run` to a list capped in Redis and
    published on `DECISIONS_CHANNEL`, from which `run` hands the other processes' records to this
    one's live streams. `origin` names this process (replica, worker, and a random id: two
    single-process replicas on one host share a replica name and no worker)."""

    def __init__(self, client: redis.Redis, url: str, replica: str, worker: int | None,
                 size: int = RECENT_DECISIONS) -> None:
        self._redis, self._url, self._size = client, url, size
        self.origin = f"{replica}/{'-' if worker is None else worker}/{secrets.token_hex(6)}"
        self._queue: deque[dict[str, Any]] = deque(maxlen=size)  # a Redis outage drops the oldest

    def append(self, rec: dict[str, Any]) -> None:
        self._queue.append(rec)

    async def latest(self) -> list[dict[str, Any]]:
        with _store("decisions"):
            raw = await asyncio.to_thread(self._redis.lrange, DECISIONS, 0, self._size - 1)
        with _foreign("decisions"):
            return [_object(r) for r in reversed(raw)]

    async def run(self, live: LiveDecisions) -> None:
        relay = asyncio.create_task(listen(self._url, DECISIONS_CHANNEL, lambda data: self._relay(data, live)))
        try:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)
                if not self._queue:
                    continue
                batch = list(self._queue)
                self._queue.clear()
                try:
                    await asyncio.to_thread(self._push, batch)
                except StateStoreDown as e:
                    log.warning("%s: %d recent decisions not shared", e, len(batch))
        finally:
            relay.cancel()

    def _push(self, batch: list[dict[str, Any]]) -> None:
        encoded = [json.dumps(r, default=str) for r in batch]
        origin, records = json.dumps(self.origin), ",".join(encoded)  # each record encoded once
        message = f'{{"origin":{origin},"records":[{records}]}}'
        with _store("decisions"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.lpush(DECISIONS, *encoded)
            pipe.ltrim(DECISIONS, 0, self._size - 1)
            pipe.publish(DECISIONS_CHANNEL, message)
            pipe.execute()

    async def _relay(self, data: bytes, live: LiveDecisions) -> None:
        """Another process's batch to the open streams, in its order; not even parsed when no
        stream is open, and never this process's own (its streams had those as they were written)."""
        if not live.open:
            return
        try:
            batch = json.loads(data)
            origin, records = batch["origin"], batch["records"]
        except (ValueError, TypeError, KeyError):
            log.warning("a message on %s is not a batch of decisions; dropped", DECISIONS_CHANNEL)
            return
        if origin == self.origin or not isinstance(records, list):
            return
        for rec in records:
            if isinstance(rec, dict):
                live.publish(rec)


# --- registered tools ----------------------------------------------------------------------------

TOOLS = PREFIX + "tools"


class RedisToolShelf:
    """Registered tools in one Redis hash: name -> JSON of the manifest and the module (base64).
    `HSETNX` claims a name atomically, so two replicas registering one name get one winner."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def claim(self, name: str, manifest: Any, module: bytes) -> bool:
        entry = json.dumps({"manifest": manifest, "module": base64.b64encode(module).decode()})
        with _store("tool"):
            return bool(self._redis.hsetnx(TOOLS, name, entry))

    def release(self, name: str) -> None:
        with _store("tool"):
            self._redis.hdel(TOOLS, name)

    def names(self) -> set[str]:
        with _store("tool"):
            return {_text(n) for n in self._redis.hkeys(TOOLS)}

    def get(self, name: str) -> tuple[Any, bytes] | None:
        with _store("tool"):
            raw = self._redis.hget(TOOLS, name)
        if raw is None:
            return None
        with _foreign("tool"):
            entry = json.loads(raw)
            return entry["manifest"], base64.b64decode(entry["module"])


# --- MCP pins and sessions -----------------------------------------------------------------------

MCP_PINS = PREFIX + "mcp:pins"
MCP_PIN_COUNTS = PREFIX + "mcp:pin_counts"  # server -> its pins, so a bound is checked without a scan
_MCP_SESSION = PREFIX + "mcp:session:"
MCP_SCHEMAS = PREFIX + "mcp:schemas"  # definition digest -> its input schema (JSON)

# A pin is one field of MCP_PINS, named by the JSON of [server, tool], holding the JSON of the row
# the SQLite table has (absent fields are NULL; times as strings, exact). Each script is one of the
# SQLite store's statements, so two replicas observing, seeding or accepting at once are serialized.

# KEYS: pins, counts. Every server's pins counted again (a store written before the counts existed).
_MCP_RECOUNT = """
local counts = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  local server = cjson.decode(field)[1]
  counts[server] = (counts[server] or 0) + 1
end
redis.call('DEL', KEYS[2])
for server, n in pairs(counts) do redis.call('HSET', KEYS[2], server, n) end
return 1
"""

# KEYS: pins, counts. ARGV: field, digest, now, server. The config's pin, unless an admin accepted a
# change since this value.
_MCP_SEED = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local p = cjson.decode(raw)
  if p.source == 'admin' and p.config == ARGV[2] then return 0 end
else
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({pinned=ARGV[2], source='config', config=ARGV[2], pinned_at=ARGV[3]}))
return 1
"""

# KEYS: pins, counts. ARGV: field, digest, now, server, the server's bound. Returns a `Seen` value.
_MCP_OBSERVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  if tonumber(redis.call('HGET', KEYS[2], ARGV[4]) or '0') >= tonumber(ARGV[5]) then return 'over_limit' end
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({pinned=ARGV[2], source='listed', pinned_at=ARGV[3]}))
  return 'new'
end
local p = cjson.decode(raw)
if p.pinned == ARGV[2] then return 'same' end
if p.pending == ARGV[2] then return 'still_changed' end
p.pending = ARGV[2]
p.changed_at = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(p))
return 'changed'
"""

# ARGV: field, now. Returns the accepted row, or false when nothing was pending.
_MCP_ACCEPT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local p = cjson.decode(raw)
if not p.pending then return false end
p.pinned = p.pending
p.pending = nil
p.changed_at = nil
p.source = 'admin'
p.pinned_at = ARGV[2]
local row = cjson.encode(p)
redis.call('HSET', KEYS[1], ARGV[1], row)
return row
"""

# KEYS: the session's key. ARGV: the binding, its lifetime in ms. Returns the binding that holds.
_MCP_BIND = """
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return redis.call('GET', KEYS[1])
"""


class RedisMcpStore(McpStore):
    """MCP pins and session bindings in Redis: one script per read-modify-write, so an `observe`
    racing on two replicas pins exactly one definition, and an accept on one is the pin on all
    at once (every call reads the pin from Redis). Bindings expire `SESSION_TTL` after they are made."""

    def __init__(self, client: redis.Redis, config_pins: dict[str, dict[str, str]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis, self._clock = client, clock
        self._owners = SessionOwners(clock)
        self._seed_script = client.register_script(_MCP_SEED)
        self._observe = client.register_script(_MCP_OBSERVE)
        self._accept = client.register_script(_MCP_ACCEPT)
        self._bind_script = client.register_script(_MCP_BIND)
        with _store("MCP"):
            client.register_script(_MCP_RECOUNT)(keys=[MCP_PINS, MCP_PIN_COUNTS])
        for server, pins in (config_pins or {}).items():
            for tool, digest in pins.items():
                self._seed(server, tool, digest)

    def close(self) -> None:
        """Nothing to close: the shared client's connections end with the process."""

    def _seed(self, server: str, tool: str, digest: str) -> None:
        with _store("MCP"):
            self._seed_script(keys=[MCP_PINS, MCP_PIN_COUNTS], args=[_pin_field(server, tool), digest, repr(self._clock()), server])

    def observe(self, server: str, tool: str, digest: str, limit: int) -> Seen:
        with _store("MCP"):
            seen = self._observe(keys=[MCP_PINS, MCP_PIN_COUNTS],
                                 args=[_pin_field(server, tool), digest, repr(self._clock()), server, limit])
        return Seen(_text(seen))

    def state(self, server: str, tool: str) -> Pin | None:
        with _store("MCP"):
            raw = self._redis.hget(MCP_PINS, _pin_field(server, tool))
        with _foreign("MCP"):
            return _pin(server, tool, raw) if raw is not None else None

    def accept(self, server: str, tool: str) -> Pin | None:
        with _store("MCP"):
            row = self._accept(keys=[MCP_PINS], args=[_pin_field(server, tool), repr(self._clock())])
        with _foreign("MCP"):
            return _pin(server, tool, row) if row is not None else None

    def pins(self, server: str | None = None) -> list[Pin]:
        with _store("MCP"):
            rows = self._redis.hgetall(MCP_PINS)
        found = []
        with _foreign("MCP"):
            for field, raw in rows.items():
                server_name, tool = json.loads(field)
                found.append(_pin(server_name, tool, raw))
        return sorted((p for p in found if server is None or p.server == server), key=lambda p: (p.server, p.tool))

    def remember_schema(self, digest: str, schema: str) -> None:
        with _store("MCP"):
            self._redis.hsetnx(MCP_SCHEMAS, digest, schema)

    def schema(self, digest: str) -> str | None:
        with _store("MCP"):
            raw = self._redis.hget(MCP_SCHEMAS, digest)
        return None if raw is None else _text(raw)

    def _bind(self, id_hash: str, agent: str, server: str) -> tuple[str, float]:
        binding = json.dumps({"agent": agent, "server": server, "at": self._clock()})
        with _store("MCP"):
            held = self._bind_script(keys=[_MCP_SESSION + id_hash], args=[binding, math.ceil(SESSION_TTL * 1000)])
        with _foreign("MCP"):
            bound = json.loads(held)
            return str(bound["agent"]), float(bound["at"])

    def _owner(self, id_hash: str) -> tuple[str, float] | None:
        with _store("MCP"):
            held = self._redis.get(_MCP_SESSION + id_hash)
        if held is None:
            return None
        with _foreign("MCP"):
            binding = json.loads(held)
            return str(binding["agent"]), float(binding["at"])


def _pin_field(server: str, tool: str) -> str:
    return json.dumps([server, tool])


def _pin(server: str, tool: str, raw: bytes | str) -> Pin:
    p = json.loads(raw)
    changed = p.get("changed_at")
    return Pin(server, tool, p["pinned"], p.get("pending"), p["source"], float(p["pinned_at"]),
               None if changed is None else float(changed))


# --- registered connectors -----------------------------------------------------------------------

CONNECTORS = PREFIX + "connectors"
CONNECTORS_VERSION = PREFIX + "connectors:version"

# KEYS: the connectors hash, the version. ARGV: name, entry. 1 when stored, 0 when the name is taken.
_CONNECTOR_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1
"""

# KEYS: the connectors hash, the version. ARGV: name. 1 when deleted.
_CONNECTOR_REMOVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1
"""


class RedisConnectorStore(ConnectorStore):
    """Registered connectors' documents in one Redis hash, with a version every change bumps: the
    replicas poll it (`ConnectorAdmin.watch`) and apply what changed to their own registry."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._add = client.register_script(_CONNECTOR_ADD)
        self._remove = client.register_script(_CONNECTOR_REMOVE)

    def add(self, name: str, document: dict[str, Any], registered_by: str) -> StoredConnector:
        stored = StoredConnector(name, document, registered_by, time.time())
        entry = json.dumps({"document": document, "registered_by": registered_by, "registered_at": stored.registered_at},
                           separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        with _store("connector"):
            added = self._add(keys=[CONNECTORS, CONNECTORS_VERSION], args=[name, entry])
        if not added:
            raise AlreadyStored(name)
        return stored

    def remove(self, name: str) -> bool:
        with _store("connector"):
            return bool(self._remove(keys=[CONNECTORS, CONNECTORS_VERSION], args=[name]))

    def all(self) -> list[StoredConnector]:
        with _store("connector"):
            rows = self._redis.hgetall(CONNECTORS)
        found = []
        for name, raw in rows.items():
            e = json.loads(raw)
            found.append(StoredConnector(_text(name), e["document"], e["registered_by"], float(e["registered_at"])))
        return sorted(found, key=lambda s: (s.registered_at, s.name))

    def version(self) -> int:
        with _store("connector"):
            return int(self._redis.get(CONNECTORS_VERSION) or 0)

    def close(self) -> None:
        """Nothing to close: the shared client's connections end with the process."""


# --- console sessions ----------------------------------------------------------------------------

_CONSOLE = PREFIX + "console:"
CONSOLE_SESSIONS = _CONSOLE + "sessions"  # every live session's id hash, by expiry

# KEYS: all sessions (by expiry), the admin's sessions (by creation). ARGV: now, per admin, limit,
# id hash, record, created_at, expires_at, session key prefix. Returns 1 when stored, 0 when full.
_CONSOLE_PUT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for _, h in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[1], h) then redis.call('ZREM', KEYS[2], h) end
end
local mine = redis.call('ZRANGE', KEYS[2], 0, -1)
for i = 1, #mine - tonumber(ARGV[2]) + 1 do
  redis.call('ZREM', KEYS[2], mine[i])
  redis.call('ZREM', KEYS[1], mine[i])
  redis.call('DEL', ARGV[8] .. mine[i])
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
local ttl = math.max(1, math.ceil((tonumber(ARGV[7]) - now) * 1000))
redis.call('SET', ARGV[8] .. ARGV[4], ARGV[5], 'PX', ttl)
redis.call('ZADD', KEYS[1], ARGV[7], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[4])
redis.call('PEXPIRE', KEYS[2], math.max(ttl, redis.call('PTTL', KEYS[2])))
return 1
"""

# KEYS: all sessions, the session's key. ARGV: id hash.
_CONSOLE_DELETE = """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


class RedisSessionStore(SessionStore):
    """Console sessions in Redis: each record under its id's hash, expiring with the session; the
    bounds are one script, so two replicas signing in at once cannot pass `max_sessions`."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._put = client.register_script(_CONSOLE_PUT)
        self._delete = client.register_script(_CONSOLE_DELETE)

    def put(self, id_hash: str, session: StoredSession, now: float, per_admin: int, limit: int) -> bool:
        keys = [CONSOLE_SESSIONS, _CONSOLE + "admin:" + session.admin()]
        args: list[str | int] = [repr(now), per_admin, limit, id_hash, session.to_json(), repr(session.created_at),
                repr(session.expires_at), _CONSOLE + "session:"]
        with _store("console session"):
            return bool(self._put(keys=keys, args=args))

    def get(self, id_hash: str, now: float) -> StoredSession | None:
        with _store("console session"):
            raw = self._redis.get(_CONSOLE + "session:" + id_hash)
        found = None if raw is None else StoredSession.from_json(raw)
        return found if found is not None and found.expires_at > now else None

    def delete(self, id_hash: str) -> None:
        with _store("console session"):
            self._delete(keys=[CONSOLE_SESSIONS, _CONSOLE + "session:" + id_hash], args=[id_hash])

    def close(self) -> None:
        """Nothing to close: the shared client's connections end with the process."""
