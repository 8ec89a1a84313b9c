"""The MCP state a fleet must share: pinned tool definitions and which agent opened each session.

One SQLite file in the state directory (like approvals and revocations), behind this one narrow
interface, so the fleet's store (`gateway.stores.redis_state.RedisMcpStore`, with `stores.state` on
Redis) replaces it without touching its callers; both are opened by `gateway.stores.open_state`:

- `observe(server, tool, digest, limit)`: a listed definition; pinned if the tool has no pin yet
  (`Seen.NEW`), unless the server already has `limit` pins (`Seen.OVER_LIMIT`: nothing written),
  else `SAME`, or `CHANGED` (kept as the pending definition until accepted);
- `state(server, tool)`: the pin and any pending change, for a call;
- `accept(server, tool)`: an admin accepts the pending definition; `pins()` lists them;
- `remember_schema` / `schema`: the input schema of a pinned definition, by the definition's
  digest, so a call is checked against the schema its pin stands for on any process or replica
  (`gateway.mcp.schema`); only the gateway's own compiled, size-bounded schemas are written;
- `bind_session` / `session_agent`: a session id is bound to the agent whose initialize the server
  answered with it. Ids are stored hashed: the table is no list of live sessions to hijack. A
  binding never changes owner, so each process remembers the ones it has seen (`SessionOwners`): a
  session's calls and answers then cost no store round trip each (every answer carries the id).

The config's `pin:` values are written at start for tools whose pin came from the config or is
missing; a change an admin accepted since stays accepted until the config's value changes.
"""

from __future__ import annotations

import enum
import hashlib
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config
from gateway.state import open_db, write_transaction

SESSION_TTL = 7 * 86400.0  # a binding older than this is forgotten (its session refused)
OWNERS_KEPT = 10_000  # session owners a process remembers (about 1 MB)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mcp_pins (
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    pinned TEXT NOT NULL,
    pending TEXT,
    source TEXT NOT NULL,
    config TEXT,
    pinned_at REAL NOT NULL,
    changed_at REAL,
    PRIMARY KEY (server, tool)
);
CREATE TABLE IF NOT EXISTS mcp_sessions (
    id_hash TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    server TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mcp_sessions_at ON mcp_sessions (at);
CREATE TABLE IF NOT EXISTS mcp_schemas (
    digest TEXT PRIMARY KEY,
    schema TEXT NOT NULL
);
"""


class Seen(enum.Enum):
    NEW = "new"
    SAME = "same"
    CHANGED = "changed"  # a definition differing from the pin, seen for the first time
    STILL_CHANGED = "still_changed"  # the pending change, seen again (audited once)
    OVER_LIMIT = "over_limit"  # a new name from a server that has its `max_pinned_tools`: not pinned


@dataclass(frozen=True)
class Pin:
    server: str
    tool: str
    pinned: str
    pending: str | None
    source: str  # "listed" (first seen), "config", or "admin" (an accepted change)
    pinned_at: float
    changed_at: float | None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def awaits_admin(pin: Pin | None) -> bool:
    """Whether a call of the tool must wait for an admin: no pin, or a pending change."""
    return pin is None or pin.pending is not None


class SessionOwners:
    """The session owners this process has seen in the store, until their bindings expire; the
    least recently used are forgotten beyond `OWNERS_KEPT`. Thread-safe (the CLI and API threads)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seen: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, id_hash: str) -> str | None:
        with self._lock:
            seen = self._seen.get(id_hash)
            if seen is None:
                return None
            if seen[1] < self._clock() - SESSION_TTL:
                del self._seen[id_hash]
                return None
            self._seen.move_to_end(id_hash)
            return seen[0]

    def remember(self, id_hash: str, agent: str, bound_at: float) -> None:
        with self._lock:
            self._seen[id_hash] = (agent, bound_at)
            self._seen.move_to_end(id_hash)
            while len(self._seen) > OWNERS_KEPT:
                self._seen.popitem(last=False)


