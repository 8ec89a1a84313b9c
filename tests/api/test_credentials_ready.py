"""Config fails closed on credentials: a `secrets:` entry no connector uses stops start-up, and a
connector in use whose credential is missing or empty is logged loudly and named by `/readyz`
(never the value), until the credential appears."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

WEATHER_POLICY = "version: 1\nsubjects: {roles: [forecaster]}\nrules:\n  - {connector: weather, actions: [forecast]}\n"


def test_a_secret_naming_no_connector_stops_start_up(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw", {"secrets": {"stripe": "env:TEST_STRIPE_KEY", "strpe": "env:TEST_STRIPE_KEY"}})
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(gw.config_file), "--state-dir", str(gw.state_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "secrets.strpe: no connector uses this credential" in out.stderr and "Traceback" not in out.stderr


def test_readyz_names_each_connector_whose_credential_is_missing(make_gateway, pki: PKI, vendor: FakeVendor, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "weather.yaml").write_text(WEATHER_POLICY)
    key_file = tmp_path / "serpapi.key"
    settings = vendor_settings(
        pki, vendor, policies=str(policies), connectors=["tests.connectors.weather:CONNECTOR"],
        secrets={"stripe": "env:TEST_STRIPE_KEY", "openai": "env:EMPTY_OPENAI_KEY", "serpapi": f"file:{key_file}"},
    )
    gw = make_gateway(settings, env={"EMPTY_OPENAI_KEY": ""})
    r = httpx.get(f"{gw.api_url}/readyz")
    assert r.status_code == 503, r.text
    missing = r.json()["connectors"]
    assert set(missing) == {"openai", "serpapi", "weather"}, missing  # stripe's key is set
    assert "EMPTY_OPENAI_KEY" in missing["openai"] and str(key_file) in missing["serpapi"]
    assert "secrets.weather" in missing["weather"]
    log = gw.log_file.read_text()
    for name in ("openai", "serpapi", "weather"):
        assert f"connector {name} is NOT READY" in log
    assert "sk_test_fake_stripe_key_0001" not in log + r.text
    key_file.write_text("fresh-serpapi-key-0004\n")  # a credential that appears is picked up
    r = httpx.get(f"{gw.api_url}/readyz")
    assert set(r.json()["connectors"]) == {"openai", "weather"} and "fresh-serpapi-key-0004" not in r.text


def test_all_credentials_present_is_ready(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    gw = make_gateway(vendor_settings(pki, vendor, policies=str(REPO / "policies")))
    r = httpx.get(f"{gw.api_url}/readyz")
    assert (r.status_code, r.json()["status"], set(r.json())) == (200, "ready", {"status", "attestation"})
