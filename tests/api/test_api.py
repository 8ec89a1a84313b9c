"""The admin API: health, JWKS, metrics, connectors and recent decisions, with admin tokens only."""

from __future__ import annotations

import httpx
import pytest

from tests.clients import basic, client, error_of, raw_connect
from tests.fakes import VENDOR_ENV, FakeVendor
from tests.processes import GatewayProcess


def test_health_and_readiness_are_open(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.api_url}/readyz").json()
    assert ready["status"] == "ready" and set(ready) == {"status", "attestation"}
    assert ready["attestation"]["connector:connectors.builtin.stripe"].startswith("sha256:")  # tests/supply/test_attest.py


@pytest.mark.parametrize("path", ["/metrics", "/v1/connectors", "/v1/decisions"])
def test_admin_endpoints_need_an_admin_token(gateway: GatewayProcess, path: str) -> None:
    r = httpx.get(gateway.api_url + path)
    assert (r.status_code, error_of(r)["code"]) == (401, "identity_missing")
    r = httpx.get(gateway.api_url + path, headers={"Authorization": f"Bearer {gateway.token(role='finance')}"})
    assert (r.status_code, error_of(r)["code"]) == (403, "admin_required")
    r = httpx.get(gateway.api_url + path, headers={"Authorization": "Bearer forged.token.here"})
    assert (r.status_code, error_of(r)["code"]) == (401, "identity_invalid")


