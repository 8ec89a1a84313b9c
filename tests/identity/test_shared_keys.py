"""`keys:`: a fleet's shared CA and signing key, rotation with an overlap window, and the refusal
to start a fleet on per-replica keys."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mitmproxy.certs import CertStore

from gateway.identity import tokens as identity
from tests.clients import client, error_of
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

BALANCE = "https://api.stripe.com/v1/balance"


def _key_file(path: Path) -> identity.SigningKey:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return identity.SigningKey(key)


def _token(key: identity.SigningKey) -> str:
    return identity.issue(key, sub="rotated-agent", role="finance", scopes=("stripe:*",), ttl=600, max_ttl=1800)


def test_rotation_keeps_old_tokens_until_they_expire(make_gateway: Callable[..., GatewayProcess], pki: PKI, vendor: FakeVendor, tmp_path: Path) -> None:
    old, new, stranger = (_key_file(tmp_path / f"{n}.pem") for n in ("old", "new", "stranger"))
    CertStore.create_store(tmp_path / "ca", "mitmproxy", 2048, organization="shared", cn="shared CA")
    shared_ca = tmp_path / "ca" / "mitmproxy-ca.pem"
    keys = {"signing": f"file:{tmp_path / 'new.pem'}", "previous_signing": [f"file:{tmp_path / 'old.pem'}"],
            "ca": f"file:{shared_ca}"}
    gw = make_gateway(vendor_settings(pki, vendor, keys=keys))

    jwks = httpx.get(f"{gw.api_url}/.well-known/jwks.json", timeout=10).json()["keys"]
    assert [k["kid"] for k in jwks] == [new.kid, old.kid]

    issued = gw.cli("token", "issue", "--sub", "fresh", "--role", "finance", "--scope", "stripe:*").stdout.strip()
    assert jwt.get_unverified_header(issued)["kid"] == new.kid
    for token in (issued, _token(old)):  # new tokens, and old ones inside their lifetime
        with client(gw, token) as c:
            assert c.get(BALANCE).status_code == 200
    with client(gw, _token(stranger)) as c:
        assert error_of(c.get(BALANCE))["code"] == "identity_invalid"
    forged = jwt.encode(jwt.decode(_token(stranger), options={"verify_signature": False}), stranger.private,
                        algorithm="EdDSA", headers={"kid": new.kid})  # a known kid cannot vouch for another key
    with client(gw, forged) as c:
        assert error_of(c.get(BALANCE))["code"] == "identity_invalid"

    # Agents trust the configured CA, not one this replica made up.
    ca_path = Path(gw.cli("ca", "path").stdout.strip())
    assert ca_path.read_bytes() in shared_ca.read_bytes()
    assert gw.ca_file.read_bytes() == ca_path.read_bytes()
    # The audit log is signed with the new key; `audit verify` knows every configured key.
    time.sleep(0.2)
    gw.stop()
    assert gw.cli("audit", "verify", check=False).returncode == 0


@pytest.mark.parametrize(
    ("keys", "dlp", "missing"),
    [
        ({}, {}, "keys.signing, keys.ca"),
        ({"signing": "file:/nonexistent"}, {}, "keys.ca"),
        ({"signing": "file:/x", "ca": "file:/y"}, {"vault": "redis://127.0.0.1:1/0"}, "dlp.key"),
    ],
)
def test_a_fleet_without_shared_keys_refuses_to_issue(tmp_path: Path, keys: dict, dlp: dict, missing: str) -> None:
    gw = GatewayProcess(tmp_path, {"stores": {"state": "redis://127.0.0.1:1/0"}, "keys": keys, "dlp": dlp})
    done = gw.cli("token", "issue", "--sub", "a", "--role", "finance", check=False)
    assert done.returncode == 2 and f"set {missing} " in done.stderr and "Traceback" not in done.stderr
    assert not (gw.state_dir / "signing-key.pem").exists()


def test_a_fleet_without_shared_keys_refuses_to_run(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, {"stores": {"state": "redis://127.0.0.1:1/0"}})
    done = gw.cli("run", check=False)
    assert done.returncode == 2 and "set keys.signing, keys.ca " in done.stderr and "Traceback" not in done.stderr
    assert not (gw.state_dir / "signing-key.pem").exists() and not (gw.state_dir / "ca").exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty or missing"),
        (b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", "is not an unencrypted PEM private key"),
    ],
)
def test_a_bad_key_file_is_a_clear_config_error(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "k.pem").write_bytes(content)
    gw = GatewayProcess(tmp_path / "gw", {"keys": {"signing": f"file:{tmp_path / 'k.pem'}"}})
    done = gw.cli("token", "issue", "--sub", "a", "--role", "finance", check=False)
    assert done.returncode == 2 and f"keys.signing (file:{tmp_path / 'k.pem'}) {reason}" in done.stderr


def test_a_key_given_inline_is_refused(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, {"keys": {"signing": "-----BEGIN PRIVATE KEY-----"}})
    done = gw.cli("token", "issue", "--sub", "a", "--role", "finance", check=False)
    assert done.returncode == 2 and "expected env:NAME, file:PATH or vault:MOUNT/PATH#FIELD" in done.stderr
