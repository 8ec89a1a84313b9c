"""Regressions from the security review: each test is an attack or accident that once got through."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.clients import basic, client, error_of, raw_connect, read_response, tunnel_tls
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

EMAIL = "jane.doe@example.com"


def test_agents_hanging_up_never_open_the_circuit(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    gw = make_gateway(vendor_settings(pki, vendor, breaker={"failures": 3, "reset": "30s"}))
    vendor.delay = 1.0
    for _ in range(5):
        tls = tunnel_tls(gw, gw.token(scopes=("stripe:retrieve_balance",)), "api.stripe.com")
        tls.sendall(b"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
        time.sleep(0.2)  # the call is forwarded; then the agent hangs up before the answer
        tls.close()
    time.sleep(1.5)
    vendor.delay = 0.0
    with client(gw, gw.token(sub="bystander", scopes=("stripe:*",))) as c:
        assert c.get("https://api.stripe.com/v1/balance").status_code == 200
    closed = [r for r in gw.audit() if r.get("code") == "client_closed"]
    assert len(closed) == 5


def test_a_path_that_is_not_utf8_is_refused_and_audited(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    tls = tunnel_tls(gateway, gateway.token(), "api.stripe.com")
    tls.sendall(b"GET /v1/payment_intents/pi_\xff HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
    resp = read_response(tls)
    tls.close()
    err = resp.error()
    assert (resp.status, err["code"]) == (400, "bad_request")
    assert any(r["decision_id"] == err["decision_id"] and r["code"] == "bad_request" for r in gateway.audit())
    assert not vendor.received
    assert gateway.cli("audit", "verify", check=False).returncode == 0


def test_pii_in_a_path_stays_out_of_the_audit_and_messages(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    with client(gateway, gateway.token(scopes=("stripe:*",))) as c:
        as_id = c.get(f"https://api.stripe.com/v1/payment_intents/{EMAIL}")
        refused = c.get(f"https://api.stripe.com/v1/customers/search/{EMAIL}")
        extra = c.post("https://api.stripe.com/v1/customers", data={f"{EMAIL}": "x"})
    # A path is not scanned, so an id that is not of an id's form is refused (hardening, item 2).
    assert error_of(as_id)["code"] == "schema_violation" and EMAIL not in as_id.text and not vendor.received
    assert error_of(refused)["code"] == "unknown_action" and EMAIL not in refused.text
    assert error_of(extra)["code"] == "schema_violation" and EMAIL not in extra.text
    ids = {r.headers["x-egress-decision-id"] for r in (as_id, refused, extra)}
    records = [r for r in gateway.audit() if r["decision_id"] in ids]
    assert records and EMAIL not in str(records)
    assert {r["path"] for r in records} >= {"/v1/payment_intents/…", "/v1/customers/search/…"}


def test_agent_side_headers_do_not_reach_the_vendor(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    headers = {"Stripe-Context": "acct_other", "Cookie": "session=abc", "X-Forwarded-For": "10.0.0.7",
               "Forwarded": "for=10.0.0.7", "X-Real-IP": "10.0.0.7"}
    with client(gateway, gateway.token(scopes=("stripe:*",))) as c:
        assert c.get("https://api.stripe.com/v1/balance", headers=headers).status_code == 200
    got = vendor.received[-1].headers
    for name in headers:
        assert name.lower() not in got


def test_lower_case_methods_and_other_ports_are_refused(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    tls = tunnel_tls(gateway, gateway.token(), "api.stripe.com")
    tls.sendall(b"get /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
    resp = read_response(tls)
    tls.close()
    assert (resp.status, resp.error()["code"]) == (400, "bad_request")
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(gateway.token()), port=8443)
    sock.close()
    assert (resp.status, resp.error()["code"]) == (403, "host_denied")
    assert not vendor.received


def test_api_unknown_routes_and_methods_answer_json(gateway: GatewayProcess) -> None:
    missing = httpx.get(f"{gateway.api_url}/v1/nothing-here")
    assert (missing.status_code, error_of(missing)["code"]) == (404, "not_found")
    wrong = httpx.delete(f"{gateway.api_url}/v1/detokenize")
    assert (wrong.status_code, error_of(wrong)["code"]) == (400, "bad_request")


def test_a_response_larger_than_max_body_still_arrives(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    # 60 KB of "é" asks for an echo of ~360 KB (JSON escapes each as \\u00e9): over the session
    # gateway's 64 KiB max_body, which limits requests, not responses.
    body = {"model": "m", "input": "é" * 30_000}
    with client(gateway, gateway.token(scopes=("openai:*",))) as c:
        r = c.post("https://api.openai.com/v1/embeddings", json=body)
    assert r.status_code == 200, r.text[:200]
    assert len(r.content) > 64 * 1024


def test_an_approval_is_bound_to_the_path(make_gateway, pki: PKI, vendor: FakeVendor, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "confirm.yaml").write_text(
        "version: 1\nsubjects: {roles: [finance]}\nrules:\n"
        "  - {connector: stripe, actions: [confirm_payment_intent], approval: 'confidence < 0.7'}\n"
    )
    gw = make_gateway(vendor_settings(pki, vendor, policies=str(policies)))
    confirm = "https://api.stripe.com/v1/payment_intents/{}/confirm"
    with client(gw, gw.token(scopes=("stripe:*",))) as c:
        small = error_of(c.post(confirm.format("pi_SMALL"), data={}))["approval_id"]
        huge = error_of(c.post(confirm.format("pi_HUGE"), data={}))["approval_id"]
        assert small != huge
        gw.cli("approvals", "approve", small)
        r = c.post(confirm.format("pi_HUGE"), data={}, headers={"X-Egress-Approval": small})
        assert error_of(r)["code"] == "approval_required"
        assert not vendor.received
        assert c.post(confirm.format("pi_SMALL"), data={}, headers={"X-Egress-Approval": small}).status_code == 200
    assert [x.path for x in vendor.received] == ["/v1/payment_intents/pi_SMALL/confirm"]


@pytest.mark.parametrize(
    ("url", "payload", "field"),
    [
        ("https://api.openai.com/v1/chat/completions",
         {"model": "m", "user": EMAIL, "messages": [{"role": "user", "content": "hi"}]}, "user"),
        ("https://api.openai.com/v1/chat/completions",
         {"model": "m", "messages": [{"role": "assistant", "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "f", "arguments": f'{{"email": "{EMAIL}"}}'}}]}]},
         "tool call arguments"),
    ],
)
def test_more_openai_fields_leave_tokenized(gateway: GatewayProcess, vendor: FakeVendor, url: str, payload: dict, field: str) -> None:
    with client(gateway, gateway.token(scopes=("openai:*",))) as c:
        assert c.post(url, json=payload).status_code == 200, field
    assert EMAIL not in vendor.received[-1].body.decode() and "tok_EMAIL_ADDRESS_" in vendor.received[-1].body.decode()


def test_serpapi_location_leaves_tokenized(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    with client(gateway, gateway.token(scopes=("serpapi:*",))) as c:
        assert c.get("https://serpapi.com/search.json", params={"q": "weather", "location": f"near {EMAIL}"}).status_code == 200
    assert "jane.doe" not in vendor.received[-1].path


def test_pii_as_a_number_or_a_name_never_leaves_raw(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    card = 4111111111111111
    content = [{"type": "text", "text": "pay with"}, {"type": "text", "text": card}]
    with client(gateway, gateway.token(scopes=("openai:*", "stripe:*"))) as c:
        r = c.post("https://api.openai.com/v1/chat/completions",
                   json={"model": "m", "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 200
        assert str(card) not in vendor.received[-1].body.decode() and "tok_CREDIT_CARD_" in vendor.received[-1].body.decode()
        sent = len(vendor.received)
        r = c.post("https://api.stripe.com/v1/customers", data={f"metadata[{EMAIL}]": "x"})
    assert (r.status_code, error_of(r)["code"]) == (400, "malformed_body")
    assert EMAIL not in r.text and len(vendor.received) == sent


@pytest.mark.parametrize("with_token", [False, True])
def test_agent_named_hosts_methods_and_api_paths_stay_out_of_the_audit_log_and_messages(
    gateway: GatewayProcess, vendor: FakeVendor, with_token: bool
) -> None:
    """Hardening issue, item 3: every agent-controlled string is redacted or validated before it is
    written: a CONNECT host (with or without a token), an HTTP method, an API path."""
    secret_host = "jane-doe-123-45-6789.example.net"
    before = len(gateway.audit())
    token = gateway.token(scopes=("stripe:*",))
    sock, resp = raw_connect(gateway, secret_host, basic(token) if with_token else None)
    sock.close()
    tls = tunnel_tls(gateway, token, "api.stripe.com")
    tls.sendall(b"JANE.DOE.EXAMPLE.COM /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
    odd_method = read_response(tls)
    tls.close()
    api = httpx.get(f"{gateway.api_url}/v1/approvals/{EMAIL}", headers={"Authorization": f"Bearer {token}"})
    answers = [resp.error(), odd_method.error(), error_of(api)]
    assert [a["code"] for a in answers] == [
        "host_denied" if with_token else "identity_missing", "unknown_action", "not_found"
    ]
    written = str(gateway.audit()[before:]) + gateway.log_file.read_text(errors="replace")
    for raw in (secret_host, "jane.doe.example.com", "JANE.DOE", EMAIL):
        assert raw.lower() not in written.lower()
        assert raw.lower() not in str(answers).lower()


def _forms(secret: str) -> list[str]:
    """What an echoed credential may look like: as is, URL-encoded, base64 of it and of `key:`."""
    import base64
    from urllib.parse import quote

    raw = secret.encode()
    return [secret, quote(secret, safe=""), base64.b64encode(raw).decode().rstrip("="),
            base64.b64encode(raw + b":").decode().rstrip("=")]


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "key", "echoes"),
    [  # echoes: where the fake says the credential back (a header and the body; the query: the body)
        ("POST", "https://api.stripe.com/v1/customers", {"data": {"description": "d"}}, "TEST_STRIPE_KEY", 2),
        ("POST", "https://api.openai.com/v1/embeddings", {"json": {"model": "text-embedding-3-small", "input": "x"}},
         "TEST_OPENAI_KEY", 2),
        ("GET", "https://serpapi.com/search.json?q=coffee&engine=google", {}, "TEST_SERPAPI_KEY", 1),
    ],
)
def test_a_vendor_echoing_its_credential_never_hands_it_to_the_agent(
    gateway: GatewayProcess, vendor: FakeVendor, method: str, url: str, kwargs: dict, key: str, echoes: int
) -> None:
    """Hardening issue, item 4: every configured secret, and its common encodings, is scrubbed from
    response headers and bodies before the agent sees them; the outcome record says so."""
    from tests.fakes import VENDOR_ENV

    vendor.echo_headers = True
    with client(gateway, gateway.token(scopes=("*",))) as c:
        r = c.request(method, url, **kwargs)
    assert r.status_code == 200
    assert vendor.received and VENDOR_ENV[key] in str(vendor.received[-1].headers) + vendor.received[-1].path
    seen = r.text + str(r.headers)
    for form in _forms(VENDOR_ENV[key]):
        assert form not in seen
    assert "secret removed by egress-gateway" in seen
    outcome = [x for x in gateway.audit() if x["decision_id"] == r.headers["x-egress-decision-id"] and x["phase"] == "outcome"]
    assert outcome[0]["secrets_scrubbed"] == echoes


def test_a_streamed_echo_of_the_credential_is_scrubbed_even_split_across_chunks(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    from tests.fakes import VENDOR_ENV

    vendor.echo_headers = True
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with client(gateway, gateway.token(scopes=("*",))) as c:
        with c.stream("POST", "https://api.openai.com/v1/chat/completions", json=body) as r:
            text = "".join(r.iter_text())
            headers = str(r.headers)
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    said = "".join(e["choices"][0]["delta"].get("content", "") for e in events if "choices" in e)
    echoed = [e["error"]["echo"] for e in events if "error" in e]
    assert said == "You said: hi" and echoed[0]["authorization"].startswith("Bearer ")  # the stream went on
    assert VENDOR_ENV["TEST_OPENAI_KEY"] not in text + headers


def test_only_declared_headers_leave_and_idempotency_keys_are_per_agent(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """Hardening issue, items 2 and 13: agent headers leave only when the connector declares them
    (values held to the vendor's pattern); method overrides, User-Agent, Referer and any X-* stay
    behind; an Idempotency-Key is namespaced per agent, so one agent cannot replay another's."""
    sneaky = {
        "User-Agent": f"agent/1.0 ({EMAIL})", "Referer": f"https://crm.example/{EMAIL}", "X-Customer": EMAIL,
        "X-HTTP-Method-Override": "DELETE", "X-Method-Override": "DELETE", "X-Stainless-OS": "Linux",
        "Stripe-Version": "2024-06-20", "Idempotency-Key": "order-4711",
    }
    keys = []
    for sub in ("alice", "alice", "bob"):
        with client(gateway, gateway.token(sub=sub, scopes=("stripe:*",))) as c:
            assert c.post("https://api.stripe.com/v1/customers", data={"description": "d"}, headers=sneaky).status_code == 200
        got = vendor.received[-1].headers
        assert EMAIL not in str(got) and "DELETE" not in str(got) and "x-stainless-os" not in got
        assert got["stripe-version"] == "2024-06-20" and got["user-agent"] == "egress-gateway"
        keys.append(got["idempotency-key"])
    assert keys[0] == keys[1] != keys[2] and "order-4711" not in keys[0]
    with client(gateway, gateway.token(scopes=("stripe:*",))) as c:
        bad = c.post("https://api.stripe.com/v1/customers", data={"description": "d"}, headers={"Stripe-Version": EMAIL})
    assert (bad.status_code, error_of(bad)["code"]) == (400, "schema_violation") and EMAIL not in bad.text


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [  # fields no connector listed as DLP fields once left raw (hardening issue, item 2)
        ("https://api.stripe.com/v1/payment_intents",
         {"data": {"amount": "100", "currency": "usd", "statement_descriptor": EMAIL[:22], "customer": EMAIL,
                   "payment_method": EMAIL, "expand[]": EMAIL}}),
        ("https://api.stripe.com/v1/payment_intents/pi_123/confirm", {"data": {"return_url": f"https://shop.example/?m={EMAIL}"}}),
        ("https://serpapi.com/search.json", {"params": {"q": "coffee", "hl": EMAIL, "gl": EMAIL, "device": EMAIL}}),
        ("https://api.openai.com/v1/chat/completions",
         {"json": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi", "name": EMAIL}],
                   "stop": [EMAIL], "response_format": {"type": "json_schema", "json_schema": {"name": EMAIL}},
                   "max_completion_tokens": 10}}),
    ],
)
def test_every_string_an_agent_sends_is_scanned_wherever_it_sits(
    gateway: GatewayProcess, vendor: FakeVendor, url: str, kwargs: dict
) -> None:
    with client(gateway, gateway.token(scopes=("*",))) as c:
        r = c.request("GET" if "params" in kwargs else "POST", url, **kwargs)
    assert r.status_code == 200, r.text
    sent = vendor.received[-1]
    out = sent.path + sent.body.decode(errors="replace")
    assert EMAIL not in out and EMAIL[:12] not in out and "tok_EMAIL_ADDRESS_" in out


