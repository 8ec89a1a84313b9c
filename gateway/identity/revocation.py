"""Token revocation, effective within a second in every running gateway.

`token revoke` (another process) appends to a SQLite table in the state dir. The gateway keeps the
revoked jtis and subjects in memory, so the per-request check is a set lookup, and a background task
reloads them when the table changes (`refresh`, every 0.25 s). Revoking a subject revokes every token
of that subject issued at or before the revocation; tokens issued later are unaffected.

A revocation is kept only while a token it stops could still be valid (`kept_for`): every token the
gateway accepts, whoever issued it, has a capped lifetime, so an entry older than the longest cap
plus the clock leeway stops nothing an expiry check would not. Old entries are dropped on every
revoke and by the watcher every `PRUNE_SECONDS` (the list grew forever before); in memory too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.config import Config
from gateway.state import open_db, write_transaction

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
PRUNE_SECONDS = 60.0  # how often the watcher drops revocations too old to stop any valid token


def kept_for(config: Config) -> float:
    """How long a revocation can still stop a valid token, in seconds.

    Every accepted token's lifetime is capped whoever issued it (`exp - iat` at most
    `max_token_ttl`, `metrics_token_ttl` for role metrics, plus the leeway; a client certificate's
    by `listen_tls.max_cert_ttl`), and the entry does not say which kind it stops, so the longest
    cap counts. A token an entry stops was issued by the revocation (a subject's: its `iat`, less
    the leeway for another issuer's clock, at or before it; a jti's: PyJWT refuses an `iat` more
    than the leeway ahead), so it expires by `at + cap + 2 x leeway` and is refused after one more
    leeway. A cap lowered later only shortens what is accepted: a longer-lived token is refused
    for its lifetime."""
    caps = [config.max_token_ttl, config.metrics_token_ttl]
    if config.listen_tls is not None:
        caps.append(config.listen_tls.max_cert_ttl)
    return max(caps) + 3 * config.token_leeway

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('jti', 'sub')),
    value TEXT NOT NULL,
    at REAL NOT NULL
)
"""


class Revocations:
    """The SQLite store (the default); `gateway.stores.redis_state.RedisRevocations` is the fleet's."""

    store_errors: tuple[type[Exception], ...] = (sqlite3.Error,)  # what `watch` logs and retries

    def __init__(self, path: Path, kept: float = math.inf, clock: Callable[[], float] = time.time):
        """`kept`: how long an entry is kept (`kept_for` of the config; by default forever)."""
        self._kept, self._clock = kept, clock
        self._jtis: set[str] = set()
        self._subs: dict[str, float] = {}
        self._seen: tuple[int, int] = (-1, -1)
        # One connection, not one per poll: four polls a second each opened the file anew.
        self._lock = threading.Lock()
        self._db = open_db(path)
        with write_transaction(self._db, self._lock) as db:
            db.execute(_SCHEMA)
        self.refresh()

    def revoke(self, *, jti: str | None = None, sub: str | None = None) -> None:
        if (jti is None) == (sub is None):
            raise ValueError("revoke exactly one of jti or sub")
        kind, value = ("jti", jti) if jti is not None else ("sub", sub)
        with write_transaction(self._db, self._lock) as db:
            db.execute("INSERT INTO revocations (kind, value, at) VALUES (?, ?, ?)", (kind, value, self._clock()))
            self._prune(db)
        self.refresh()

    def prune(self) -> None:
        """Drop the entries too old to stop a valid token; raises on a store error."""
        with write_transaction(self._db, self._lock) as db:
            self._prune(db)
        self.refresh()

    def _prune(self, db: sqlite3.Connection) -> None:
        if math.isfinite(self._kept):
            db.execute("DELETE FROM revocations WHERE at < ?", (self._clock() - self._kept,))

    def refresh(self) -> None:
        """Reload when the table has changed (a revocation added or pruned); raises on a store error."""
        with self._lock:
            seen = self._db.execute("SELECT COALESCE(MAX(id), 0), COUNT(*) FROM revocations").fetchone()
            if seen == self._seen:
                return
            rows = self._db.execute("SELECT kind, value, at FROM revocations").fetchall()
        jtis = {v for k, v, _ in rows if k == "jti"}
        subs: dict[str, float] = {}
        for k, v, at in rows:
            if k == "sub":
                subs[v] = max(at, subs.get(v, 0.0))
        self._jtis, self._subs, self._seen = jtis, subs, seen

    def count(self) -> int:
        """Entries in the store (for operators and tests)."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM revocations").fetchone()
        return int(n)

    def is_revoked(self, jti: str, sub: str, iat: float) -> bool:
        revoked_at = self._subs.get(sub)
        return jti in self._jtis or (revoked_at is not None and iat <= revoked_at)

    async def watch(self) -> None:
        """Keep the in-memory sets current, and prune every `PRUNE_SECONDS`; a store error is
        logged and retried, never fatal. A prune that fails (a read-only state dir) never stops
        the reload: missing a new revocation would be worse than keeping old ones."""
        pruned = time.monotonic()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if time.monotonic() - pruned >= PRUNE_SECONDS:
                pruned = time.monotonic()
                try:
                    await asyncio.to_thread(self.prune)
                except self.store_errors as e:
                    log.warning("cannot prune old revocations: %s", e)
            try:
                await asyncio.to_thread(self.refresh)
            except self.store_errors as e:
                log.warning("cannot reload revocations: %s", e)
