"""Allowed calls: they reach the vendor with the injected key and without the agent's auth."""

from __future__ import annotations

import json

import requests

from tests.clients import client, curl
from tests.fakes import VENDOR_ENV, FakeVendor
from tests.processes import GatewayProcess

STRIPE_KEY = VENDOR_ENV["TEST_STRIPE_KEY"]


def test_httpx_stripe_form_call_gets_injected_key(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    token = gateway.token(scopes=("stripe:*",))
    with client(gateway, token) as c:
        r = c.post(
            "https://api.stripe.com/v1/payment_intents",
            data={"amount": "1500", "currency": "usd", "metadata[account]": "1234567890"},
            headers={"Authorization": "Bearer sk_live_agent_own_key", "Stripe-Account": "acct_other"},
        )
    assert r.status_code == 200, r.text
    got = vendor.received[-1]
    assert (got.method, got.path, got.host) == ("POST", "/v1/payment_intents", "api.stripe.com")
    assert got.headers["authorization"] == f"Bearer {STRIPE_KEY}"
    assert "stripe-account" not in got.headers
    assert "proxy-authorization" not in got.headers
    assert b"metadata%5Baccount%5D=1234567890" in got.body
    decision_id = r.headers["x-egress-decision-id"]
    records = [rec for rec in gateway.audit() if rec["decision_id"] == decision_id]
    assert [rec["phase"] for rec in records] == ["decision", "outcome"]
    outcome = records[-1]
    assert outcome["decision"] == "allow" and outcome["upstream_status"] == 200
    assert outcome["connector"] == "stripe" and outcome["action"] == "create_payment_intent"
    assert outcome["latency_ms"] > 0 and outcome["sub"] == "agent-1"


def test_requests_openai_json_call(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    token = gateway.token(sub="research-1", role="research", scopes=("openai:*",))
    proxies = {"https": gateway.proxy_url(token)}
    r = requests.post(
        "https://api.openai.com/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": ["hello"]},
        headers={"Authorization": "Bearer sk-agent", "OpenAI-Organization": "org-x"},
        proxies=proxies,
        verify=str(gateway.ca_file),
        timeout=15,
    )
    assert r.status_code == 200, r.text
    got = vendor.received[-1]
    assert got.headers["authorization"] == f"Bearer {VENDOR_ENV['TEST_OPENAI_KEY']}"
    assert "openai-organization" not in got.headers
    assert got.json() == {"model": "text-embedding-3-small", "input": ["hello"]}


def test_curl_serpapi_key_goes_in_query_replacing_the_agents(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    token = gateway.token(sub="research-1", role="research", scopes=("serpapi:search",))
    out = curl(gateway, token, "https://serpapi.com/search.json?q=weather&api_key=agent-guess")
    body, _, status = out.stdout.rpartition("\n")
    assert status == "200", out.stdout + out.stderr
    got = vendor.received[-1]
    assert got.path.startswith("/search.json?")
    assert f"api_key={VENDOR_ENV['TEST_SERPAPI_KEY']}" in got.path
    assert "agent-guess" not in got.path
    assert json.loads(body)["host"] == "serpapi.com"


def test_bearer_proxy_authorization_is_accepted(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    token = gateway.token(scopes=("stripe:retrieve_balance",))
    with requests.Session() as s:
        s.proxies = {"https": f"http://127.0.0.1:{gateway.port}"}
        # requests sends proxy headers on the CONNECT only through this adapter hook.
        adapter = requests.adapters.HTTPAdapter()
        adapter.proxy_headers = lambda proxy: {"Proxy-Authorization": f"Bearer {token}"}  # type: ignore[method-assign]
        s.mount("https://", adapter)
        r = s.get("https://api.stripe.com/v1/balance", verify=str(gateway.ca_file), timeout=15)
    assert r.status_code == 200, r.text
    assert vendor.received[-1].path == "/v1/balance"


def test_streamed_chat_completion_passes_through(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    token = gateway.token(sub="research-1", role="research", scopes=("openai:chat_completions",))
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with client(gateway, token) as c, c.stream("POST", "https://api.openai.com/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["x-egress-decision-id"].startswith("dec_")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "You said: hi" and events[-1] == "data: [DONE]"


def test_many_requests_share_one_tunnel(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    token = gateway.token(scopes=("stripe:*",))
    with client(gateway, token) as c:
        statuses = [c.get(f"https://api.stripe.com/v1/payment_intents/pi_{i}").status_code for i in range(20)]
    assert statuses == [200] * 20
    assert [r.path for r in vendor.received] == [f"/v1/payment_intents/pi_{i}" for i in range(20)]
