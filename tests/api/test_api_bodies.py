"""Every JSON body the API reads, against the shapes a hostile caller sends: one strict reading
(connectors.codecs), so a body means one thing or is a clear 400, never the last of two keys."""

from __future__ import annotations

import httpx
import pytest

from tests.clients import error_of
from tests.processes import GatewayProcess

# endpoint -> (a key the endpoint reads at the top level, who calls it)
ENDPOINTS = {
    "/v1/detokenize": ("text", "agent"),
    "/v1/sandbox/run": ("tool", "agent"),
    "/v1/tools": ("manifest", "admin"),
    "/v1/connectors": ("name", "admin"),
    "/v1/quarantine": ("sub", "admin"),
    "/console/session": ("token", None),
}
HOSTILE = {
    "duplicate": '{"K": "a", "K": "b"}',
    "nan": '{"K": NaN}',
    "beyond-double": '{"K": 1e999}',
    "lone-surrogate": '{"K": "\\ud800"}',
    "long-number": '{"K": ' + "9" * 5000 + "}",
    "deep": '{"K": ' + "[" * 3000 + "]" * 3000 + "}",
}


def post(gw: GatewayProcess, path: str, body: bytes, caller: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if caller is not None:
        token = gw.token(sub="ops", role="admin", tenant="*") if caller == "admin" else gw.token()
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(gw.api_url + path, content=body, headers=headers, timeout=30)


@pytest.mark.parametrize("shape", HOSTILE, ids=HOSTILE.keys())
@pytest.mark.parametrize("path", ENDPOINTS)
def test_every_json_body_refuses_hostile_shapes_as_malformed(gateway: GatewayProcess, path: str, shape: str) -> None:
    key, caller = ENDPOINTS[path]
    r = post(gateway, path, HOSTILE[shape].replace("K", key).encode(), caller)
    assert (r.status_code, error_of(r)["code"]) == (400, "malformed_body")
    assert "set-cookie" not in r.headers
    if shape == "duplicate":  # refused as a repeat, not because "b" happens not to fit
        assert "same key twice" in error_of(r)["message"]


@pytest.mark.parametrize(
    "body",
    [
        '{"tool": "stats", "tool": "spin", "input": {"values": [1]}}',
        '{"tool": "stats", "input": {"values": [1]}, "input": {"values": [2, 3]}}',
        '{"python": "print(1)", "python": "print(2)"}',
    ],
    ids=["tool", "input", "python"],
)
def test_sandbox_run_envelope_with_a_repeated_key_is_malformed(gateway: GatewayProcess, body: str) -> None:
    """Pydantic kept the last "tool": what an agent's log or a WAF in front read as one tool ran another."""
    r = post(gateway, "/v1/sandbox/run", body.encode(), "agent")
    assert (r.status_code, error_of(r)["code"]) == (400, "malformed_body")
    assert "same key twice" in error_of(r)["message"]


def test_a_tools_input_is_read_as_before(gateway: GatewayProcess) -> None:
    """Only the envelope got strict: what a tool's input accepts is the tool's business."""
    body = b'{"tool": "stats", "input": {"values": [1, 2], "values": [3, 4, 5]}}'
    r = post(gateway, "/v1/sandbox/run", body, "agent")
    assert r.status_code == 200, r.text
    assert r.json()["output"]["count"] == 3


def test_console_sign_in_with_two_tokens_is_refused(gateway: GatewayProcess) -> None:
    """A junk token before a valid one signed in with the last; now neither is read."""
    admin = gateway.token(sub="ops", role="admin", tenant="*")
    r = post(gateway, "/console/session", f'{{"token": "junk", "token": "{admin}"}}'.encode(), None)
    assert (r.status_code, error_of(r)["code"]) == (400, "malformed_body")
    assert "set-cookie" not in r.headers
    assert post(gateway, "/console/session", f'{{"token": "{admin}"}}'.encode(), None).status_code == 200


@pytest.mark.parametrize("number", ["1e999", "-1e999"])
def test_detokenize_of_a_number_beyond_a_double_is_malformed_not_a_500(gateway: GatewayProcess, number: str) -> None:
    """It read as Infinity, restored fine, then could not be written as JSON: 500 and a traceback."""
    log_before = len(gateway.log_file.read_text())
    r = post(gateway, "/v1/detokenize", f'{{"json": {{"a": {number}}}}}'.encode(), "agent")
    assert (r.status_code, error_of(r)["code"]) == (400, "malformed_body")
    assert "API handler failed" not in gateway.log_file.read_text()[log_before:]  # logged before it answered
