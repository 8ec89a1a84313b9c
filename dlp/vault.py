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


class SqliteVault:
    """The embedded vault: one SQLite file, shared safely by threads and processes."""

    def __init__(self, path: Path, sealer: Sealer, ttl: float) -> None:
        self._sealer = sealer
        self._ttl = ttl
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"sqlite vault cannot be opened: {type(exc).__name__}") from None
        path.chmod(0o600)

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
        with self._lock:
            try:
                return self._db.execute("DELETE FROM dlp_tokens WHERE expires_at <= ?", (time.time(),)).rowcount
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite vault purge failed: {type(exc).__name__}") from None


def open_vault(uri: str | None, state_dir: Path, sealer: Sealer, ttl: float) -> Vault:
    """The vault named by `dlp.vault`: None or sqlite:///path (SQLite), redis://… (Redis)."""
    if uri is None:
        return SqliteVault(state_dir / SQLITE_FILE, sealer, ttl)
    if uri.startswith("sqlite:///"):
        return SqliteVault(Path(uri[len("sqlite:///") :]), sealer, ttl)
    if uri.startswith(("redis://", "rediss://", "unix://")):
        from dlp.vault_redis import RedisVault

        return RedisVault.from_url(uri, sealer, ttl)
    raise ConfigError("dlp.vault must be sqlite:///PATH or redis://HOST:PORT/DB")
