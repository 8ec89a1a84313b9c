"""`eval "$(egress-gateway env ...)"` then a real client, through the real gateway to the fake vendor.

The matrix below is the README's per-client table, measured: which single CA variable each client
reads. It is why `env` exports all of them, pointing at one bundle.
"""

from __future__ import annotations

import shutil
import uuid

import pytest

from gateway.cli.agent_env import CA_VARIABLES
from tests.cli.env_clients import TLS_REFUSED, eval_then, exports_of, run_client
from tests.fakes import VENDOR_ENV, FakeVendor
from tests.processes import GatewayProcess

# Measured with the pinned test extra (requests 2.x, httpx 0.2x, openai 2.x, stripe 16.x), curl
# 7.88 and Node 20; the README's table says the same.
TRUSTS: dict[str, set[str]] = {
    "requests": {"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"},
    "httpx": {"SSL_CERT_FILE"},
    "openai": {"SSL_CERT_FILE"},
    "stripe": set(),  # verify=stripe.ca_bundle_path (its own copy of Mozilla's CAs) on every request
    "node": {"NODE_EXTRA_CA_CERTS"},
    "curl": {"SSL_CERT_FILE", "CURL_CA_BUNDLE"},
}
WORKING = ["requests", "httpx", "openai", "node", "curl"]
KEYS = {"openai": VENDOR_ENV["TEST_OPENAI_KEY"]}


def _needs(kind: str) -> None:
    if kind == "node" and shutil.which("node") is None:
        pytest.skip("node is not installed")


def _agent(kind: str) -> list[str]:
    return ["--sub", f"env-{kind}-{uuid.uuid4().hex[:8]}", "--role", "finance", "--scope", "stripe:*", "--scope", "openai:*"]


@pytest.mark.parametrize("kind", WORKING)
def test_eval_env_then_the_client_reaches_the_vendor(gateway: GatewayProcess, vendor: FakeVendor, kind: str) -> None:
    """Over a stale lowercase https_proxy, which every client prefers to HTTPS_PROXY."""
    _needs(kind)
    agent = _agent(kind)
    run = eval_then(gateway, agent, kind, {"https_proxy": "http://127.0.0.1:9"})
    assert run.reached, run
    got = vendor.received[-1]
    assert got.headers["authorization"] == f"Bearer {KEYS.get(kind, VENDOR_ENV['TEST_STRIPE_KEY'])}"
    assert "sk-agent-placeholder" not in str(got.headers)
    assert any(rec.get("sub") == agent[1] and rec.get("decision") == "allow" for rec in gateway.audit())


def test_stripe_python_ignores_every_ca_variable_until_ca_bundle_path_is_set(
    gateway: GatewayProcess, vendor: FakeVendor
) -> None:
    refused = eval_then(gateway, _agent("stripe"), "stripe")
    assert refused.returncode != 0 and TLS_REFUSED.search(refused.stderr), refused
    assert not vendor.received
    run = eval_then(gateway, _agent("stripe"), "stripe", {"SET_STRIPE_CA_BUNDLE_PATH": "1"})
    assert run.reached, run
    assert vendor.received[-1].headers["authorization"] == f"Bearer {VENDOR_ENV['TEST_STRIPE_KEY']}"


@pytest.fixture(scope="module")
def exports(gateway: GatewayProcess) -> dict[str, str]:
    """What `env` exports, read once for the whole matrix: which variable a client reads depends on
    the client and the variable, not on the agent, and each `env` run is a CLI start (~1-2 s)."""
    return exports_of(gateway, _agent("matrix"))


@pytest.mark.slow
@pytest.mark.parametrize("variable", CA_VARIABLES)
@pytest.mark.parametrize("kind", sorted(TRUSTS))
def test_which_ca_variable_each_client_reads(exports: dict[str, str], vendor: FakeVendor, kind: str, variable: str) -> None:
    _needs(kind)
    run = run_client(kind, {"HTTPS_PROXY": exports["HTTPS_PROXY"], variable: exports[variable]})
    if variable in TRUSTS[kind]:
        assert run.reached, run
    else:
        assert not run.reached and TLS_REFUSED.search(run.stderr), run  # refused for trust, not another reason