def test_decisions_and_metrics_show_calls_without_secrets(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    token = gateway.token(sub="metrics-agent", scopes=("stripe:*",))
    with client(gateway, token) as c:
        assert c.get("https://api.stripe.com/v1/balance").status_code == 200
        assert c.post("https://api.stripe.com/v1/refunds", data={"amount": "x"}).status_code == 400
    admin = {"Authorization": f"Bearer {gateway.token(sub='ops', role='admin')}"}
    decisions = httpx.get(f"{gateway.api_url}/v1/decisions?limit=50", headers=admin).json()["decisions"]
    mine = [d for d in decisions if d["sub"] == "metrics-agent"]
    assert {(d["action"], d["decision"], d["code"]) for d in mine} >= {
        ("retrieve_balance", "allow", None),
        ("create_refund", "deny", "schema_violation"),
    }
    text = httpx.get(f"{gateway.api_url}/metrics", headers=admin).text
    assert 'egress_decisions_total{connector="stripe",action="create_refund",decision="deny",code="schema_violation"}' in text
    assert "egress_upstream_seconds_count" in text
    scraped = text + str(decisions) + gateway.audit_file.read_text() + gateway.log_file.read_text()
    for secret in VENDOR_ENV.values():
        assert secret not in scraped
    assert token not in scraped


def test_connectors_endpoint(gateway: GatewayProcess) -> None:
    admin = {"Authorization": f"Bearer {gateway.token(sub='ops', role='admin')}"}
    names = {c["name"] for c in httpx.get(f"{gateway.api_url}/v1/connectors", headers=admin).json()["connectors"]}
    assert names == {"stripe", "openai", "serpapi"}


@pytest.mark.parametrize("depth", [900, 5000])
def test_deeply_nested_json_at_detokenize_is_a_clear_400_and_audited(gateway: GatewayProcess, depth: int) -> None:
    """Hardening issue, item 14: JSON nested 900+ deep gave 500 at /v1/detokenize."""
    body = b'{"json": ' + b"[" * depth + b"]" * depth + b"}"
    r = httpx.post(f"{gateway.api_url}/v1/detokenize", content=body,
                   headers={"Authorization": f"Bearer {gateway.token()}", "Content-Type": "application/json"})
    assert (r.status_code, error_of(r)["code"]) == (400, "malformed_body")
    assert any(x["decision_id"] == r.headers["x-egress-decision-id"] and x["code"] == "malformed_body" for x in gateway.audit())


@pytest.mark.parametrize(
    "body",
    [b'{"text": "a \\ud800 b"}', b'{"json": {"\\udc00": 1}}', b'{"json": ["\\uD83D"]}', b'{"text": "\xed\xa0\x80"}'],
    ids=["text", "key", "list", "raw-bytes"],
)
def test_lone_surrogate_at_detokenize_is_a_clear_400(gateway: GatewayProcess, body: bytes) -> None:
    """Was a plain-text 500 "Internal Server Error" (the answer could not be written as UTF-8),
    without a decision id, and a traceback in the log."""
    r = httpx.post(f"{gateway.api_url}/v1/detokenize", content=body,
                   headers={"Authorization": f"Bearer {gateway.token()}", "Content-Type": "application/json"})
    assert (r.status_code, error_of(r)["code"]) == (400, "malformed_body")
    assert r.headers["x-egress-decision-id"] == error_of(r)["decision_id"]
    paired = httpx.post(f"{gateway.api_url}/v1/detokenize", content=b'{"text": "\\ud83d\\ude00"}',
                        headers={"Authorization": f"Bearer {gateway.token()}"})
    assert paired.json() == {"text": "\U0001f600"}  # a whole pair is an ordinary character


@pytest.mark.parametrize(
    "query",
    ["/v1/agents?sub=x", "/v1/agents?limit=5", "/v1/policies?file=x", "/v1/quarantine?sub=x", "/v1/connectors?name=x",
     "/v1/mcp/pins?tool=x", "/v1/decisions?state=all", "/v1/approvals?state=bogus", "/v1/approvals?sub=a&typo=1"],
)
def test_a_query_parameter_an_endpoint_does_not_take_is_a_400(gateway: GatewayProcess, query: str) -> None:
    """README: an unknown filter is a 400, never ignored. These answered 200 with everything, as if
    the misspelt or unsupported filter had matched."""
    admin = {"Authorization": f"Bearer {gateway.token(sub='ops', role='admin')}"}
    r = httpx.get(gateway.api_url + query, headers=admin)
    assert (r.status_code, error_of(r)["code"]) == (400, "bad_request")
    path = query.partition("?")[0]
    assert httpx.get(gateway.api_url + path, headers=admin).status_code == 200
    agent = {"Authorization": f"Bearer {gateway.token()}"}
    assert httpx.get(f"{gateway.api_url}/v1/tools?role=admin", headers=agent).status_code == 400


def test_metrics_have_latency_histograms_by_action_and_operator_gauges(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """Issue 12, item 6: upstream latency as a histogram with connector and action labels, and the
    gauges an operator alerts on (open circuits, pending approvals, connectors not ready)."""
    with client(gateway, gateway.token(sub="histogram", scopes=("stripe:*",))) as c:
        assert c.get("https://api.stripe.com/v1/balance").status_code == 200
    admin = {"Authorization": f"Bearer {gateway.token(sub='ops', role='admin')}"}
    text = httpx.get(f"{gateway.api_url}/metrics", headers=admin).text
    labels = 'connector="stripe",action="retrieve_balance"'
    buckets = [ln for ln in text.splitlines() if ln.startswith(f"egress_upstream_seconds_bucket{{{labels},")]
    counts = [int(ln.rsplit(" ", 1)[1]) for ln in buckets]
    assert len(buckets) == 14 and counts == sorted(counts) and counts[-1] >= 1 and 'le="+Inf"' in buckets[-1]
    assert f"egress_upstream_seconds_count{{{labels}}} {counts[-1]}" in text
    for gauge in ("egress_open_circuits", "egress_pending_approvals", "egress_not_ready_connectors"):
        assert f"# TYPE {gauge} gauge" in text and any(ln.startswith(f"{gauge} ") for ln in text.splitlines())


def test_a_metrics_token_scrapes_for_months_and_reaches_nothing_else(gateway: GatewayProcess) -> None:
    """Issue 12, item 6: a scrape credential that does not expire every 30 minutes (role
    `metrics`, capped by metrics_token_ttl), good for /metrics only."""
    out = gateway.cli("token", "issue", "--sub", "prometheus", "--role", "metrics", "--ttl", "60d")
    scraper = {"Authorization": f"Bearer {out.stdout.strip()}"}
    assert httpx.get(f"{gateway.api_url}/metrics", headers=scraper).status_code == 200
    for path in ("/v1/decisions", "/v1/connectors"):
        r = httpx.get(gateway.api_url + path, headers=scraper)
        assert (r.status_code, error_of(r)["code"]) == (403, "admin_required")
    agent = {"Authorization": f"Bearer {gateway.token()}"}
    r = httpx.get(f"{gateway.api_url}/metrics", headers=agent)
    assert (r.status_code, error_of(r)["code"]) == (403, "admin_required")
    too_long = gateway.cli("token", "issue", "--sub", "p", "--role", "metrics", "--ttl", "400d", check=False)
    assert too_long.returncode == 2 and "metrics_token_ttl" not in too_long.stdout
    agent_long = gateway.cli("token", "issue", "--sub", "a", "--role", "finance", "--ttl", "60d", check=False)
    assert agent_long.returncode == 2
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(out.stdout.strip()))
    sock.close()
    assert (resp.status, resp.error()["code"]) == (407, "identity_invalid")  # never a proxy credential


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/decisions/"), ("GET", "/healthz/"), ("GET", "/metrics/"), ("GET", "/v1/quarantine/"),
     ("POST", "/v1/quarantine/"), ("GET", "/v1/decisions/stream/"), ("POST", "/v1/approvals/x/approve/"),
     ("GET", "/console/"), ("GET", "/console/static/console.js/"), ("GET", "/console/session/"), ("GET", "/v1/nope")],
)
def test_a_trailing_slash_is_the_contracts_404_never_a_redirect(gateway: GatewayProcess, method: str, path: str) -> None:
    """Was Starlette's 307 to the path without the slash: no body and no decision id, and a client
    following it re-sent its Authorization header and body to a URL it had not asked for."""
    admin = {"Authorization": f"Bearer {gateway.token(sub='ops', role='admin')}"}
    r = httpx.request(method, gateway.api_url + path, headers=admin, follow_redirects=False)
    assert (r.status_code, error_of(r)["code"]) == (404, "not_found")
    assert r.headers["x-egress-decision-id"] == error_of(r)["decision_id"]
    assert "location" not in r.headers
