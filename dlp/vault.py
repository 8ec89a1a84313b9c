"""The vault: token -> value, encrypted at rest, per scope, with an expiry.

Two stores behind one small async interface:

- `SqliteVault` (default, `sqlite:///path` or a file in the state dir): WAL mode, so several gateway
  processes on one host share it, and it survives restarts. Calls run in a worker thread so the
  event loop never waits on disk.
- `RedisVault` (`redis://…`, in `dlp/vault_redis.py`) for several replicas.

Both guarantee that concurrent first uses of one value in one scope get one token (SQLite:
`BEGIN IMMEDIATE` serializes writers, across processes too; Redis: one Lua script), so a
conversation sees a single placeholder for a value.

Every store failure is raised as `StoreUnavailable`, which the pipeline turns into the refusal
`store_unavailable`: tokenization fails closed, a value is never sent because the vault was down.
Messages carry the store's error class, never a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dlp.crypto import Sealer, SealError
from dlp.tokens import new_token, token_type
from gateway.errors import ConfigError, StoreUnavailable

SQLITE_FILE = "vault.sqlite3"




@dataclass(frozen=True)
class Entry:
    """A restorable value. `repr` hides the value so it cannot reach a log by accident."""

    entity_type: str
    value: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Entry(entity_type={self.entity_type!r}, value=<hidden>, expires_at={self.expires_at})"


class VaultReader(Protocol):
    async def resolve(self, scope: str, tokens: Collection[str]) -> dict[str, Entry]:
        """The live entries of `scope` among `tokens`; others (foreign, expired, unknown) are absent."""
        ...


class Vault(VaultReader, Protocol):
    async def token_for(self, scope: str, entity_type: str, value: str) -> tuple[str, float]:
        """The token for `value` in `scope` (created if new or expired) and its expiry time."""
        ...

    async def purge_expired(self) -> int:
        """Delete expired entries; the number deleted where the store can tell."""
        ...

    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS dlp_tokens (
    token       TEXT PRIMARY KEY,
    scope       TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    lookup      TEXT NOT NULL UNIQUE,
    sealed      BLOB NOT NULL,
    expires_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dlp_tokens_expiry ON dlp_tokens (expires_at);
"""


@dataclass(frozen=True)
class VaultStats:
    """What `egress-gateway vault stats` shows: counts and ages, never a value."""

    entries: int  # live: restorable now
    expired: int  # past their expiry, waiting for the next purge
    oldest_age_s: float | None  # age of the oldest live entry


def sqlite_stats(path: Path, ttl: float) -> VaultStats:
    """Stats of a SQLite vault file, opened read-only (no key needed, nothing created).

    Entries store their expiry only; an entry's age is `ttl` minus the time it has left.
    """
    if not path.exists():
        return VaultStats(0, 0, None)
    now = time.time()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            live, oldest = db.execute("SELECT COUNT(*), MIN(expires_at) FROM dlp_tokens WHERE expires_at > ?", (now,)).fetchone()
            (expired,) = db.execute("SELECT COUNT(*) FROM dlp_tokens WHERE expires_at <= ?", (now,)).fetchone()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"sqlite vault cannot be read: {type(exc).__name__}") from None
    return VaultStats(live, expired, None if oldest is None else max(0.0, now - (oldest - ttl)))


