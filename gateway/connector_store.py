"""Where connectors registered through `POST /v1/connectors` are kept: one SQLite file in the state dir.

The interface is deliberately narrow (add, remove, all, version) and speaks only in names and JSON
documents, so the fleet's store (`gateway.stores.redis_state.RedisConnectorStore`, with
`stores.state` on Redis) stands in without the callers changing. What is stored is the
document as the admin sent it, never the compiled connector: a restart compiles it again with the
code of the day, and a document that no longer compiles stops start-up naming it, like a bad config.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import StoreUnavailable
from gateway.state import open_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS connectors (
    name TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    registered_by TEXT NOT NULL,
    registered_at REAL NOT NULL
);
"""


class AlreadyStored(Exception):
    """A connector of that name is stored already."""


@dataclass(frozen=True)
class StoredConnector:
    name: str
    document: dict[str, Any]
    registered_by: str  # the admin token's sub
    registered_at: float


class ConnectorStore:
    """Registered connectors' documents by name. Every failure of the file is `StoreUnavailable`."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        try:
            self._db = open_db(path)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"connector store {path}: {e}") from None

    def add(self, name: str, document: dict[str, Any], registered_by: str) -> StoredConnector:
        """Store a new connector; `AlreadyStored` if the name is taken (never an overwrite)."""
        stored = StoredConnector(name, document, registered_by, time.time())
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO connectors (name, document, registered_by, registered_at) VALUES (?, ?, ?, ?)",
                    (name, text, registered_by, stored.registered_at),
                )
        except sqlite3.IntegrityError:
            raise AlreadyStored(name) from None
        except sqlite3.Error as e:
            raise StoreUnavailable(f"connector store: {e}") from None
        return stored

    def remove(self, name: str) -> bool:
        """Delete a stored connector; False if there was none of that name."""
        try:
            with self._lock:
                return self._db.execute("DELETE FROM connectors WHERE name = ?", (name,)).rowcount == 1
        except sqlite3.Error as e:
            raise StoreUnavailable(f"connector store: {e}") from None

    def all(self) -> list[StoredConnector]:
        """Every stored connector, in the order they were registered."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT name, document, registered_by, registered_at FROM connectors ORDER BY registered_at, name"
                ).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"connector store: {e}") from None
        return [StoredConnector(name, json.loads(doc), by, at) for name, doc, by, at in rows]

    def version(self) -> int:
        """Changes when another process (a worker of this host) registered or deleted one since the
        last call; what `ConnectorAdmin.watch` polls before reading them all."""
        try:
            with self._lock:
                (version,) = self._db.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"connector store: {e}") from None
        return int(version)

    def close(self) -> None:
        with self._lock:
            self._db.close()
