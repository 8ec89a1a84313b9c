"""Ad-hoc Python snippets run only for agents a policy grants them to (issue 12, item 8), through
the real API of a gateway with policies: `sandbox: {python_snippets: true}` on a file whose subjects
select roles, `false` forbidding, shadow mode recording would-deny; registered tools unchanged."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.clients import error_of
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, seed_python_guest

CODE = "print(sum(INPUT['values']))"
POLICIES = {
    "analyst.yaml": "version: 1\nsubjects: {roles: [analyst]}\nsandbox: {python_snippets: true}\n",
    # A guardrail naming one agent: it forbids what the role's file grants (deny-overrides).
    "banned.yaml": "version: 1\nsubjects: {sub: [analyst-banned]}\nsandbox: {python_snippets: false}\n",
    # A role on trial: everything it does is in shadow mode, so the missing grant is only recorded.
    "trial.yaml": "version: 1\nsubjects: {roles: [trial]}\nmode: shadow\n"
                  "rules:\n  - {connector: stripe, actions: [retrieve_balance]}\n",
}


@pytest.fixture(scope="module")
def grants_gw(tmp_path_factory, pki: PKI, vendor_server: FakeVendor, python_guest_cache: Path | None):
    root = tmp_path_factory.mktemp("snippet-grants")
    policies = root / "policies"
    shutil.copytree(REPO / "policies", policies)
    for name, text in POLICIES.items():
        (policies / name).write_text(text)
    gw = GatewayProcess(root, vendor_settings(pki, vendor_server, policies=str(policies)))
    seed_python_guest(python_guest_cache, gw)
    with gw.start():
        yield gw


def run(gw: GatewayProcess, sub: str, role: str, body: dict, scopes: tuple[str, ...] = ("sandbox:python", "stripe:*")) -> httpx.Response:
    token = gw.token(sub=sub, role=role, tenant="acme", scopes=scopes)
    return httpx.post(f"{gw.api_url}/v1/sandbox/run", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def record(gw: GatewayProcess, r: httpx.Response) -> dict:
    found = [x for x in gw.audit() if x.get("decision_id") == r.headers["x-egress-decision-id"]]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    ("sub", "role", "scopes", "code", "says"),
    [
        ("finance-1", "finance", ("sandbox:python", "stripe:*"), "policy_denied", "no policy grants ad-hoc Python snippets"),
        ("nobody-1", "unknown-role", ("*",), "policy_denied", "no policy grants ad-hoc Python snippets"),
        ("analyst-banned", "analyst", ("sandbox:python",), "policy_denied", "forbidden for agent 'analyst-banned'"),
        ("analyst-2", "analyst", ("stripe:*",), "scope_denied", "sandbox:python"),  # the scope is the ceiling
    ],
    ids=["role-without-grant", "no-policy-applies", "forbidden-by-guardrail", "scope-missing"],
)
def test_a_snippet_without_a_grant_is_refused_and_audited(
    grants_gw: GatewayProcess, sub: str, role: str, scopes: tuple[str, ...], code: str, says: str
) -> None:
    r = run(grants_gw, sub, role, {"python": f"# CANARY {CODE}\n" + CODE, "input": {"values": [1, 2]}}, scopes)
    err = error_of(r)
    assert (r.status_code, err["code"], err["connector"], err["action"]) == (403, code, "sandbox", "python")
    assert says in err["message"]
    rec = record(grants_gw, r)
    assert (rec["decision"], rec["code"], rec["sub"], rec["tool"], rec["fuel_used"]) == ("deny", code, sub, "python", 0)
    assert "CANARY" not in str(rec)
    if code == "policy_denied":
        assert len(rec["policy_version"]) >= 12


def test_a_granted_role_runs_snippets_and_a_shadow_role_is_recorded(grants_gw: GatewayProcess) -> None:
    pytest.importorskip("python_guest", reason="the python-guest extra is not installed")
    granted = run(grants_gw, "analyst-1", "analyst", {"python": CODE, "input": {"values": [1, 2, 39]}})
    assert granted.status_code == 200, granted.text
    assert granted.json()["output"]["stdout"].strip() == "42"
    rec = record(grants_gw, granted)
    assert (rec["decision"], rec["code"], rec["would_deny"]) == ("allow", None, [])
    shadowed = run(grants_gw, "trial-1", "trial", {"python": CODE, "input": {"values": [40, 2]}})
    assert shadowed.status_code == 200, shadowed.text
    assert shadowed.json()["output"]["stdout"].strip() == "42"
    would = record(grants_gw, shadowed)["would_deny"]
    assert [w["code"] for w in would] == ["policy_denied"] and "trial-1" in would[0]["message"]


def test_registered_tools_need_no_grant(grants_gw: GatewayProcess) -> None:
    r = run(grants_gw, "finance-2", "finance", {"tool": "stats", "input": {"values": [1, 2, 3]}}, ("stripe:*",))
    assert r.status_code == 200, r.text
    assert record(grants_gw, r)["decision"] == "allow"


@pytest.mark.parametrize(
    ("sandbox", "reason"),
    [("{python_snippets: 'yes'}", "sandbox.python_snippets: Input should be a valid boolean"),
     ("{python: true}", "sandbox.python: unknown field 'python'")],
)
def test_policy_check_names_a_bad_grant_by_file_and_line(tmp_path: Path, sandbox: str, reason: str) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(f"version: 1\nsubjects: {{roles: [analyst]}}\n\nsandbox: {sandbox}\n")
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "policy", "check", str(policy)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 1, out
    assert f"{policy}:4: {reason}" in out.stdout + out.stderr
