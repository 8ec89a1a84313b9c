"""Connectors that real SDK versions can use (issue 12, item 7): the official openai and stripe
SDKs, with the fields and list calls they send today, go through the real gateway; every string
among the new fields is still scanned (an e-mail in one leaves as a token)."""

from __future__ import annotations

import httpx
import openai
import stripe

from tests.clients import trusting
from tests.fakes import FakeVendor
from tests.processes import GatewayProcess

EMAIL = "jane.doe@example.com"


def test_openai_sdk_current_chat_fields_pass_and_are_scanned(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    http = httpx.Client(proxy=gateway.proxy_url(gateway.token(scopes=("openai:*",))), verify=trusting(gateway), timeout=20)
    sdk = openai.OpenAI(api_key="sk-agent-holds-none", http_client=http, max_retries=0)
    sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=20,
        service_tier="flex", prompt_cache_key=f"cache-{EMAIL}", safety_identifier="user-123", parallel_tool_calls=False,
        modalities=["text"], reasoning_effort="low", verbosity="low",
    )
    sent = vendor.received[-1].json()
    assert sent["service_tier"] == "flex" and sent["parallel_tool_calls"] is False
    assert EMAIL not in sent["prompt_cache_key"] and "tok_EMAIL_ADDRESS_" in sent["prompt_cache_key"]


def test_stripe_sdk_list_calls_and_expand(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    http = stripe.RequestsClient(proxy=gateway.proxy_url(gateway.token(scopes=("stripe:*",))))
    sdk = stripe.StripeClient("sk_test_agent_holds_none", http_client=http, max_network_retries=0)
    default, stripe.ca_bundle_path = stripe.ca_bundle_path, str(gateway.ca_file)
    try:
        sdk.v1.refunds.list(params={"limit": 3, "payment_intent": "pi_123", "expand": ["data.charge"]})
        sdk.v1.customers.list(params={"email": EMAIL, "limit": 1})
        sdk.v1.customers.retrieve("cus_Q1w2E3r4")
    finally:
        stripe.ca_bundle_path = default
    paths = [r.path for r in vendor.received[-3:]]
    assert paths[0].startswith("/v1/refunds?") and "expand" in paths[0] and "limit=3" in paths[0]
    assert paths[1].startswith("/v1/customers?") and EMAIL.split("@")[0] not in paths[1] and "tok_EMAIL_ADDRESS_" in paths[1]
    assert paths[2].startswith("/v1/customers/cus_Q1w2E3r4")
