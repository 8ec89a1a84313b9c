"""DLP fixtures: one engine per session, vaults in tmp dirs, no network (redis is the root conftest's)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from dlp.config import DlpConfig
from dlp.crypto import Sealer
from dlp.engine import PiiEngine, build_engine
from dlp.vault import SqliteVault

MASTER = bytes(range(32))


class NetworkAttempt(AssertionError):
    """Code under test tried to reach a non-loopback address."""


def _loopback(host: object) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any DNS lookup or socket connect to a non-loopback address (tldextract, model hubs)."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(host):
            raise NetworkAttempt(f"connect to {host}")
        return real_connect(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if not _loopback(host):
            raise NetworkAttempt(f"DNS lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="session")
def engine() -> PiiEngine:
    return build_engine(DlpConfig())


@pytest.fixture
def sealer() -> Sealer:
    return Sealer.from_master(MASTER)


@pytest.fixture
def sqlite_vault(tmp_path: Path, sealer: Sealer) -> SqliteVault:
    return SqliteVault(tmp_path / "vault.sqlite3", sealer, ttl=3600)
