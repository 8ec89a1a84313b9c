"""Vendor credentials from a real OpenBao server (the Vault API, KV v2): read and injected, a rotation
picked up without a restart, a store that stops refusing calls (503 store_unavailable) once the
cached value is past its time and serving again when it is back, AppRole logins, and never a value
in the gateway's log, its audit log or an answer."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import load
from gateway.errors import ConfigError, Refusal
from gateway.pipeline.scrub import REPLACEMENT
from gateway.secrets import Secrets, read_reference
from gateway.vault_kv import VaultAuth, VaultReader
from tests.clients import chat, client, error_of
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, OpenBaoServer

STRIPE_REF = "vault:secret/egress/stripe#api_key"
PAYMENT = {"amount": "1500", "currency": "usd"}


def new_key(label: str) -> str:
    return f"sk_vault_{label}_{secrets.token_hex(8)}"


def until(check: Callable[[], object], what: str, attempts: int = 200) -> object:
    """Poll `check` until it returns something true (bounded: a failing test ends, never hangs)."""
    for _ in range(attempts):
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    server = OpenBaoServer(tmp_path_factory.mktemp("bao")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys_seen() -> list[str]:
    """Every vault value this module's gateway was given, for the leak checks."""
    return []


@pytest.fixture(scope="module")
def vault_gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor, bao: OpenBaoServer,
             keys_seen: list[str]) -> Iterator[GatewayProcess]:
    first = new_key("v1")
    keys_seen.append(first)
    bao.put("egress/stripe", api_key=first)
    settings = vendor_settings(
        pki, vendor_server, secrets_refresh="500ms", secrets_max_stale="3s",
        secrets={"stripe": STRIPE_REF, "openai": "env:TEST_OPENAI_KEY", "serpapi": "env:TEST_SERPAPI_KEY"},
    )
    with GatewayProcess(tmp_path_factory.mktemp("vault-gw"), settings, bao.env()).start() as gw:
        yield gw


def pay(gw: GatewayProcess) -> httpx.Response:
    with client(gw, gw.token(scopes=("stripe:*", "openai:*"))) as c:
        return c.post("https://api.stripe.com/v1/payment_intents", data=PAYMENT)


def injected(vendor: FakeVendor) -> str:
    return vendor.received[-1].headers["authorization"].removeprefix("Bearer ")


def test_the_vault_value_is_injected_and_a_rotation_is_picked_up_without_restart(
    vault_gw: GatewayProcess, bao: OpenBaoServer, vendor: FakeVendor, keys_seen: list[str]
) -> None:
    r = pay(vault_gw)
    assert r.status_code == 200, r.text
    assert injected(vendor) == keys_seen[0]
    assert httpx.get(f"{vault_gw.api_url}/readyz").status_code == 200

    rotated = new_key("v2")
    keys_seen.append(rotated)
    bao.put("egress/stripe", api_key=rotated)
    until(lambda: pay(vault_gw).status_code == 200 and injected(vendor) == rotated, "the rotated key is injected")
    assert "secret store: vault:secret/egress/stripe#api_key rotated (version 1 -> 2)" in vault_gw.log_file.read_text()

    # A vendor echoing the request, and an agent echoing the previous key through it: both keys removed.
    vendor.echo_headers = True
    with client(vault_gw, vault_gw.token(scopes=("openai:*", "stripe:*"))) as c:
        echoed = c.post("https://api.stripe.com/v1/payment_intents", data=PAYMENT)
        old = c.post("https://api.openai.com/v1/chat/completions", json=chat(f"my old key was {keys_seen[0]}"))
    assert echoed.status_code == 200 and old.status_code == 200
    assert rotated not in echoed.text and REPLACEMENT.decode() in echoed.text
    assert keys_seen[0] not in old.text and REPLACEMENT.decode() in old.text


def test_a_stopped_store_refuses_calls_once_the_cache_is_past_its_time_and_serves_again_when_back(
    vault_gw: GatewayProcess, bao: OpenBaoServer, vendor: FakeVendor, keys_seen: list[str]
) -> None:
    assert pay(vault_gw).status_code == 200
    bao.stop()
    ready = until(lambda: (r := httpx.get(f"{vault_gw.api_url}/readyz")).status_code == 503 and r.json(), "not ready")
    assert isinstance(ready, dict)
    assert ready["connectors"]["stripe"] == "secrets.stripe (vault:secret/egress/stripe#api_key) cannot be read: the store is unreachable"
    until(lambda: pay(vault_gw).status_code == 503, "calls refused")
    sent = len(vendor.received)
    refused = [pay(vault_gw) for _ in range(3)]
    assert [r.status_code for r in refused] == [503, 503, 503]
    err = error_of(refused[0])
    assert err["code"] == "store_unavailable" and err["connector"] == "stripe"
    assert "secret store (vault)" in err["message"]
    assert len(vendor.received) == sent  # nothing left without its credential, or with a stale one

    restored = new_key("v3")
    keys_seen.append(restored)
    bao.kv["egress/stripe"] = {"api_key": restored}  # the restarted (empty, dev-mode) store is restored
    bao.start()
    until(lambda: pay(vault_gw).status_code == 200, "served again")
    assert injected(vendor) == restored
    assert httpx.get(f"{vault_gw.api_url}/readyz").status_code == 200
    assert "secret store: vault:secret/egress/stripe#api_key can be read again" in vault_gw.log_file.read_text()


