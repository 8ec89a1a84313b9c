"""Where the operator console's sessions are kept, so that every process of a gateway knows them.

A browser signed in through one process (a worker of `run --workers N`, or a replica behind a load
balancer) sends its cookie to whichever process accepts the connection, so the sessions cannot live
in one process's memory. `SessionStore` keeps them in the state dir (SQLite, shared by the host's
workers); `gateway.stores.redis_state.RedisSessionStore` keeps them in the fleet's Redis.

What is stored is a session's record keyed by the SHA-256 of its id, never the id: whoever reads
the store (a backup, `redis-cli`) holds no cookie to sign in with. The CSRF token is stored as is:
without the id it opens nothing. The logic (expiry, the token's revocation, CSRF) is
`gateway.api.sessions.Sessions`; the bounds are applied here, because they must hold across
processes and so be applied in one atomic step: `put` forgets expired sessions, ends the admin's
oldest ones past `per_admin`, and refuses a session past `limit` in all, in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.errors import StoreUnavailable
from gateway.identity.tokens import Identity
from gateway.state import open_db, write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash TEXT PRIMARY KEY,
    admin TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_admin ON console_sessions (admin, created_at);
CREATE INDEX IF NOT EXISTS console_sessions_expiry ON console_sessions (expires_at);
"""


@dataclass(frozen=True)
class StoredSession:
    """A session as stored: all of it but its id."""

    csrf: str
    identity: Identity
    created_at: float
    expires_at: float

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "identity": asdict(self.identity)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> StoredSession:
        d: dict[str, Any] = json.loads(raw)
        ident = dict(d["identity"])
        ident["scopes"] = tuple(ident["scopes"])
        return cls(d["csrf"], Identity(**ident), float(d["created_at"]), float(d["expires_at"]))

    def admin(self) -> str:
        """Whose session it is, for `sessions_per_admin`: the sub within its tenant."""
        return hash_id(json.dumps([self.identity.sub, self.identity.tenant]))


def hash_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Console sessions in the state dir's `console.sqlite`; every failure is `StoreUnavailable`."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        try:
            self._db = open_db(path)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"console session store {path}: {e}") from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            with write_transaction(self._db, self._lock) as db:
                yield db
        except sqlite3.Error as e:
            raise StoreUnavailable(f"console session store: {e}") from None

    def put(self, id_hash: str, session: StoredSession, now: float, per_admin: int, limit: int) -> bool:
        """Store a new session within the bounds; False (nothing stored) when `limit` are open."""
        admin = session.admin()
        with self._tx() as db:
            db.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
            mine = [h for (h,) in db.execute("SELECT id_hash FROM console_sessions WHERE admin = ? ORDER BY created_at", (admin,))]
            for old in mine[: max(0, len(mine) - per_admin + 1)]:
                db.execute("DELETE FROM console_sessions WHERE id_hash = ?", (old,))
            (count,) = db.execute("SELECT COUNT(*) FROM console_sessions").fetchone()
            if count >= limit:
                return False
            db.execute(
                "INSERT INTO console_sessions (id_hash, admin, record, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (id_hash, admin, session.to_json(), session.created_at, session.expires_at),
            )
        return True

    def get(self, id_hash: str, now: float) -> StoredSession | None:
        """A read, on every console request: no write lock taken (the workers' reads never queue)."""
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT record FROM console_sessions WHERE id_hash = ? AND expires_at > ?", (id_hash, now)
                ).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"console session store: {e}") from None
        return StoredSession.from_json(row[0]) if row else None

    def delete(self, id_hash: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM console_sessions WHERE id_hash = ?", (id_hash,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
