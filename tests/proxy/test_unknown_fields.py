"""A connector's unknown body fields, refused (the default) or passed and scanned (issue 12, item
7's option), through the real proxy to the fake vendor with a connector registered by the config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.clients import client, error_of
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
STRICT = "https://api.openai.com/v1/notes"
LOOSE = "https://api.openai.com/v1/loose-notes"
LOOSE_FORM = "https://api.openai.com/v1/loose-form-notes"


@pytest.fixture(scope="module")
def notes_gw(tmp_path_factory, pki: PKI, vendor_server: FakeVendor):
    settings = vendor_settings(pki, vendor_server, connectors=["tests.connectors.notes:CONNECTOR"])
    with GatewayProcess(tmp_path_factory.mktemp("notes-gw"), settings).start() as gw:
        yield gw


def token(gw: GatewayProcess) -> str:
    return gw.token(sub="note-taker", role="notes", scopes=("notes:*",))


def test_default_refuses_an_unknown_field_and_sends_nothing(notes_gw: GatewayProcess, vendor: FakeVendor) -> None:
    with client(notes_gw, token(notes_gw)) as c:
        r = c.post(STRICT, json={"title": "hello", "memo": f"write to {EMAIL}"})
    err = error_of(r)
    assert (r.status_code, err["code"], err["action"]) == (400, "schema_violation", "create_note")
    assert "memo" in err["message"] and EMAIL not in r.text
    assert vendor.received == []


def test_pass_scanned_forwards_unknown_fields_with_every_value_scanned(notes_gw: GatewayProcess, vendor: FakeVendor) -> None:
    body = {
        "title": "hello",
        "priority": 2,
        "memo": f"write to {EMAIL}",
        "nested": {"deep": [{"who": f"card {CARD}"}, "plain words"], "count": 3, "ok": True},
        "card_as_number": 4111111111111111,
        "flag": False,
        "ratio": 0.5,
        "nothing": None,
    }
    with client(notes_gw, token(notes_gw)) as c:
        r = c.post(LOOSE, json=body)
    assert r.status_code == 200, r.text
    assert len(vendor.received) == 1
    got = vendor.received[0]
    sent = got.json()
    assert (got.method, got.path) == ("POST", "/v1/loose-notes")
    assert EMAIL not in got.body.decode() and "4111" not in got.body.decode()
    assert sent["memo"].startswith("write to tok_EMAIL_ADDRESS_")
    assert sent["nested"]["deep"][0]["who"].startswith("card tok_CREDIT_CARD_")
    assert sent["card_as_number"].startswith("tok_CREDIT_CARD_")  # a number is read as text, like in any DLP field
    assert sent["nested"]["deep"][1] == "plain words"
    assert (sent["title"], sent["priority"], sent["nested"]["count"], sent["nested"]["ok"]) == ("hello", 2, 3, True)
    assert (sent["flag"], sent["ratio"], sent["nothing"]) == (False, 0.5, None)
    rec = next(x for x in notes_gw.audit() if x.get("decision_id") == r.headers["x-egress-decision-id"] and x["phase"] == "decision")
    assert rec["tokenized"] == {"EMAIL_ADDRESS": 1, "CREDIT_CARD": 2}
    assert EMAIL not in json.dumps(notes_gw.audit())


def test_pass_scanned_form_body(notes_gw: GatewayProcess, vendor: FakeVendor) -> None:
    with client(notes_gw, token(notes_gw)) as c:
        r = c.post(LOOSE_FORM, data={"title": "hello", "memo": f"to {EMAIL}", "extra[inner]": f"also {EMAIL}"})
    assert r.status_code == 200, r.text
    sent = vendor.received[-1].body.decode()
    assert EMAIL not in sent and "jane" not in sent
    assert sent.count("tok_EMAIL_ADDRESS_") == 2 and "extra%5Binner%5D=" in sent


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        # A key a case-insensitive vendor would read as a declared field goes to the model, which refuses it.
        ({"title": "t", "Receipt_Email": EMAIL}, 400, "schema_violation"),
        ({"title": "t", "ｒeceipt_email": EMAIL}, 400, "schema_violation"),
        ({"title": "t", "_path": {"id": "pi_1"}}, 400, "schema_violation"),
        ({"title": "t", EMAIL: "x"}, 400, "schema_violation"),  # a name DLP cannot address as a path
        ({"title": "t", "a.b": "x"}, 400, "schema_violation"),
        ({"title": "t", "nested": {EMAIL: 1}}, 400, "malformed_body"),  # PII as a key inside a scanned field
        ({"title": "t", "priority": "high"}, 400, "schema_violation"),  # declared fields are still validated
        ({"title": "t", "deep": json.loads("[" * 40 + "]" * 40)}, 400, "malformed_body"),
        ({"title": "t", "big": "x" * 100_001}, 413, "body_too_large"),  # dlp.max_field_chars
    ],
    ids=["case-variant", "fullwidth-variant", "reserved-path", "pii-key", "dotted-key", "pii-nested-key",
         "declared-bad", "depth", "field-size"],
)
def test_pass_scanned_still_refuses_what_it_must(notes_gw: GatewayProcess, vendor: FakeVendor, body: dict, status: int, code: str) -> None:
    with client(notes_gw, token(notes_gw)) as c:
        r = c.post(LOOSE, json=body)
    err = error_of(r)
    assert (r.status_code, err["code"]) == (status, code)
    assert "jane" not in r.text
    assert vendor.received == []


def test_a_model_that_ignores_unknown_fields_stops_start_up(tmp_path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("connectors: ['tests.connectors.lax:CONNECTOR']\n")
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "connectors", "--config", str(cfg)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2, out
    assert "LaxNote ignores unknown fields" in out.stderr and "Traceback" not in out.stderr