def test_no_vault_value_or_store_token_reaches_the_log_or_the_audit(vault_gw: GatewayProcess, bao: OpenBaoServer,
                                                                   keys_seen: list[str]) -> None:
    assert len(keys_seen) >= 1
    written = vault_gw.log_file.read_text() + vault_gw.audit_file.read_text()
    assert "secret store" in written  # the log is the one under test
    for value in [*keys_seen, bao.root_token]:
        assert value not in written


def test_approle_login_reads_what_its_policy_allows_and_nothing_else(
    make_gateway: Callable[..., GatewayProcess], pki: PKI, vendor: FakeVendor, bao: OpenBaoServer
) -> None:
    key, other = new_key("approle"), new_key("not-allowed")
    if not bao.running:
        bao.start()
    bao.put("egress/approle-stripe", api_key=key)
    bao.put("egress/approle-openai", api_key=other)
    role_id, secret_id = bao.approle("egress-gateway", ("egress/approle-stripe",))
    settings = vendor_settings(pki, vendor, secrets={
        "stripe": "vault:secret/egress/approle-stripe#api_key",
        "openai": "vault:secret/egress/approle-openai#api_key",
        "serpapi": "env:TEST_SERPAPI_KEY",
    })
    env = {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": "", "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id}
    gw = make_gateway(settings, env=env)
    r = pay(gw)
    assert r.status_code == 200, r.text
    assert injected(vendor) == key
    with client(gw, gw.token(scopes=("openai:*",))) as c:
        denied = c.post("https://api.openai.com/v1/chat/completions", json=chat("hi"))
    assert denied.status_code == 503 and error_of(denied)["code"] == "store_unavailable"
    ready = httpx.get(f"{gw.api_url}/readyz")
    assert ready.status_code == 503
    assert set(ready.json()["connectors"]) == {"openai"}
    assert "permission denied (AppRole)" in ready.json()["connectors"]["openai"]
    log = gw.log_file.read_text()
    for value in (key, other, secret_id):
        assert value not in log + gw.audit_file.read_text() + ready.text


def test_a_wrong_approle_secret_id_leaves_the_connector_not_ready(
    make_gateway: Callable[..., GatewayProcess], pki: PKI, vendor: FakeVendor, bao: OpenBaoServer
) -> None:
    if not bao.running:
        bao.start()
    role_id, _ = bao.approle("egress-gateway-2", ("egress/stripe",))
    wrong = "00000000-0000-0000-0000-" + secrets.token_hex(6)
    settings = vendor_settings(pki, vendor, secrets={"stripe": STRIPE_REF, "openai": "env:TEST_OPENAI_KEY",
                                                     "serpapi": "env:TEST_SERPAPI_KEY"})
    gw = make_gateway(settings, env={"VAULT_ADDR": bao.addr, "VAULT_TOKEN": "", "VAULT_ROLE_ID": role_id,
                                     "VAULT_SECRET_ID": wrong})
    ready = httpx.get(f"{gw.api_url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["connectors"] == {
        "stripe": f"secrets.stripe ({STRIPE_REF}) cannot be read: the store refused the AppRole login (VAULT_ROLE_ID, VAULT_SECRET_ID)"
    }
    sent = len(vendor.received)
    assert pay(gw).status_code == 503 and len(vendor.received) == sent
    assert wrong not in gw.log_file.read_text()


