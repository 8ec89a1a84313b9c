"""DLP quality through the real proxy: what reaches the vendor raw, on the gateway's defaults and
under per-type policy actions (issue 11 items 1-4, issue 10 item 1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.clients import client, error_of
from tests.dlp.corpus import non_ascii_addresses
from tests.dlp.user_corpus import corpus, evasions
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

TOKEN = re.compile(r"tok_[A-Z_]+_[a-z2-7]{20}")
CHAT = "https://api.openai.com/v1/chat/completions"
EMAIL, CARD, SSN = "jane.doe@example.com", "5555 5555 5555 4444", "536-90-4399"

POLICY = """
version: 1
subjects: {{roles: [{role}]}}
rules:
  - connector: openai
    actions: [chat_completions, embeddings]
dlp:
{dlp}
"""
STRICT = """  block: [CREDIT_CARD]
  mask: [US_SSN]
  tokenize: [EMAIL_ADDRESS, PHONE_NUMBER, IBAN_CODE, PERSON]
  allow: [URL]
  reveal: [EMAIL_ADDRESS]"""


@pytest.fixture(scope="module")
def strict_gw(tmp_path_factory, pki: PKI, vendor_server: FakeVendor):

    root = tmp_path_factory.mktemp("dlp-strict")
    policies = root / "policies"
    policies.mkdir()
    (policies / "strict.yaml").write_text(POLICY.format(role="strict", dlp=STRICT))
    gw = GatewayProcess(root, vendor_settings(pki, vendor_server, policies=str(policies))).start()
    yield gw
    gw.stop()


def chat(*contents: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": c} for c in contents]}


def send(gw: GatewayProcess, body: dict, role: str = "assistant", sub: str = "dlp-q-1") -> httpx.Response:
    with client(gw, gw.token(sub=sub, role=role, tenant="acme", scopes=("*",))) as c:
        return c.post(CHAT, json=body)


@pytest.mark.parametrize("kind", ["plain", "disguised"])
def test_generated_pii_never_reaches_the_vendor_raw_on_defaults(gateway: GatewayProcess, vendor: FakeVendor, kind: str) -> None:
    """Names, every card network, phones, SSNs, IBANs and e-mails, plain and disguised, seeded."""
    samples = corpus(31, n_pii=60, n_clean=0)[0] if kind == "plain" else evasions(32, n=60)
    for start in range(0, len(samples), 20):
        batch = samples[start : start + 20]
        r = send(gateway, chat(*(s.text for s in batch)))
        assert r.status_code == 200, r.text
        sent = [m["content"] for m in vendor.received[-1].json()["messages"]]
        for sample, out in zip(batch, sent, strict=True):
            for g in sample.gold:
                raw = sample.text[g.start : g.end]
                assert raw not in out, f"a {g.entity_type} reached the vendor raw"
            assert TOKEN.search(out)


def test_business_text_reaches_the_vendor_untouched(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    clean = corpus(33, n_pii=0, n_clean=40)[1]
    r = send(gateway, chat(*(s.text for s in clean)))
    assert r.status_code == 200, r.text
    sent = [m["content"] for m in vendor.received[-1].json()["messages"]]
    changed = [i for i, (s, out) in enumerate(zip(clean, sent, strict=True)) if s.text != out]
    assert len(changed) <= 1, changed  # the goal is >= 0.98 untouched


def test_token_look_alikes_do_not_hide_pii(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """Only a token the vault holds for the caller counts as one; a made-up or foreign one is text."""
    fake = "tok_EMAIL_ADDRESS_" + "a" * 20
    assert send(gateway, chat(f"mail {EMAIL}"), sub="owner").status_code == 200
    real = TOKEN.findall(vendor.received[-1].json()["messages"][0]["content"])[0]
    for sub, glued in (("owner", fake + EMAIL), ("owner", f"{fake} {EMAIL}"), ("thief", real + EMAIL), ("owner", real + EMAIL)):
        r = send(gateway, chat(f"note {glued} end"), sub=sub)
        assert r.status_code == 200, r.text
        out = vendor.received[-1].json()["messages"][0]["content"]
        assert EMAIL not in out, (sub, glued[:20])
    # The owner's real token, resent, is left as it is (not tokenized again).
    send(gateway, chat(f"as before: {real}."), sub="owner")
    assert vendor.received[-1].json()["messages"][0]["content"] == f"as before: {real}."


def test_blocked_type_refuses_the_call_naming_type_and_field(strict_gw: GatewayProcess, vendor: FakeVendor) -> None:
    r = send(strict_gw, chat("hello", f"charge {CARD} now"), role="strict")
    err = error_of(r)
    assert (r.status_code, err["code"]) == (403, "pii_blocked")
    assert err["entity_type"] == "CREDIT_CARD" and err["field"] == "messages[1].content"
    assert vendor.received == []
    written = json.dumps(err) + strict_gw.audit_file.read_text() + strict_gw.log_file.read_text()
    assert CARD not in written and CARD.replace(" ", "") not in written
    assert any(x["decision_id"] == err["decision_id"] and x["code"] == "pii_blocked" for x in strict_gw.audit())


def test_masked_type_leaves_irreversibly_and_others_by_their_action(strict_gw: GatewayProcess, vendor: FakeVendor) -> None:
    r = send(strict_gw, chat(f"SSN {SSN}, mail {EMAIL}, see https://example.com/a"), role="strict")
    assert r.status_code == 200, r.text
    out = vendor.received[-1].json()["messages"][0]["content"]
    assert SSN not in out and "****4399" in out
    assert EMAIL not in out and TOKEN.search(out)
    assert "https://example.com/a" in out
    # The mask is not a token: the detokenize API has nothing to restore it from.
    token = strict_gw.token(sub="dlp-q-1", role="strict", tenant="acme", scopes=("*",))
    back = httpx.post(f"{strict_gw.api_url}/v1/detokenize", json={"text": out}, headers={"Authorization": f"Bearer {token}"})
    assert SSN not in back.json()["text"] and EMAIL in back.json()["text"]


@pytest.mark.parametrize(
    "dlp",
    ["  tokenize: [EMAIL_ADRESS]", "  reveal: [PERSONS]", "  block: [CREDITCARD]", "  tokenize: [US_SSN]\n  mask: [US_SSN]"],
)
def test_policy_typos_in_dlp_fail_the_check(strict_gw: GatewayProcess, tmp_path: Path, dlp: str) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "p.yaml").write_text(POLICY.format(role="x", dlp=dlp))
    out = strict_gw.cli("policy", "check", str(broken), check=False)
    assert out.returncode != 0, out.stdout
    assert "p.yaml" in out.stdout + out.stderr


def test_vault_stats_cli_shows_entries_and_age_never_values(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    assert send(gateway, chat(f"stats for {EMAIL}"), sub="stats-agent").status_code == 200
    out = gateway.cli("vault", "stats")
    stats = json.loads(out.stdout)
    assert stats["entries"] >= 1 and stats["oldest_age_s"] >= 0
    assert stats["retention_s"] == 86_400 and stats["purge_every_s"] == 600
    assert EMAIL not in out.stdout + out.stderr and "tok_" not in out.stdout


def test_conversation_sent_back_is_scanned_in_every_free_text_field(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """Tool-call arguments (JSON in a JSON string), names, metadata and stop leave as tokens."""
    args = json.dumps({"to": EMAIL, "card": CARD})
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": "send it", "name": "Jane Doe"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "send_mail", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "c1", "content": f"sent to {EMAIL}"},
        ],
        "metadata": {"customer": EMAIL},
        "stop": [SSN],
    }
    r = send(gateway, body)
    assert r.status_code == 200, r.text
    sent = vendor.received[-1].body.decode()
    for raw in (EMAIL, CARD, SSN, "Jane Doe"):
        assert raw not in sent, raw
    out = json.loads(vendor.received[-1].json()["messages"][1]["tool_calls"][0]["function"]["arguments"])
    assert set(out) == {"to", "card"} and all(TOKEN.fullmatch(v) for v in out.values())


def test_non_ascii_addresses_never_reach_the_vendor_raw(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """Look-alike and internationalized e-mail addresses, generated, leave whole as tokens: none of
    their characters reach the vendor, the audit record or the log."""
    addresses = non_ascii_addresses(11, 30)
    r = send(gateway, chat(*(f"mail {a} today" for a in addresses)), sub="dlp-idn")
    assert r.status_code == 200, r.text
    sent = [m["content"] for m in vendor.received[-1].json()["messages"]]
    assert [re.sub(r"tok_EMAIL_ADDRESS_[a-z2-7]{20}", "T", s) for s in sent] == ["mail T today"] * len(addresses)
    written = gateway.audit_file.read_text() + gateway.log_file.read_text()
    assert [a for a in addresses if a in written or json.dumps(a)[1:-1] in written] == []
