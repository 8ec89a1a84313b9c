"""The state directory: where the CA, signing key, revocations, audit log and vault live.

Every command (`run`, `token issue`, `ca path`, ...) finds the same files through this one layout, so
a token issued by the CLI verifies in the running gateway and a revocation written by the CLI is
seen by it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def open(cls, root: Path) -> StateDir:
        """Create the directory (owner-only) if needed."""
        root = root.expanduser()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
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
    def approvals(self) -> Path:
        return self.root / "approvals.sqlite"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

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
    os.replace(tmp, path)
