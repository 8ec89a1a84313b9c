"""Quarantine and the kill switch: an agent, a tenant, a connector or the whole gateway stopped
within a second in every running gateway, until someone releases it on purpose.

It lives beside revocations and in the same store (the same SQLite file in the state dir), in the
same shape: `quarantine` (the CLI, the API, an anomaly rule) appends a row (in a fleet, to a list in
Redis: `gateway.stores.redis_state.RedisQuarantines`), and each gateway keeps
what is in force in memory, so the per-request check is a few dict lookups; a background task
reloads it when the table grows (`POLL_SECONDS`). A release is a row too, never a delete: the table
is the history of who stopped what, when and why. The interface is the six methods below, so a
shared store (Redis, as for revocations in a fleet) can take its place.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.identity.revocation import POLL_SECONDS
from gateway.state import open_db, write_transaction

log = logging.getLogger(__name__)

SCOPES = ("sub", "tenant", "connector", "all")
EVERYTHING = "*"  # the value of scope `all`
MAX_REASON = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL CHECK (scope IN ('sub', 'tenant', 'connector', 'all')),
    value TEXT NOT NULL,
    released INTEGER NOT NULL,
    reason TEXT NOT NULL,
    by TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine_audits (id INTEGER PRIMARY KEY)
"""


@dataclass(frozen=True)
class Change:
    """One quarantine or release, as stored and as audited."""

    id: int
    scope: str
    value: str
    released: bool
    reason: str
    by: str
    at: float

    def describe(self) -> str:
        return "the whole gateway" if self.scope == "all" else f"{self.scope} {self.value!r}"

    def public(self) -> dict[str, Any]:
        return asdict(self)


class Quarantines:
    store_errors: tuple[type[Exception], ...] = (sqlite3.Error,)  # what `watch` logs and retries

    def __init__(self, path: Path) -> None:
        self._active: dict[tuple[str, str], Change] = {}
        self._seen = -1
        # The API's `set` and the watcher's reload: each change reported once, and a `set`'s own
        # change reported to it (re-entrant: `set` holds it across its write and its reload).
        self._lock = threading.RLock()
        self._db_lock = threading.Lock()  # the one connection (as `Revocations`: not one per poll)
        self._db = open_db(path)
        with self._db_lock:
            self._db.executescript(_SCHEMA)
        self.refresh()

    def set(self, scope: str, value: str, *, release: bool, reason: str, by: str) -> list[Change]:
        """Quarantine (or release) one scope; returns the changes this process had not yet seen,
        this one last, so the caller audits each exactly once."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        value = EVERYTHING if scope == "all" else value
        if not value or not reason.strip() or len(reason) > MAX_REASON:
            raise ValueError(f"a quarantine needs a value and a reason of 1 to {MAX_REASON} characters")
        with self._lock:  # else the watcher's reload could report this change and `set` none
            self._append(scope, value, release, reason.strip(), by)
            return self.refresh()

    def _append(self, scope: str, value: str, release: bool, reason: str, by: str) -> None:
        """The storage primitive `set` uses (the fleet's store replaces it and `refresh`)."""
        with write_transaction(self._db, self._db_lock) as db:
            db.execute(
                "INSERT INTO quarantines (scope, value, released, reason, by, at) VALUES (?, ?, ?, ?, ?, ?)",
                (scope, value, int(release), reason, by, time.time()),
            )

    def claim(self, change: Change) -> bool:
        """Whether this process is the first to claim `change` for the audit log and the SIEM: every
        gateway process on the store learns of every change, and exactly one of them records it.
        Raises on a store error (the caller decides)."""
        with write_transaction(self._db, self._db_lock) as db:
            return db.execute("INSERT OR IGNORE INTO quarantine_audits (id) VALUES (?)", (change.id,)).rowcount == 1

    def refresh(self) -> list[Change]:
        """Reload when the table has grown; returns the new changes (none at the first load).
        Raises on a store error (the caller decides)."""
        with self._lock:
            with self._db_lock:
                (last,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM quarantines").fetchone()
                if last == self._seen:
                    return []
                rows = self._db.execute("SELECT id, scope, value, released, reason, by, at FROM quarantines ORDER BY id").fetchall()
            return self._load(rows, last)

    def _load(self, rows: list[tuple[Any, ...]], last: int) -> list[Change]:
        active: dict[tuple[str, str], Change] = {}
        for row in rows:
            change = Change(row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6])
            if change.released:
                active.pop((change.scope, change.value), None)
            else:
                active[(change.scope, change.value)] = change
        new = [] if self._seen < 0 else [Change(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in rows if r[0] > self._seen]
        self._active, self._seen = active, last
        return new

    def hit(self, sub: str, tenant: str | None, connector: str | None = None) -> Change | None:
        """The quarantine in force that covers this agent (and connector), if any."""
        if not self._active:
            return None
        for key in (("all", EVERYTHING), ("sub", sub), ("tenant", tenant or ""), ("connector", connector or "")):
            if (found := self._active.get(key)) is not None:
                return found
        return None

    def active(self) -> list[Change]:
        return sorted(self._active.values(), key=lambda c: c.id)

    async def watch(self, on_change: Callable[[Change], None]) -> None:
        """Keep the in-memory state current and report changes made by other processes; a store
        error is logged and retried, never fatal."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                changes = await asyncio.to_thread(self.refresh)
            except self.store_errors as e:
                log.warning("cannot reload quarantines: %s", e)
                continue
            for change in changes:
                on_change(change)
