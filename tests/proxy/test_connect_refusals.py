"""Refusals decided at CONNECT reach SDKs as the JSON error (issue 12, item 2).

A 407 or 403 answer to CONNECT shows in the openai SDK as "Connection error." and in
stripe-python as "Tunnel connection failed: 407". So a refused CONNECT is answered 200 with
`X-Egress-Error`, TLS is terminated with the gateway's CA, and the request inside gets the refusal;
nothing is ever dialed for it.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import stripe

from tests.clients import basic, raw_connect, trusting
from tests.fakes import FakeVendor
from tests.processes import GatewayProcess


def _openai(gw: GatewayProcess, token: str, base_url: str = "https://api.openai.com/v1") -> openai.OpenAI:
    http = httpx.Client(proxy=gw.proxy_url(token), verify=trusting(gw), timeout=20)
    return openai.OpenAI(api_key="sk-agent-holds-none", base_url=base_url, http_client=http, max_retries=0)


@pytest.mark.parametrize(
    ("token", "base_url", "status", "code"),
    [
        ("not-a-jwt", "https://api.openai.com/v1", 407, "identity_invalid"),
        (None, "https://llm-relay.example/v1", 403, "host_denied"),
    ],
)
def test_the_openai_sdk_shows_the_gateways_reason(
    gateway: GatewayProcess, vendor: FakeVendor, token: str | None, base_url: str, status: int, code: str
) -> None:
    dialed = vendor.connections
    sdk = _openai(gateway, token or gateway.token(scopes=("*",)), base_url)
    with pytest.raises(openai.APIStatusError) as e:
        sdk.embeddings.create(model="text-embedding-3-small", input="hello")
    assert e.value.status_code == status
    assert isinstance(e.value.body, dict) and e.value.body["code"] == code  # the SDK's own parse of our JSON
    assert e.value.body["message"] in str(e.value)
    assert vendor.connections == dialed and not vendor.received


def test_stripe_python_shows_the_gateways_reason(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    http = stripe.RequestsClient(proxy=gateway.proxy_url("revoked-or-forged"), verify_ssl_certs=True)
    sdk = stripe.StripeClient("sk_test_agent_holds_none", http_client=http, max_network_retries=0)
    default, stripe.ca_bundle_path = stripe.ca_bundle_path, str(gateway.ca_file)
    try:
        with pytest.raises(stripe.StripeError) as e:
            sdk.v1.customers.create(params={"description": "d"})
    finally:
        stripe.ca_bundle_path = default
    assert e.value.http_status == 407 and "identity_invalid" in str(e.value.json_body)
    assert e.value.user_message and "token" in e.value.user_message.lower()
    assert not vendor.received


def test_the_connect_answer_carries_the_code_and_a_second_request_gets_the_same_refusal(gateway: GatewayProcess) -> None:
    before = len(gateway.audit())
    sock, first = raw_connect(gateway, "llm-relay.example", basic(gateway.token()))
    sock.sendall(b"GET /again HTTP/1.1\r\nHost: llm-relay.example\r\n\r\n")
    sock.close()
    assert (first.status, first.error()["code"]) == (403, "host_denied")
    refusals = [r for r in gateway.audit()[before:] if r["code"] == "host_denied"]
    assert [r["decision_id"] for r in refusals] == [first.error()["decision_id"]]  # one decision, audited once
