"""Token revocation, effective within a second in every running gateway.

`token revoke` (another process) appends to a SQLite table in the state dir. The gateway keeps the
revoked jtis and subjects in memory, so the per-request check is a set lookup, and a background task
reloads them when the table changes (`refresh`, every 0.25 s). Revoking a subject revokes every token
of that subject issued at or before the revocation; tokens issued later are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path

from gateway.state import open_db, write_transaction

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25

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

    def __init__(self, path: Path):
        self._jtis: set[str] = set()
        self._subs: dict[str, float] = {}
        self._seen = -1
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
            db.execute("INSERT INTO revocations (kind, value, at) VALUES (?, ?, ?)", (kind, value, time.time()))
        self.refresh()

    def refresh(self) -> None:
        """Reload when the table has grown; raises on a store error (the caller decides)."""
        with self._lock:
            (last,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM revocations").fetchone()
            if last == self._seen:
                return
            rows = self._db.execute("SELECT kind, value, at FROM revocations").fetchall()
        jtis = {v for k, v, _ in rows if k == "jti"}
        subs: dict[str, float] = {}
        for k, v, at in rows:
            if k == "sub":
                subs[v] = max(at, subs.get(v, 0.0))
        self._jtis, self._subs, self._seen = jtis, subs, last

    def is_revoked(self, jti: str, sub: str, iat: float) -> bool:
        revoked_at = self._subs.get(sub)
        return jti in self._jtis or (revoked_at is not None and iat <= revoked_at)

    async def watch(self) -> None:
        """Keep the in-memory sets current; a store error is logged and retried, never fatal."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await asyncio.to_thread(self.refresh)
            except self.store_errors as e:
                log.warning("cannot reload revocations: %s", e)