def test_what_the_hostile_review_found_stays_closed(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """A hostile review of this session's changes: each side door it found, shut."""
    with client(gateway, gateway.token(scopes=("*",))) as c:
        # Content-Type parameters were a channel: the vendor gets the action's own media type.
        r = c.post("https://api.openai.com/v1/embeddings", content=b'{"model":"text-embedding-3-small","input":"x"}',
                   headers={"Content-Type": "application/json; ssn=123-45-6789", "Accept": "application/x-4111111111111111"})
        assert r.status_code == 200
        sent = vendor.received[-1].headers
        assert sent["content-type"] == "application/json" and "4111111111111111" not in str(sent)
        # A card number is an id's shape; a path id with a long digit run is refused, and not audited.
        card = c.get("https://api.stripe.com/v1/customers/4111111111111111")
        assert error_of(card)["code"] == "schema_violation"
        # NaN is not JSON: every comparison with it is false, so a policy's max would pass it.
        nan = c.post("https://api.openai.com/v1/embeddings", content=b'{"model":"m","input":"x","dimensions":NaN}',
                     headers={"Content-Type": "application/json"})
        assert (nan.status_code, error_of(nan)["code"]) == (400, "malformed_body")
        # Keys of a dict whose values are numbers are the agent's text too.
        bias = c.post("https://api.openai.com/v1/chat/completions",
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                            "max_completion_tokens": 5, "logit_bias": {EMAIL: 1}})
        assert error_of(bias)["code"] == "malformed_body" and EMAIL not in bias.text
    records = [x for x in gateway.audit() if x["decision_id"] == card.headers["x-egress-decision-id"]]
    assert records and "4111111111111111" not in str(records)
    scraper = gateway.cli("token", "issue", "--sub", "prom", "--role", "metrics", "--ttl", "1d").stdout.strip()
    run = httpx.post(f"{gateway.api_url}/v1/sandbox/run", json={"tool": "stats", "input": {}},
                     headers={"Authorization": f"Bearer {scraper}"})
    assert (run.status_code, error_of(run)["code"]) == (403, "admin_required")
