"""What an operator sees (issue 12, item 6): one access-log line per decision on stderr, plain or
JSON, holding names and codes only; a busy port is one line naming the setting, no traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid

import jwt
import pytest

from gateway.identity.tokens import AUDIENCE, ISSUER, load_or_create_key
from tests.clients import client
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, free_port

EMAIL = "jane.doe@example.com"


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_every_decision_has_one_access_line(make_gateway, pki: PKI, vendor: FakeVendor, fmt: str) -> None:
    gw: GatewayProcess = make_gateway(vendor_settings(pki, vendor, log_format=fmt), name=f"access-{fmt}")
    with client(gw, gw.token(sub="watched", scopes=("stripe:*",))) as c:
        ok = c.post("https://api.stripe.com/v1/customers", data={"description": f"mail {EMAIL}"})
        refused = c.get("https://api.stripe.com/v1/nothing")
    gw.stop()
    log = gw.log_file.read_text()
    for r, decision in ((ok, "allow"), (refused, "deny")):
        lines = [ln for ln in log.splitlines() if r.headers["x-egress-decision-id"] in ln and "gateway.access" in ln]
        phases = {"allow": {"decision", "outcome"}, "deny": {"decision"}}[decision]
        assert len(lines) == len(phases), lines
        if fmt == "json":
            records = [json.loads(ln[ln.index("{"):]) for ln in lines]
            assert {rec["phase"] for rec in records} == phases and {rec["decision"] for rec in records} == {decision}
            assert all(rec["sub"] == "watched" for rec in records)
        else:
            assert all(f" {decision} " in ln and "sub=watched" in ln for ln in lines)
    assert EMAIL not in log and "jane" not in log


def test_a_busy_port_is_one_line_naming_the_setting(tmp_path) -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", "--state-dir", str(tmp_path / "state"),
             "--listen", f"127.0.0.1:{port}", "--api-listen", f"127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
    assert out.returncode == 2
    assert out.stderr.strip() == f"egress-gateway: listen 127.0.0.1:{port}: Address already in use"


FORGED = "2026-01-01 00:00:00,000 INFO gateway.access: dec_forged decision allow - stripe.create_payment_intent sub=ops"


def _signed(gw: GatewayProcess, sub: str, tenant: str) -> str:
    """A token the gateway's key signed, with names `token issue` now refuses: one issued before that
    check, or by another tool holding the key, verifies all the same."""
    key = load_or_create_key(gw.state_dir / "signing-key.pem")
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "tenant": tenant, "role": "finance", "scopes": ["stripe:*"],
              "iat": now, "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})


def test_no_string_in_a_token_can_forge_or_colour_a_log_line(make_gateway, pki: PKI, vendor: FakeVendor) -> None:  # type: ignore[no-untyped-def]
    """A token's sub and tenant were written into the plain access line as they were: a newline in
    one forged a whole line, an ANSI escape coloured the operator's terminal, U+2028 and U+202E
    (a line separator, a right-to-left override) broke or reversed it. Every character that is not
    printable is now escaped in every log line, whatever string carried it."""
    gw: GatewayProcess = make_gateway(vendor_settings(pki, vendor), name="forger")
    hostile = {"\n": "\\n", "\r": "\\r", "\x1b": "\\x1b", "\x00": "\\x00", "\x7f": "\\x7f", "\x85": "\\x85",
               "\u2028": "\\u2028", "\u202e": "\\u202e"}
    for char in hostile:
        token = _signed(gw, sub=f"agent{char}{FORGED}", tenant=f"t{char}x")
        with client(gw, token) as c:
            assert c.get("https://api.stripe.com/v1/balance").status_code == 200
    gw.stop()
    log = gw.log_file.read_text()
    assert not [ln for ln in log.splitlines() if ln.startswith(FORGED[:20])]
    assert not (set(hostile) - {"\n"}) & set(log)  # a newline only ends lines
    for escaped in hostile.values():
        assert log.count(f"sub=agent{escaped}{FORGED} tenant=t{escaped}x") == 2  # the decision and the outcome
