"""The vault: persistence, encryption at rest, scope isolation, expiry, one token under concurrency."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dlp.crypto import Sealer, VaultKeyError, load_master_key
from dlp.vault import SqliteVault, StoreUnavailable, Vault, VaultStats, open_vault, sqlite_stats

SECRET = "alice.secret@example.com"
VaultFactory = Callable[..., Vault]


@pytest.fixture(params=["sqlite", "redis"])
def make_vault(request: pytest.FixtureRequest, tmp_path: Path, sealer: Sealer) -> VaultFactory:
    """A factory, so redis clients are created inside the test's own event loop."""
    if request.param == "sqlite":
        return lambda ttl=3600: SqliteVault(tmp_path / "v.sqlite3", sealer, ttl)
    url = request.getfixturevalue("redis").url
    return lambda ttl=3600: open_vault(url, tmp_path, sealer, ttl)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_same_value_same_token_per_scope(make_vault: VaultFactory) -> None:
    async def body() -> None:
        v = make_vault()
        a1, _ = await v.token_for("s1", "EMAIL_ADDRESS", SECRET)
        a2, _ = await v.token_for("s1", "EMAIL_ADDRESS", SECRET)
        b, _ = await v.token_for("s2", "EMAIL_ADDRESS", SECRET)
        assert a1 == a2 and a1 != b
        assert (await v.resolve("s1", [a1]))[a1].value == SECRET
        assert await v.resolve("s2", [a1]) == {}  # scope isolation
        assert await v.resolve("s1", ["tok_EMAIL_ADDRESS_" + "a" * 20]) == {}
        await v.close()

    run(body())


def test_expired_entries_are_gone_and_replaced(make_vault: VaultFactory) -> None:
    async def body() -> None:
        v = make_vault(ttl=0.3)
        old, _ = await v.token_for("s", "US_SSN", "536-22-4198")
        await asyncio.sleep(0.5)
        assert await v.resolve("s", [old]) == {}
        new, _ = await v.token_for("s", "US_SSN", "536-22-4198")
        assert new != old
        await v.close()

    run(body())


def test_fifty_concurrent_first_uses_get_one_token(make_vault: VaultFactory) -> None:
    async def body() -> set[str]:
        vaults = [make_vault() for _ in range(5)]  # several connections, as several processes have
        got = await asyncio.gather(
            *(vaults[i % 5].token_for("s", "PHONE_NUMBER", "+1 212 555 0199") for i in range(50))
        )
        for v in vaults:
            await v.close()
        return {t for t, _ in got}

    assert len(run(body())) == 1


def test_fifty_threads_on_separate_connections_get_one_token(tmp_path: Path, sealer: Sealer) -> None:
    path, results = tmp_path / "t.sqlite3", []
    SqliteVault(path, sealer, 3600)  # create schema once
    barrier = threading.Barrier(50)

    def worker() -> None:
        v = SqliteVault(path, sealer, 3600)
        barrier.wait()
        results.append(v._token_for("s", "CREDIT_CARD", "4111111111111111")[0])

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 50 and len(set(results)) == 1


def test_sqlite_encrypts_at_rest(tmp_path: Path, sealer: Sealer) -> None:
    async def body() -> None:
        v = SqliteVault(tmp_path / "v.sqlite3", sealer, 3600)
        await v.token_for("s", "EMAIL_ADDRESS", SECRET)
        await v.close()

    run(body())
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("v.sqlite3"))
    assert SECRET.encode() not in raw and b"alice.secret" not in raw
    assert stat.S_IMODE((tmp_path / "v.sqlite3").stat().st_mode) == 0o600