class McpStore:
    def __init__(self, path: Path, config_pins: dict[str, dict[str, str]] | None = None, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._owners = SessionOwners(clock)
        # server -> its pins at the last count. Pins are never deleted, so a server once counted at
        # its bound is still there: its next new names are refused without counting (a scan of its
        # pins, per name, on the proxy's event loop) or a write transaction.
        self._counted: dict[str, int] = {}
        self._db = open_db(path)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        for server, pins in (config_pins or {}).items():
            for tool, digest in pins.items():
                self._seed(server, tool, digest)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._db, self._lock)

    def _seed(self, server: str, tool: str, digest: str) -> None:
        """The config's pin, unless an admin accepted a change since this very config value."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO mcp_pins (server, tool, pinned, pending, source, config, pinned_at) VALUES (?,?,?,NULL,'config',?,?)"
                " ON CONFLICT (server, tool) DO UPDATE SET pinned=excluded.pinned, pending=NULL, source='config',"
                " config=excluded.config, pinned_at=excluded.pinned_at, changed_at=NULL"
                " WHERE NOT (mcp_pins.source='admin' AND mcp_pins.config IS excluded.config)",
                (server, tool, digest, digest, self._clock()),
            )

    def observe(self, server: str, tool: str, digest: str, limit: int) -> Seen:
        now = self._clock()
        if self._counted.get(server, 0) >= limit and self.state(server, tool) is None:
            return Seen.OVER_LIMIT
        with self._tx() as db:
            row = db.execute("SELECT pinned, pending FROM mcp_pins WHERE server=? AND tool=?", (server, tool)).fetchone()
            if row is None:
                (count,) = db.execute("SELECT COUNT(*) FROM mcp_pins WHERE server=?", (server,)).fetchone()
                self._counted[server] = count
                if count >= limit:
                    return Seen.OVER_LIMIT
                db.execute(
                    "INSERT INTO mcp_pins (server, tool, pinned, source, pinned_at) VALUES (?,?,?,'listed',?)",
                    (server, tool, digest, now),
                )
                return Seen.NEW
            pinned, pending = row
            if digest == pinned:
                return Seen.SAME
            if digest == pending:
                return Seen.STILL_CHANGED
            db.execute("UPDATE mcp_pins SET pending=?, changed_at=? WHERE server=? AND tool=?", (digest, now, server, tool))
            return Seen.CHANGED

    def state(self, server: str, tool: str) -> Pin | None:
        with self._lock:
            row = self._db.execute(
                "SELECT server, tool, pinned, pending, source, pinned_at, changed_at FROM mcp_pins WHERE server=? AND tool=?",
                (server, tool),
            ).fetchone()
        return Pin(*row) if row else None

    def listed(self, server: str, tool: str) -> bool:
        """Whether the tool has a pin (the server listed it, or the config named it)."""
        return self.state(server, tool) is not None

    def accept(self, server: str, tool: str) -> Pin | None:
        """Make the pending definition the pin; None when the tool has no pending change."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE mcp_pins SET pinned=pending, pending=NULL, source='admin', pinned_at=?, changed_at=NULL"
                " WHERE server=? AND tool=? AND pending IS NOT NULL",
                (self._clock(), server, tool),
            )
            if cur.rowcount == 0:
                return None
        return self.state(server, tool)

    def pins(self, server: str | None = None) -> list[Pin]:
        query = "SELECT server, tool, pinned, pending, source, pinned_at, changed_at FROM mcp_pins"
        args: tuple[str, ...] = ()
        if server is not None:
            query, args = query + " WHERE server=?", (server,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY server, tool", args).fetchall()
        return [Pin(*row) for row in rows]

    def remember_schema(self, digest: str, schema: str) -> None:
        """The input schema (JSON) of the definition whose digest is `digest`; the first one stays
        (equal digests are equal definitions)."""
        with self._tx() as db:
            db.execute("INSERT INTO mcp_schemas (digest, schema) VALUES (?,?) ON CONFLICT (digest) DO NOTHING", (digest, schema))

    def schema(self, digest: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT schema FROM mcp_schemas WHERE digest=?", (digest,)).fetchone()
        return str(row[0]) if row else None

    def bind_session(self, session: str, agent: str, server: str) -> bool:
        """Bind a session id the server issued to the agent; False if another agent holds it."""
        id_hash = session_hash(session)
        owner = self._owners.get(id_hash)
        if owner is None:
            owner, bound_at = self._bind(id_hash, agent, server)
            self._owners.remember(id_hash, owner, bound_at)
        return owner == agent

    def session_agent(self, session: str) -> str | None:
        id_hash = session_hash(session)
        owner = self._owners.get(id_hash)
        if owner is None and (held := self._owner(id_hash)) is not None:
            owner = held[0]
            self._owners.remember(id_hash, *held)
        return owner

    def _bind(self, id_hash: str, agent: str, server: str) -> tuple[str, float]:
        """The binding's owner and time after binding it to `agent` unless it is bound already."""
        now = self._clock()
        with self._tx() as db:
            db.execute("DELETE FROM mcp_sessions WHERE at < ?", (now - SESSION_TTL,))
            db.execute(
                "INSERT INTO mcp_sessions (id_hash, agent, server, at) VALUES (?,?,?,?) ON CONFLICT (id_hash) DO NOTHING",
                (id_hash, agent, server, now),
            )
            owner, at = db.execute("SELECT agent, at FROM mcp_sessions WHERE id_hash=?", (id_hash,)).fetchone()
        return str(owner), float(at)

    def _owner(self, id_hash: str) -> tuple[str, float] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT agent, at FROM mcp_sessions WHERE id_hash=? AND at >= ?", (id_hash, self._clock() - SESSION_TTL)
            ).fetchone()
        return (str(row[0]), float(row[1])) if row else None


def config_pins(config: Config) -> dict[str, dict[str, str]]:
    """The config's `pin:` values by server, which a store writes in when it opens."""
    return {name: server.pin for name, server in config.mcp_servers.items() if server.pin}


def session_hash(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()
