"""The state directory: where the CA, signing key, revocations, audit log and vault live.

Every command (`run`, `token issue`, `ca path`, ...) finds the same files through this one layout, so
a token issued by the CLI verifies in the running gateway and a revocation written by the CLI is
seen by it.

Everything in it is owner-only: the directory (and every directory below) 0700, every file 0600.
The keys, the vault and the audit log are secrets or hold decisions about other agents, and the
approvals and revocations databases would tell a local user which agents to impersonate. Opening
the state directory
- tightens an existing directory and anything in it that others could read (state written by an
  older version, or copied in with `cp`), and logs what it changed;
- sets the process umask to 077, so every file created afterwards is owner-only whoever creates it:
  SQLite creates its databases 0644 less the umask, and creates a database's `-wal` and `-shm`
  files with the database file's own mode, so those follow without any code in the stores.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
_SHOWN = 5  # paths named in the log line; the count says how many more


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def open(cls, root: Path) -> StateDir:
        """Create the directory owner-only, or tighten an existing one; see the module docstring."""
        root = root.expanduser()
        os.umask(PRIVATE_UMASK)
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except FileExistsError:
            raise ConfigError(f"state dir {root} is a file, not a directory") from None
        except OSError as e:  # a file on the path, a read-only parent: the user's to fix, said in one line
            raise ConfigError(f"cannot use state dir {root}: {e.strerror}") from None
        if root.stat().st_mode & stat.S_ISVTX:
            # /tmp and its kin: tightening a shared directory would break every other user of it.
            raise ConfigError(f"state dir {root} is a shared (sticky) directory; use a directory of its own")
        tightened = tighten(root)
        if tightened:
            shown = ", ".join(str(p.relative_to(root)) or "." for p in tightened[:_SHOWN])
            more = f" and {len(tightened) - _SHOWN} more" if len(tightened) > _SHOWN else ""
            log.warning("state dir %s was readable by others: made %s%s owner-only", root, shown, more)
        return cls(root)

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        """The certificate agents must trust (mitmproxy writes it under this name)."""
        return self.ca_dir / "mitmproxy-ca-cert.pem"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing-key.pem"

    @property
    def revocations(self) -> Path:
        return self.root / "revocations.sqlite"

    @property
    def baselines(self) -> Path:
        """Behaviour baselines as `baseline show` reads them, and the CLI's reset/ratify requests."""
        return self.root / "baselines.sqlite"

    @property
    def approvals(self) -> Path:
        return self.root / "approvals.sqlite"

    @property
    def mcp(self) -> Path:
        """MCP tool pins and session bindings (`gateway.mcp.store`)."""
        return self.root / "mcp.sqlite"

    @property
    def console_sessions(self) -> Path:
        """The operator console's sessions, shared by the host's workers (`gateway.stores.sessions`)."""
        return self.root / "console.sqlite"

    @property
    def connectors(self) -> Path:
        """Connectors registered through `POST /v1/connectors` (gateway/connector_store.py)."""
        return self.root / "connectors.sqlite"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    def worker_audit_log(self, replica: str, worker: int) -> Path:
        """One worker's own hash chain (`run --workers N`): workers never share a chain, so none
        waits on another's lock and a killed one leaves only its own torn line."""
        return self.root / f"audit.{replica}.{worker}.jsonl"

    def audit_logs(self) -> list[Path]:
        """Every chain in the directory: the single process's and each worker's."""
        return sorted(self.root.glob("audit*.jsonl"))

    @property
    def upstream_bundle(self) -> Path:
        return self.root / "upstream-ca-bundle.pem"

    @property
    def agent_bundle(self) -> Path:
        """System CAs plus the gateway CA: what `egress-gateway env` points every client at."""
        return self.root / "agent-ca-bundle.pem"


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by the owner only, atomically (never a half-written key)."""
    write_atomic(path, data, 0o600)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole or not at all: a reader (an agent loading a CA bundle, the gateway
    loading a key) never sees half a file, even while another command rewrites it."""
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)  # exactly `mode`, whatever the umask (the state dir's is 077)
    os.replace(tmp, path)


def tighten(root: Path) -> list[Path]:
    """Take group and other bits off `root` and everything below it (0755 -> 0700, 0644 -> 0600);
    owner bits are kept, never added, and symbolic links are not followed. Returns what changed."""
    changed: list[Path] = []
    for path in _walk(root):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            path.chmod(mode & 0o700)
            changed.append(path)
    return changed


def _walk(root: Path) -> list[Path]:
    found = [root]
    for top, dirs, files in os.walk(root, followlinks=False):
        found += [p for name in (*dirs, *files) if not (p := Path(top) / name).is_symlink()]
    return found


def open_db(path: Path) -> sqlite3.Connection:
    """A store's one connection to its SQLite file: autocommit (writes take `write_transaction`),
    shared by the event loop and worker threads under the store's lock, and in WAL mode so that
    readers in other processes (the CLI, other workers) never wait for a writer."""
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    return db


@contextmanager
def write_transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """One write transaction on a store's shared connection, taken immediately, so concurrent
    writers (threads here, processes on the same file) queue instead of racing."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