def test_a_vault_reference_without_the_store_in_the_environment_stops_start_up(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw", {"secrets": {"stripe": STRIPE_REF}})
    env = {k: v for k, v in gw._environ().items() if not k.startswith("VAULT_")}
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(gw.config_file), "--state-dir", str(gw.state_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=60, env=env,
    )
    assert out.returncode == 2, out.stderr
    assert "a vault: secret reference needs VAULT_ADDR" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(("secrets_", "extra", "message"), [
    ({"stripe": "vault:secret#api_key"}, {}, "expected vault:MOUNT/PATH#FIELD"),
    ({"stripe": "vault:secret/egress/stripe"}, {}, "expected vault:MOUNT/PATH#FIELD"),
    ({"stripe": "vault:secret/../sys/x#f"}, {}, "expected vault:MOUNT/PATH#FIELD"),
    ({"stripe": "sk_live_pasted_key"}, {}, "never the key itself"),
    ({"stripe": STRIPE_REF}, {"secrets_refresh": "1m", "secrets_max_stale": "30s"}, "must be at least secrets_refresh"),
])
def test_bad_vault_settings_are_config_errors(tmp_path: Path, secrets_: dict[str, str], extra: dict[str, str],
                                              message: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="bad configuration") as e:
        load(path, {"secrets": secrets_, **extra})
    assert message in str(e.value)


def test_a_cached_value_serves_until_its_time_and_never_after(tmp_path: Path) -> None:
    """The staleness rule on a clock the test moves, against a real store that stops and comes back."""
    server = OpenBaoServer(tmp_path / "bao").start()
    try:
        first = new_key("clock")
        server.put("egress/stripe", api_key=first)
        now = [1000.0]
        store = Secrets({"stripe": STRIPE_REF}, refresh=10, max_stale=30,
                        reader=VaultReader(VaultAuth.from_env(server.env())), clock=lambda: now[0])
        assert store.problem("stripe") == f"secrets.stripe ({STRIPE_REF}) cannot be read: not read yet"
        with pytest.raises(Refusal):
            store.get("stripe")  # never read: nothing to serve
        assert store.refresh_due() == 10
        assert store.get("stripe") == first and store.problem("stripe") is None
        server.stop()
        now[0] = 1010.0
        assert store.refresh_due() == 5  # a failed read is retried sooner
        assert store.get("stripe") == first  # within its time, while the store is down
        assert "the store is unreachable" in (store.problem("stripe") or "")
        now[0] = 1029.999
        assert store.get("stripe") == first
        now[0] = 1030.0
        with pytest.raises(Refusal) as refused:
            store.get("stripe")
        assert refused.value.code == "store_unavailable" and first not in str(refused.value)
        assert first.encode() not in store.scrubber().scrub(first.encode())[0]  # still scrubbed
        server.kv["egress/stripe"] = {"api_key": (second := new_key("clock2"))}
        server.start()
        now[0] = 1035.0
        store.refresh_due()
        assert store.get("stripe") == second and store.problem("stripe") is None
        scrubbed, count = store.scrubber().scrub(f"{first} {second}".encode())
        assert count == 2 and first.encode() not in scrubbed and second.encode() not in scrubbed
        server.put("egress/stripe", api_key=f"{second}\r\nX-Admin: yes")  # a header smuggled into the store
        now[0] = 1045.0
        store.refresh_due()
        assert store.problem("stripe") == f"secrets.stripe ({STRIPE_REF}) cannot be read: the value holds a line break or NUL; refusing it"
        assert store.get("stripe") == second  # the last good value, within its time
        now[0] = 1065.0
        with pytest.raises(Refusal):
            store.get("stripe")
        store.close()
    finally:
        server.stop()


def test_read_reference_reads_a_key_once_for_start_up(tmp_path: Path) -> None:
    server = OpenBaoServer(tmp_path / "bao").start()
    try:
        server.put("egress/keys", signing="-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----")
        got = read_reference("vault:secret/egress/keys#signing", "keys.signing", server.env())
        assert got.startswith("-----BEGIN PRIVATE KEY-----")
        with pytest.raises(ConfigError, match=r"keys.ca \(vault:secret/egress/keys#ca\) cannot be read: the secret has no text field 'ca'"):
            read_reference("vault:secret/egress/keys#ca", "keys.ca", server.env())
        with pytest.raises(ConfigError, match="no such secret"):
            read_reference("vault:secret/egress/none#ca", "keys.ca", server.env())
        server.put("egress/pasted", key="sk_pasted_with_newline_0001\n")
        assert read_reference("vault:secret/egress/pasted#key", "keys.signing", server.env()) == "sk_pasted_with_newline_0001"
        with pytest.raises(ConfigError, match="needs VAULT_ADDR"):
            read_reference("vault:secret/egress/keys#signing", "keys.signing", {})
        with pytest.raises(ConfigError, match=r"keys.signing \(env:NOT_SET_ANYWHERE\) is empty or missing"):
            read_reference("env:NOT_SET_ANYWHERE", "keys.signing", {})
    finally:
        server.stop()


def test_a_blank_field_is_a_failed_read_and_the_cached_value_serves_its_time(bao: OpenBaoServer) -> None:
    """A field emptied in the store (or holding only whitespace) is not a rotation to an empty key:
    it was taken as one, so the last good value stopped at once, the log said nothing, and /readyz
    blamed a cached value 'past its time'. It is a failed read, like a field that is gone."""
    if not bao.running:
        bao.start()
    key = new_key("blank")
    bao.put("egress/blank", api_key=key)
    now = [1000.0]
    store = Secrets({"stripe": "vault:secret/egress/blank#api_key"}, refresh=10, max_stale=30,
                    reader=VaultReader(VaultAuth.from_env(bao.env())), clock=lambda: now[0])
    try:
        store.refresh_due()
        assert store.get("stripe") == key
        bao.put("egress/blank", api_key=" \n")
        now[0] = 1010.0
        store.refresh_due()
        assert store.problem("stripe") == "secrets.stripe (vault:secret/egress/blank#api_key) cannot be read: the field 'api_key' is empty"
        assert store.get("stripe") == key  # within its time
        now[0] = 1030.0
        with pytest.raises(Refusal) as refused:
            store.get("stripe")
        assert refused.value.code == "store_unavailable"
    finally:
        store.close()