class SqliteVault:
    """The embedded vault: one SQLite file, shared safely by threads and processes.

    Expired entries are deleted when the vault opens and then every `purge_every` seconds by a
    daemon thread (until `close`), with SQLite's `secure_delete` on so their sealed bytes are
    overwritten rather than left in free pages, and the write-ahead log emptied after: an expired
    token's PII does not stay on disk.
    """

    def __init__(self, path: Path, sealer: Sealer, ttl: float, purge_every: float | None = None) -> None:
        self._sealer = sealer
        self._ttl = ttl
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"sqlite vault cannot be opened: {type(exc).__name__}") from None
        path.chmod(0o600)
        self._stop = threading.Event()
        if purge_every is not None:
            threading.Thread(target=self._purge_loop, args=(purge_every,), name="dlp-vault-purge", daemon=True).start()

    def _purge_loop(self, every: float) -> None:
        """Purge now, then every `every` seconds; a locked or busy file waits for the next round
        (another gateway process sharing the file may be writing)."""
        while True:
            try:
                self._purge()
            except StoreUnavailable:
                pass
            if self._stop.wait(every):
                return

    def __repr__(self) -> str:
        return "SqliteVault(...)"

    async def token_for(self, scope: str, entity_type: str, value: str) -> tuple[str, float]:
        return await asyncio.to_thread(self._token_for, scope, entity_type, value)

    async def resolve(self, scope: str, tokens: Collection[str]) -> dict[str, Entry]:
        if not tokens:
            return {}
        return await asyncio.to_thread(self._resolve, scope, tuple(set(tokens)))

    def resolve_now(self, scope: str, tokens: Collection[str]) -> dict[str, Entry]:
        """`resolve` without leaving the calling thread: a local file read for the stream path."""
        return self._resolve(scope, tuple(set(tokens))) if tokens else {}

    async def purge_expired(self) -> int:
        return await asyncio.to_thread(self._purge)

    async def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._db.close()

    def _token_for(self, scope: str, entity_type: str, value: str) -> tuple[str, float]:
        lookup = self._sealer.lookup(scope, entity_type, value)
        now = time.time()
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT token, expires_at FROM dlp_tokens WHERE lookup = ?", (lookup,)
                ).fetchone()
                if row is not None and row[1] > now:
                    return row[0], row[1]
                # Serialize writers (across processes too), then look again: another writer may
                # have created the token between our read and our lock.
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT token, expires_at FROM dlp_tokens WHERE lookup = ?", (lookup,)
                    ).fetchone()
                    if row is not None and row[1] > now:
                        self._db.execute("COMMIT")
                        return row[0], row[1]
                    if row is not None:
                        self._db.execute("DELETE FROM dlp_tokens WHERE lookup = ?", (lookup,))
                    token, expires_at = new_token(entity_type), now + self._ttl
                    sealed = self._sealer.seal(value, token=token, scope=scope, entity_type=entity_type)
                    self._db.execute(
                        "INSERT INTO dlp_tokens VALUES (?, ?, ?, ?, ?, ?)",
                        (token, scope, entity_type, lookup, sealed, expires_at),
                    )
                    self._db.execute("COMMIT")
                    return token, expires_at
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite vault write failed: {type(exc).__name__}") from None

    def _resolve(self, scope: str, tokens: tuple[str, ...]) -> dict[str, Entry]:
        now = time.time()
        found: dict[str, Entry] = {}
        with self._lock:
            try:
                rows = []
                for i in range(0, len(tokens), 500):
                    chunk = tokens[i : i + 500]
                    rows += self._db.execute(
                        f"SELECT token, entity_type, sealed, expires_at FROM dlp_tokens "
                        f"WHERE scope = ? AND expires_at > ? AND token IN ({','.join('?' * len(chunk))})",
                        (scope, now, *chunk),
                    ).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite vault read failed: {type(exc).__name__}") from None
        for token, entity_type, sealed, expires_at in rows:
            if token_type(token) != entity_type:
                continue
            try:
                value = self._sealer.open(sealed, token=token, scope=scope, entity_type=entity_type)
            except SealError:
                continue
            found[token] = Entry(entity_type, value, expires_at)
        return found

    def _purge(self) -> int:
        """Delete what expired, then fold the write-ahead log into the file and empty it: the log
        keeps every page version written since the last checkpoint, expired tokens and their sealed
        values included, until SQLite checkpoints on its own (1000 pages) or the last process closes
        the file. A checkpoint that other processes' readers hold back is done in a later round."""
        with self._lock:
            try:
                purged = self._db.execute("DELETE FROM dlp_tokens WHERE expires_at <= ?", (time.time(),)).rowcount
                if purged:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return purged
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite vault purge failed: {type(exc).__name__}") from None


def sqlite_path(uri: str | None, state_dir: Path) -> Path | None:
    """The SQLite file `dlp.vault` names (None: the state dir's), or None for another store."""
    if uri is None:
        return state_dir / SQLITE_FILE
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def open_vault(uri: str | None, state_dir: Path, sealer: Sealer, ttl: float, purge_every: float | None = None) -> Vault:
    """The vault named by `dlp.vault`: None or sqlite:///path (SQLite), redis://… (Redis).

    `purge_every` (seconds) starts the SQLite vault's purge schedule; Redis expires entries itself.
    """
    path = sqlite_path(uri, state_dir)
    if path is not None:
        return SqliteVault(path, sealer, ttl, purge_every)
    assert uri is not None
    if uri.startswith(("redis://", "rediss://", "unix://")):
        from dlp.vault_redis import RedisVault

        return RedisVault.from_url(uri, sealer, ttl)
    raise ConfigError("dlp.vault must be sqlite:///PATH or redis://HOST:PORT/DB")