def test_sqlite_survives_restart_in_a_new_process(tmp_path: Path) -> None:
    """Tokens written by one process are restored by another that loads the key file from disk."""
    script = """
import asyncio, sys
from pathlib import Path
from dlp.crypto import Sealer, load_master_key
from dlp.vault import open_vault
state = Path(sys.argv[1])
async def main():
    v = open_vault(None, state, Sealer.from_master(load_master_key(None, state)), 3600)
    if sys.argv[2] == "write":
        print((await v.token_for("acme/a1", "IBAN_CODE", sys.argv[3]))[0])
    else:
        hit = (await v.resolve("acme/a1", [sys.argv[3]])).get(sys.argv[3])
        print("restored" if hit is not None and hit.value == sys.argv[4] else "missing")
    await v.close()
asyncio.run(main())
"""
    iban = "DE89370400440532013000"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def child(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", script, str(tmp_path), *args], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()

    token = child("write", iban)
    assert child("write", iban) == token  # same value, same token after a restart
    assert child("read", token, iban) == "restored"
    assert stat.S_IMODE((tmp_path / "dlp.key").stat().st_mode) == 0o600


def test_wrong_key_cannot_read(tmp_path: Path, sealer: Sealer) -> None:
    async def body() -> None:
        v = SqliteVault(tmp_path / "v.sqlite3", sealer, 3600)
        token, _ = await v.token_for("s", "EMAIL_ADDRESS", SECRET)
        other = SqliteVault(tmp_path / "v.sqlite3", Sealer.from_master(b"\x01" * 32), 3600)
        assert await other.resolve("s", [token]) == {}

    run(body())


def test_sqlite_failure_is_store_unavailable_without_values(tmp_path: Path, sealer: Sealer) -> None:
    async def body() -> None:
        v = SqliteVault(tmp_path / "v.sqlite3", sealer, 3600)
        await v.close()
        with pytest.raises(StoreUnavailable) as info:
            await v.token_for("s", "EMAIL_ADDRESS", SECRET)
        assert SECRET not in str(info.value)

    run(body())


def test_redis_down_is_store_unavailable(tmp_path: Path, sealer: Sealer) -> None:
    async def body() -> None:
        v = open_vault("redis://127.0.0.1:1/0", tmp_path, sealer, 60)
        with pytest.raises(StoreUnavailable):
            await v.token_for("s", "EMAIL_ADDRESS", SECRET)
        with pytest.raises(StoreUnavailable):
            await v.resolve("s", ["tok_URL_" + "a" * 20])
        await v.close()

    run(body())


def test_key_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = load_master_key(None, tmp_path)
    assert load_master_key(None, tmp_path) == key and len(key) == 32
    monkeypatch.setenv("DLP_TEST_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
    assert load_master_key("env:DLP_TEST_KEY", tmp_path) == bytes(range(32))
    with pytest.raises(VaultKeyError):
        load_master_key("not base64!", tmp_path)
    with pytest.raises(VaultKeyError):
        load_master_key("env:DLP_UNSET_KEY_X", tmp_path)
    assert "hidden" in repr(Sealer.from_master(key))


def test_expired_entries_are_purged_on_schedule_and_leave_no_sealed_bytes(tmp_path: Path, sealer: Sealer) -> None:
    """Retention is token_ttl; the purge thread deletes what expired, and secure_delete overwrites it."""
    path = tmp_path / "vault.sqlite3"
    vault = SqliteVault(path, sealer, ttl=1, purge_every=0.2)

    async def fill() -> list[str]:
        return [(await vault.token_for("s", "EMAIL_ADDRESS", f"user{i}@example.com"))[0] for i in range(20)]

    tokens = asyncio.run(fill())
    assert sqlite_stats(path, ttl=1).entries == 20
    deadline = time.monotonic() + 10
    while sqlite_stats(path, ttl=1) != VaultStats(0, 0, None) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sqlite_stats(path, ttl=1) == VaultStats(0, 0, None)
    settled = time.monotonic() + 5  # the table reads empty as soon as the purge's DELETE commits, before its checkpoint
    while any(t.encode() in _vault_bytes(tmp_path) for t in tokens) and time.monotonic() < settled:
        time.sleep(0.1)
    assert not any(t.encode() in _vault_bytes(tmp_path) for t in tokens)  # the running vault's WAL included
    asyncio.run(vault.close())
    assert not any(t.encode() in _vault_bytes(tmp_path) for t in tokens)


def _vault_bytes(directory: Path) -> bytes:
    """The vault file and its write-ahead log and index, as they are on disk now."""
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith("vault.sqlite3"))


def test_stats_count_live_and_expired_and_age(tmp_path: Path, sealer: Sealer) -> None:
    path = tmp_path / "vault.sqlite3"
    vault = SqliteVault(path, sealer, ttl=3600)  # no purge schedule: expired rows stay for the count
    asyncio.run(vault.token_for("s", "PERSON", "Ana Lopez"))
    stats = sqlite_stats(path, ttl=3600)
    assert stats.entries == 1 and stats.expired == 0 and 0 <= (stats.oldest_age_s or 0) < 60
    assert sqlite_stats(tmp_path / "none.sqlite3", ttl=1) == VaultStats(0, 0, None)
    asyncio.run(vault.close())
