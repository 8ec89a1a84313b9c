"""The gateway's own stores are not reached in clear over the network: `VAULT_ADDR` over http:// or
`redis://` to a host other than loopback stops start-up (exit 2, one line naming the fix), unless
the config says plain text is intended (`secrets_allow_plaintext`, `stores.allow_plaintext`).
Before, both were accepted: the vault token, every secret, revocations and approvals crossed the
network readable and changeable by anyone on the path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.transport import UNREADABLE, is_loopback, plaintext_hosts
from gateway.vault_kv import VaultAuth
from tests.fakes import REPO
from tests.processes import GatewayProcess

STRIPE_REF = "vault:secret/egress/stripe#api_key"
REMOTE = "10.20.30.40"  # never dialed: the refusal comes before any connection


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("[::1]", True), ("::ffff:127.0.0.1", True), ("localhost", True),
    ("LOCALHOST.", True), ("vault.localhost", True), ("10.0.0.5", False), ("::ffff:10.0.0.5", False),
    ("vault.internal", False), ("localhost.evil.example", False), ("0.0.0.0", False),
])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("url", "hosts"), [
    ("http://vault.internal:8200", ["vault.internal"]),
    ("HTTP://10.0.0.5", ["10.0.0.5"]),
    ("https://vault.internal:8200", []),
    ("http://127.0.0.1:8200", []),
    ("redis://:s3cret@redis.internal:6379/0", ["redis.internal"]),
    ("redis://user:p@ss@[::1]:6379/0", []),
    ("async+redis://10.1.1.1:6379", ["10.1.1.1"]),
    ("redis+sentinel://127.0.0.1:26379,10.0.0.9:26379/mymaster", ["10.0.0.9"]),
    ("rediss://redis.internal:6380/0", []),
    ("unix:///run/redis.sock", []),
    ("memory://", []),
    # Read as the clients read them: redis-py dials 10.0.0.5 (the rest is a fragment), requests
    # (urllib3) dials it too (a '\\' ends the authority), whatever follows a later '@'.
    ("redis://10.0.0.5#@127.0.0.1:6379/0", ["10.0.0.5"]),
    ("redis://10.0.0.5?x=@127.0.0.1:6379/0", ["10.0.0.5"]),
    ("http://10.0.0.5\\@127.0.0.1:8200", ["10.0.0.5"]),
    # A password with an unencoded '/', '?' or '#' cuts the URL inside it: the tail is no host to
    # show (it is the password's start), and a malformed IPv6 address is no reason for a traceback.
    ("redis://:s3cr/et@10.0.0.5:6379/0", [UNREADABLE]),
    ("redis://:s3cr#et@127.0.0.1:6379/0", [UNREADABLE]),
    ("http://[::1:8200", [UNREADABLE]),
    ("redis+sentinel://127.0.0.1:26379,[10.0.0.9:26379/mymaster", [UNREADABLE]),
])
def test_plaintext_hosts(url: str, hosts: list[str]) -> None:
    assert plaintext_hosts(url) == hosts


def _run(tmp_path: Path, settings: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    gw = GatewayProcess(tmp_path / "gw", settings)
    environ = {**{k: v for k, v in gw._environ().items() if not k.startswith("VAULT_")}, **env}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(gw.config_file), "--state-dir", str(gw.state_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=60, env=environ,
    )


@pytest.mark.parametrize(("settings", "env", "names"), [
    ({"secrets": {"stripe": STRIPE_REF}}, {"VAULT_ADDR": f"http://{REMOTE}:8200", "VAULT_TOKEN": "hvs.root-token-0001"},
     ("VAULT_ADDR is plain http://", "https://", "secrets_allow_plaintext")),
    ({"stores": {"state": f"redis://:pw-0001@{REMOTE}:6379/0"}}, {},
     ("stores.state: plain redis://", "rediss://", "stores.allow_plaintext")),
    ({"stores": {"rate_limits": f"redis://{REMOTE}:6379"}}, {}, ("stores.rate_limits: plain redis://", "rediss://")),
    ({"dlp": {"vault": f"redis://{REMOTE}:6379/1"}}, {}, ("dlp.vault: plain redis://", "rediss://")),
])
def test_a_store_in_clear_over_the_network_stops_start_up(
    tmp_path: Path, settings: dict[str, Any], env: dict[str, str], names: tuple[str, ...]
) -> None:
    out = _run(tmp_path, settings, env)
    assert out.returncode == 2, out.stderr
    assert all(name in out.stderr for name in names), out.stderr
    assert "Traceback" not in out.stderr and "pw-0001" not in out.stderr and "hvs.root" not in out.stderr
    assert REMOTE in out.stderr


@pytest.mark.parametrize(("settings", "env", "name"), [
    ({"stores": {"state": f"redis://:s3cr/et-0001@{REMOTE}:6379/0"}}, {}, "stores.state: plain redis://"),
    ({"secrets": {"stripe": STRIPE_REF}}, {"VAULT_ADDR": "http://[s3cr:8200", "VAULT_TOKEN": "hvs.root-token-0001"},
     "VAULT_ADDR is plain http://"),
])
def test_a_url_whose_host_cannot_be_read_stops_start_up_without_showing_it(
    tmp_path: Path, settings: dict[str, Any], env: dict[str, str], name: str
) -> None:
    """The refusal named the "host" it read, which for an unencoded '/' in a password was the
    password's start; and a malformed IPv6 VAULT_ADDR ended start-up with a traceback."""
    out = _run(tmp_path, settings, env)
    assert out.returncode == 2, out.stderr
    assert name in out.stderr and UNREADABLE in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "s3cr" not in out.stderr and "hvs.root" not in out.stderr


def test_the_opt_in_keys_accept_plain_text_and_tls_or_loopback_need_none() -> None:
    env = {"VAULT_ADDR": f"http://{REMOTE}:8200", "VAULT_TOKEN": "t"}
    with pytest.raises(ConfigError, match="secrets_allow_plaintext"):
        VaultAuth.from_env(env)
    assert VaultAuth.from_env(env, allow_plaintext=True).addr == f"http://{REMOTE}:8200"
    for addr in (f"https://{REMOTE}:8200", "http://127.0.0.1:8200", "http://localhost:8200"):
        assert VaultAuth.from_env({**env, "VAULT_ADDR": addr}).addr == addr
    plain = {"state": f"redis://{REMOTE}:6379/0", "rate_limits": f"redis://{REMOTE}:6379"}
    assert Config.model_validate({"stores": {**plain, "allow_plaintext": True}, "secrets_allow_plaintext": True}).stores.allow_plaintext
    assert Config.model_validate({"stores": {"state": f"rediss://{REMOTE}:6380/0", "rate_limits": "redis://127.0.0.1:6379"}})
