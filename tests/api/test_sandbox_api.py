"""`POST /v1/sandbox/run` through the real gateway: tools' only way out is the gateway's pipeline."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from gateway.identity.revocation import Revocations
from gateway.state import StateDir
from sandbox import builtin_tools_dir
from tests.clients import client, error_of
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, seed_python_guest


@pytest.fixture(scope="module")
def tools_gw(tmp_path_factory, pki: PKI, vendor_server: FakeVendor, python_guest_cache: Path | None):
    root = tmp_path_factory.mktemp("tools-gw")
    tools = root / "tools"
    shutil.copytree(builtin_tools_dir(), tools, ignore=shutil.ignore_patterns("*.c", "*.h", "build.sh", "include"))
    # A copy of `stats` whose manifest names another module hash: it must never compile.
    shutil.copytree(tools / "stats", tools / "tampered")
    manifest = yaml.safe_load((tools / "tampered" / "manifest.yaml").read_text())
    manifest.update(name="tampered", sha256="0" * 64)
    (tools / "tampered" / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    settings = vendor_settings(pki, vendor_server, sandbox={"tools": str(tools), "python": {"allowed": ["stripe:retrieve_balance"]}})
    gw = GatewayProcess(root, settings)
    seed_python_guest(python_guest_cache, gw)
    with gw.start():
        yield gw


def run(gw: GatewayProcess, token: str, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{gw.api_url}/v1/sandbox/run", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)


# Ad-hoc Python needs `sandbox:python`; this gateway loads no policies, so the scope alone decides.
SNIPPETS = ("stripe:*", "sandbox:python")


def finance(gw: GatewayProcess, scopes: tuple[str, ...] = ("stripe:*",)) -> str:
    return gw.token(sub="tool-user", role="finance", scopes=scopes)


def test_tool_host_call_goes_through_the_gateway_and_is_audited_with_the_tool(tools_gw: GatewayProcess, vendor: FakeVendor) -> None:
    r = run(tools_gw, finance(tools_gw), {"tool": "currency_convert", "input": {"to": "eur", "rates": {"usd": 0.5}}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"] == {"currency": "eur", "available": 7500, "pending": 200, "unconverted": 1, "status": 200}
    assert body["host_calls"] == 1 and body["fuel_used"] > 0 and body["duration_ms"] > 0
    got = vendor.received[-1]
    assert (got.method, got.path) == ("GET", "/v1/balance")
    assert got.headers["authorization"].startswith("Bearer sk_test_")  # the gateway's key, injected
    host_call = [x for x in tools_gw.audit() if x.get("tool") == "currency_convert" and x.get("phase") == "outcome"]
    assert host_call and host_call[-1]["sub"] == "tool-user" and host_call[-1]["action"] == "retrieve_balance"
    run_rec = next(x for x in tools_gw.audit() if x.get("decision_id") == r.headers["x-egress-decision-id"])
    assert run_rec["phase"] == "sandbox" and run_rec["action"] == "currency_convert"


def test_callers_scopes_still_bound_the_tool(tools_gw: GatewayProcess, vendor: FakeVendor) -> None:
    r = run(tools_gw, finance(tools_gw, scopes=("stripe:create_payment_intent",)), {"tool": "currency_convert", "input": {"to": "eur"}})
    assert r.status_code == 200
    assert r.json()["output"] == {"status": 403, "error": "scope_denied"}
    assert not vendor.received


def test_manifest_ceiling_refuses_what_the_agent_itself_may_call(tools_gw: GatewayProcess, vendor: FakeVendor) -> None:
    # The agent may call anything on Stripe; the tool's manifest allows only retrieve_balance.
    r = run(tools_gw, finance(tools_gw, scopes=("*",)), {"tool": "fetch_any", "input": {"method": "POST", "url": "https://api.stripe.com/v1/refunds"}})
    assert r.status_code == 200
    assert r.json()["output"]["status"] == 403 and r.json()["output"]["error"] == "sandbox_forbidden"
    assert not vendor.received


def test_role_that_may_not_run_the_tool(tools_gw: GatewayProcess) -> None:
    r = run(tools_gw, tools_gw.token(role="research", scopes=("*",)), {"tool": "currency_convert", "input": {}})
    assert (r.status_code, error_of(r)["code"]) == (403, "sandbox_forbidden")


@pytest.mark.parametrize(
    ("tool", "status", "code"),
    [
        ("spin", None, ("sandbox_fuel_exhausted", "sandbox_timeout")),
        ("memory_bomb", 422, ("sandbox_memory_limit",)),
        ("output_flood", 502, ("sandbox_bad_output",)),
        ("tampered", 403, ("sandbox_hash_mismatch",)),
        ("no_such_tool", 404, ("sandbox_unknown_tool",)),
    ],
)
def test_limits_and_attestation_refuse_with_their_codes(tools_gw: GatewayProcess, tool: str, status: int | None, code: tuple[str, ...]) -> None:
    r = run(tools_gw, finance(tools_gw), {"tool": tool, "input": {}})
    err = error_of(r)
    assert err["code"] in code, err
    if status is not None:
        assert r.status_code == status


def test_a_spinning_tool_does_not_stall_proxied_calls(tools_gw: GatewayProcess, vendor: FakeVendor) -> None:
    done = threading.Event()
    result: dict[str, httpx.Response] = {}

    def spin() -> None:
        result["spin"] = run(tools_gw, finance(tools_gw), {"tool": "spin", "input": {}})
        done.set()

    threading.Thread(target=spin).start()
    with client(tools_gw, tools_gw.token(role="finance", scopes=("stripe:*",))) as c:
        served = 0
        while not done.is_set() and served < 200:
            assert c.get("https://api.stripe.com/v1/balance").status_code == 200
            served += 1
    done.wait(30)
    assert served >= 1 and error_of(result["spin"])["code"] in ("sandbox_fuel_exhausted", "sandbox_timeout")


def test_twenty_concurrent_runs(tools_gw: GatewayProcess) -> None:
    token = finance(tools_gw)
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda i: run(tools_gw, token, {"tool": "stats", "input": {"values": [i, i + 1, i + 2]}}), range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert len({str(r.json()["output"]) for r in responses}) == 20


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"input": {}}, "malformed_body"),
        ({"tool": "stats", "python": "print(1)"}, "malformed_body"),
        ({"tool": "stats", "input": [1]}, "malformed_body"),
        ({"tool": "stats", "extra": 1}, "malformed_body"),
    ],
)
def test_bad_run_requests(tools_gw: GatewayProcess, body: dict, code: str) -> None:
    r = run(tools_gw, finance(tools_gw), body)
    assert (r.status_code, error_of(r)["code"]) == (400, code)


def test_python_snippet_runs_and_its_http_goes_through_the_gateway(tools_gw: GatewayProcess, vendor: FakeVendor) -> None:
    pytest.importorskip("python_guest", reason="the python-guest extra is not installed")
    code = (
        "print(INPUT['x'] * 2)\n"
        "r = call_tool('http_request', method='GET', url='https://api.stripe.com/v1/balance')\n"
        "print(r['status'])\n"
    )
    r = run(tools_gw, finance(tools_gw, scopes=SNIPPETS), {"python": code, "input": {"x": 21}}, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    assert out["exit_code"] == 0 and out["stdout"].split() == ["42", "200"], out
    assert vendor.received[-1].path == "/v1/balance"
    assert any(x.get("tool") == "python" and x.get("phase") == "outcome" for x in tools_gw.audit())


RUN_CASES = [
    ("stats", {"values": [1, 2, 3]}, "finance", None),
    ("stats", {"values": "CANARY-not-a-list"}, "finance", "sandbox_trap"),
    ("spin", {}, "finance", ("sandbox_fuel_exhausted", "sandbox_timeout")),
    ("memory_bomb", {}, "finance", "sandbox_memory_limit"),
    ("output_flood", {}, "finance", "sandbox_bad_output"),
    ("tampered", {}, "finance", "sandbox_hash_mismatch"),
    ("CANARY-no-such-tool@example.com", {}, "finance", "sandbox_unknown_tool"),
    ("currency_convert", {"to": "CANARY-eur"}, "research", "sandbox_forbidden"),
]


@pytest.mark.parametrize(("tool", "tool_input", "role", "code"), RUN_CASES)
def test_every_run_is_one_audited_decision_without_its_values(
    tools_gw: GatewayProcess, tool: str, tool_input: dict, role: str, code: str | tuple[str, ...] | None
) -> None:
    token = tools_gw.token(sub="audited-runner", role=role, tenant="acme", scopes=("stripe:*",))
    r = run(tools_gw, token, {"tool": tool, "input": {**tool_input, "note": "CANARY-input"}})
    decision_id = r.headers["x-egress-decision-id"]
    assert decision_id.startswith("dec_") and len(decision_id) > 20
    records = [x for x in tools_gw.audit() if x.get("decision_id") == decision_id]
    assert len(records) == 1, records
    rec = records[0]
    named = "?" if code == "sandbox_unknown_tool" else tool  # an unregistered name is the agent's own string
    assert (rec["tool"], rec["sub"], rec["tenant"], rec["action"]) == (named, "audited-runner", "acme", named)
    assert isinstance(rec["fuel_used"], int) and rec["fuel_used"] >= 0
    assert "CANARY" not in str(rec)
    if code is None:
        assert r.status_code == 200 and rec["code"] is None and rec["decision"] == "allow"
        assert rec["fuel_used"] == r.json()["fuel_used"] > 0
        return
    err = error_of(r)
    assert err["code"] in ((code,) if isinstance(code, str) else code)
    assert (err["decision_id"], rec["code"], rec["decision"]) == (decision_id, err["code"], "deny")
    ran = err["code"] in ("sandbox_trap", "sandbox_fuel_exhausted", "sandbox_timeout", "sandbox_memory_limit", "sandbox_bad_output")
    assert (rec["fuel_used"] > 0) == ran and rec["fuel_used"] == err.get("fuel_used", 0)


def test_a_host_call_refused_inside_a_run_carries_the_runs_decision_id(tools_gw: GatewayProcess, vendor: FakeVendor) -> None:
    code = (
        "r = call_tool('http_request', method='POST', url='https://api.stripe.com/v1/refunds')\n"
        "print(__import__('json').loads(r['body'])['error']['decision_id'])\n"
    )
    pytest.importorskip("python_guest", reason="the python-guest extra is not installed")
    r = run(tools_gw, finance(tools_gw, scopes=("*",)), {"python": code}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["output"]["stdout"].strip() == r.headers["x-egress-decision-id"]
    assert not vendor.received


@pytest.mark.parametrize("by", ["jti", "sub"])
def test_revoking_the_caller_stops_its_running_tools_host_calls(tools_gw: GatewayProcess, vendor: FakeVendor, by: str) -> None:
    """The tool's host-call token is minted by the gateway with its own jti; revoking the caller's
    token (or its subject) while the tool runs must refuse the tool's next host call."""
    pytest.importorskip("python_guest", reason="the python-guest extra is not installed")
    sub = f"revoked-by-{by}"
    token = finance(tools_gw, SNIPPETS) if by == "jti" else tools_gw.token(sub=sub, role="finance", scopes=SNIPPETS)
    code = (
        "import json\n"
        "seen = []\n"
        "for _ in range(2):\n"
        "    r = call_tool('http_request', method='GET', url='https://api.stripe.com/v1/balance')\n"
        "    seen.append([r['status'], json.loads(r['body']).get('error', {}).get('code')])\n"
        "print(json.dumps(seen))\n"
    )
    vendor.delay = 2.0  # the first host call is at the vendor while the caller is revoked (polled every 0.25 s)
    outcome: dict[str, httpx.Response] = {}
    runner = threading.Thread(target=lambda: outcome.update(r=run(tools_gw, token, {"python": code}, timeout=120)))
    runner.start()
    deadline = time.monotonic() + 60
    while not vendor.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert vendor.received, "the tool's first host call never reached the vendor"
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    Revocations(StateDir.open(tools_gw.state_dir).revocations).revoke(**({"jti": jti} if by == "jti" else {"sub": sub}))
    runner.join(60)
    r = outcome["r"]
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["output"]["stdout"]) == [[200, None], [407, "identity_revoked"]]
    assert len(vendor.received) == 1


def test_a_vendor_echoing_its_credential_does_not_hand_it_to_the_snippet(tools_gw: GatewayProcess, vendor: FakeVendor) -> None:
    """The snippet prints the whole answer its host call got; the vendor says back every header."""
    pytest.importorskip("python_guest", reason="the python-guest extra is not installed")
    vendor.echo_headers = True
    code = "r = call_tool('http_request', method='GET', url='https://api.stripe.com/v1/balance')\nprint(r)\n"
    r = run(tools_gw, finance(tools_gw, scopes=SNIPPETS), {"python": code, "input": {}}, timeout=120)
    assert r.status_code == 200, r.text
    assert vendor.received[-1].headers["authorization"].startswith("Bearer sk_test_")
    stdout = r.json()["output"]["stdout"]
    assert "/v1/balance" in stdout  # the echo itself did reach the snippet
    assert "sk_test_" not in stdout and "Bearer ey" not in stdout
