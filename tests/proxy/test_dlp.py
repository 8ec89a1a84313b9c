"""Steps 7 and 10 through the real proxy: PII leaves only as tokens and comes back only to agents
whose policy reveals it; the detokenize API; the vault across a restart; nothing raw in logs."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import pytest

from tests.clients import client, error_of
from tests.fakes import FakeVendor, GatewayProcess, PKI, vendor_settings

EMAIL, PHONE, CARD = "jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111"
IBAN, SSN = "GB82 WEST 1234 5698 7654 32", "536-90-4399"
PII = (EMAIL, PHONE, CARD, IBAN, SSN)
TEXT = f"Customer {EMAIL}, phone {PHONE}, card {CARD}, IBAN {IBAN}, SSN {SSN}. Please summarise."
TOKEN = re.compile(r"tok_[A-Z_]+_[a-z2-7]{20}")
ALL = "[EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN]"
TOKEN_KINDS = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN")

POLICY = """
version: 1
subjects: {{roles: [{role}]}}
rules:
  - connector: openai
    actions: [chat_completions, embeddings, responses]
  - connector: stripe
    actions: [create_customer, create_payment_intent]
  - connector: serpapi
    actions: [search]
dlp:
  tokenize: {tokenize}
  reveal: {reveal}
"""


@pytest.fixture(scope="module")
def dlp_gw(tmp_path_factory, pki: PKI, vendor_server: FakeVendor):
    from tests.conftest import EXTRA_ENV
    from tests.fakes import VENDOR_ENV

    root = tmp_path_factory.mktemp("dlp-gw")
    policies = root / "policies"
    policies.mkdir()
    for role, reveal in (("assistant", ALL), ("observer", "[]"), ("emailonly", "[EMAIL_ADDRESS]")):
        (policies / f"{role}.yaml").write_text(POLICY.format(role=role, tokenize=ALL, reveal=reveal))
    gw = GatewayProcess(root, vendor_settings(pki, vendor_server, policies=str(policies)), {**VENDOR_ENV, **EXTRA_ENV}).start()
    yield gw
    gw.stop()


def agent(gw: GatewayProcess, role: str, sub: str | None = None) -> str:
    return gw.token(sub=sub or f"{role}-1", role=role, tenant="acme", scopes=("*",))


def chat(content: str, **extra: object) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def assert_no_raw_pii(text: str) -> None:
    for value in PII:
        assert value not in text, "a raw PII value leaked"


def test_json_body_leaves_with_tokens_only(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    with client(dlp_gw, agent(dlp_gw, "observer")) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", json=chat(TEXT))
    assert r.status_code == 200, r.text
    sent = vendor.received[-1].body.decode()
    assert_no_raw_pii(sent)
    kinds = {t.split("_", 1)[1].rsplit("_", 1)[0] for t in TOKEN.findall(sent)}
    assert kinds == {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN"}
    assert int(vendor.received[-1].headers["content-length"]) == len(vendor.received[-1].body)
    assert "Please summarise." in sent
    # An agent without reveal gets the vendor's answer with the tokens left in place.
    echoed = r.json()["echo"]
    assert_no_raw_pii(echoed)
    assert len(TOKEN.findall(echoed)) == 5


def test_form_and_query_bodies_leave_with_tokens_only(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    with client(dlp_gw, agent(dlp_gw, "observer")) as c:
        r = c.post("https://api.stripe.com/v1/customers",
                   data={"email": EMAIL, "phone": PHONE, "description": f"card {CARD}", "metadata[ssn]": SSN})
        assert r.status_code == 200, r.text
        form = vendor.received[-1].body.decode()
        q = c.get("https://serpapi.com/search.json", params={"q": f"who is {EMAIL}", "num": "5"})
        assert q.status_code == 200, q.text
    path = vendor.received[-1].path
    for sent in (form, path):
        assert_no_raw_pii(httpx.QueryParams(sent.split("?", 1)[-1]).__str__())
        assert "tok_" in sent
    assert "num=5" in path and "api_key=" in path


def test_same_value_same_token_within_a_scope_and_different_across(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    tokens = []
    for sub in ("observer-a", "observer-a", "observer-b"):
        with client(dlp_gw, agent(dlp_gw, "observer", sub)) as c:
            c.post("https://api.openai.com/v1/embeddings", json={"model": "m", "input": f"mail {EMAIL}"})
        tokens.append(TOKEN.findall(vendor.received[-1].body.decode())[0])
    assert tokens[0] == tokens[1] != tokens[2]


def test_revealing_agent_gets_values_back_in_json(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    with client(dlp_gw, agent(dlp_gw, "assistant")) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", json=chat(TEXT))
    assert_no_raw_pii(vendor.received[-1].body.decode())
    echoed = json.loads(r.json()["echo"])["messages"][0]["content"]
    assert echoed == TEXT
    rec = next(x for x in dlp_gw.audit() if x.get("decision_id") == r.headers["x-egress-decision-id"] and x["phase"] == "outcome")
    assert rec["revealed"] == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "IBAN_CODE": 1, "PHONE_NUMBER": 1, "US_SSN": 1}


def test_reveal_is_per_entity_type(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    with client(dlp_gw, agent(dlp_gw, "emailonly")) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", json=chat(TEXT))
    echoed = json.loads(r.json()["echo"])["messages"][0]["content"]
    assert EMAIL in echoed
    for value in (PHONE, CARD, IBAN, SSN):
        assert value not in echoed
    assert len(TOKEN.findall(echoed)) == 4


def _stream(gw: GatewayProcess, role: str, content: str, vendor: FakeVendor) -> tuple[str, int]:
    with client(gw, agent(gw, role)) as c, c.stream("POST", "https://api.openai.com/v1/chat/completions", json=chat(content, stream=True)) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events), len(events)


def test_sse_stream_restores_tokens_split_across_events(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    text, events = _stream(dlp_gw, "assistant", f"mail {EMAIL} or call {PHONE}", vendor)
    sent = vendor.received[-1].json()["messages"][0]["content"]
    assert_no_raw_pii(sent)
    assert events > 10  # the vendor streamed 7-character pieces: every token was split
    assert text == f"You said: mail {EMAIL} or call {PHONE}"


def test_sse_stream_keeps_tokens_for_an_agent_without_reveal(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    text, _ = _stream(dlp_gw, "observer", f"mail {EMAIL}", vendor)
    assert EMAIL not in text and len(TOKEN.findall(text)) == 1


def test_sse_first_event_arrives_before_the_vendor_finishes(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    vendor.stream_gate = gate = threading.Event()
    try:
        with client(dlp_gw, agent(dlp_gw, "assistant")) as c, c.stream(
            "POST", "https://api.openai.com/v1/chat/completions", json=chat(f"mail {EMAIL}", stream=True)
        ) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            # The vendor is still waiting on the gate: this event cannot have been buffered whole.
            assert not gate.is_set()
            gate.set()
            rest = [line for line in lines if line.startswith("data: {")]
        said = json.loads(first[6:])["choices"][0]["delta"]["content"]
        said += "".join(json.loads(x[6:])["choices"][0]["delta"].get("content", "") for x in rest)
        assert said == f"You said: mail {EMAIL}"
    finally:
        gate.set()


def test_detokenize_api(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    owner = agent(dlp_gw, "assistant", "api-owner")
    with client(dlp_gw, owner) as c:
        c.post("https://api.openai.com/v1/embeddings", json={"model": "m", "input": TEXT})
    tokenized = vendor.received[-1].json()["input"]
    url = f"{dlp_gw.api_url}/v1/detokenize"
    mine = httpx.post(url, json={"text": tokenized}, headers={"Authorization": f"Bearer {owner}"})
    assert mine.status_code == 200 and mine.json() == {"text": TEXT}
    as_json = httpx.post(url, json={"json": {"note": tokenized, "n": 1}}, headers={"Authorization": f"Bearer {owner}"})
    assert as_json.json() == {"json": {"note": TEXT, "n": 1}}
    # Another agent, even one allowed to reveal everything, cannot restore the owner's tokens.
    thief = agent(dlp_gw, "assistant", "api-thief")
    stolen = httpx.post(url, json={"text": tokenized}, headers={"Authorization": f"Bearer {thief}"})
    assert stolen.status_code == 200 and stolen.json()["text"] == tokenized
    assert stolen.json()["withheld"] == {"unknown": dict.fromkeys(sorted(TOKEN_KINDS), 1)}
    # The owner's own tokens of a type its policy does not reveal stay tokens.
    narrow = agent(dlp_gw, "emailonly", "api-owner")
    partial = httpx.post(url, json={"text": tokenized}, headers={"Authorization": f"Bearer {narrow}"}).json()["text"]
    assert EMAIL in partial and PHONE not in partial
    reveals = [x for x in dlp_gw.audit() if x.get("phase") == "reveal" and x["sub"] == "api-owner"]
    assert reveals and reveals[0]["revealed"]["EMAIL_ADDRESS"] == 1
    assert_no_raw_pii(json.dumps(reveals))


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b'{"text": "x"}', {}, 401, "identity_missing"),
        (b'{"text": "x"}', {"Authorization": "Bearer nope"}, 401, "identity_invalid"),
        (b"not json", None, 400, "malformed_body"),
        (b'{"text": 5}', None, 400, "malformed_body"),
        (b'{"text": "a", "json": 1}', None, 400, "malformed_body"),
        (b"[]", None, 400, "malformed_body"),
    ],
)
def test_detokenize_api_refusals(dlp_gw: GatewayProcess, body: bytes, headers: dict | None, status: int, code: str) -> None:
    headers = headers if headers is not None else {"Authorization": f"Bearer {agent(dlp_gw, 'assistant')}"}
    r = httpx.post(f"{dlp_gw.api_url}/v1/detokenize", content=body, headers=headers)
    assert (r.status_code, error_of(r)["code"]) == (status, code)


def test_vault_survives_a_restart(make_gateway, pki: PKI, vendor: FakeVendor, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text(POLICY.format(role="assistant", tokenize=ALL, reveal=ALL))
    settings = vendor_settings(pki, vendor, policies=str(policies))
    gw = make_gateway(settings, name="restart")
    token = agent(gw, "assistant")
    with client(gw, token) as c:
        c.post("https://api.openai.com/v1/embeddings", json={"model": "m", "input": TEXT})
    tokenized = vendor.received[-1].json()["input"]
    gw.stop()
    gw.start()
    r = httpx.post(f"{gw.api_url}/v1/detokenize", json={"text": tokenized}, headers={"Authorization": f"Bearer {token}"})
    assert r.json() == {"text": TEXT}
    vault = (gw.state_dir / "vault.sqlite3").read_bytes()
    for value in PII:
        assert value.encode() not in vault


def test_no_raw_pii_in_audit_log_or_gateway_log(dlp_gw: GatewayProcess, vendor: FakeVendor) -> None:
    with client(dlp_gw, agent(dlp_gw, "assistant")) as c:
        c.post("https://api.openai.com/v1/chat/completions", json=chat(TEXT))
        c.post("https://api.openai.com/v1/chat/completions", json={"model": 5, "messages": [{"role": "user", "content": TEXT}]})
    written = dlp_gw.audit_file.read_text() + dlp_gw.log_file.read_text()
    admin = {"Authorization": f"Bearer {dlp_gw.token(sub='ops', role='admin')}"}
    written += httpx.get(f"{dlp_gw.api_url}/metrics", headers=admin).text
    written += httpx.get(f"{dlp_gw.api_url}/v1/decisions", headers=admin).text
    assert_no_raw_pii(written)
