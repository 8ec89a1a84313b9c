"""Quarantine and the kill switch (issue 16, item 4): an agent, a tenant, a connector or the whole
gateway stopped from the CLI or the API, inside already open tunnels, and released on purpose;
both audited with their reason and exported to the SIEM once. (An anomaly rule's quarantine, and the stream it cuts, are in
test_anomaly.py.)"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.clients import chat, client
from tests.fakes import VENDOR_ENV
from tests.processes import GatewayProcess
from tests.telemetry.receivers import wait_for
from tests.telemetry.test_ocsf import check_event, exported

CHAT = "https://api.openai.com/v1/chat/completions"
BALANCE = "https://api.stripe.com/v1/balance"


def _code(c: httpx.Client, url: str) -> str:
    r = c.post(url, json=chat("hi")) if url == CHAT else c.get(url)
    return "ok" if r.status_code == 200 else r.json()["error"]["code"]


def _switch(gw: GatewayProcess, via: str, scope: str, value: str, reason: str, release: bool = False) -> None:
    if via == "cli":
        flag = ["--all"] if scope == "all" else [f"--{scope}", value]
        gw.cli("quarantine", *flag, *(["--release"] if release else []), "--reason", reason)
        return
    body = {scope: True if scope == "all" else value, "reason": reason, "release": release}
    r = httpx.post(f"{gw.api_url}/v1/quarantine", json=body, headers={"authorization": f"Bearer {gw.token(role='admin')}"})
    assert r.status_code == 200, r.text
    assert (r.json()["scope"], r.json()["released"]) == (scope, release)


# Each scope through one door in the default run, and through the other under `make chaos`.
FULL = pytest.mark.chaos_full
SWITCHES = [
    ("sub", "cli"), ("tenant", "api"), ("connector", "cli"), ("all", "api"),
    pytest.param("sub", "api", marks=FULL), pytest.param("tenant", "cli", marks=FULL),
    pytest.param("connector", "api", marks=FULL), pytest.param("all", "cli", marks=FULL),
]


@pytest.mark.parametrize(("scope", "via"), SWITCHES)
def test_the_kill_switch_stops_and_releases_each_scope(observed: GatewayProcess, scope: str, via: str) -> None:
    run = uuid.uuid4().hex[:8]
    target_sub, target_tenant = f"target-{run}", f"tenant-{run}"
    value = {"sub": target_sub, "tenant": target_tenant, "connector": "openai", "all": "*"}[scope]
    target = client(observed, observed.token(sub=target_sub, role="research", tenant=target_tenant, scopes=("*",)))
    bystander = client(observed, observed.token(sub=f"bystander-{run}", role="research", tenant=f"other-{run}", scopes=("*",)))
    with target, bystander:
        assert [_code(target, CHAT), _code(bystander, CHAT)] == ["ok", "ok"]  # tunnels open before the switch
        _switch(observed, via, scope, value, f"incident {run}")
        wait_for(lambda: _code(target, CHAT) == "quarantined", "the quarantine to reach the open tunnel", 10)
        expected = {  # (target on openai, target on stripe, bystander on openai)
            "sub": ["quarantined", "quarantined", "ok"],
            "tenant": ["quarantined", "quarantined", "ok"],
            "connector": ["quarantined", "ok", "quarantined"],
            "all": ["quarantined", "quarantined", "quarantined"],
        }[scope]
        assert [_code(target, CHAT), _code(target, BALANCE), _code(bystander, CHAT)] == expected
        # The API stays usable for an operator (who must be able to release), even under `all`.
        admin = {"authorization": f"Bearer {observed.token(role='admin')}"}
        listed = httpx.get(f"{observed.api_url}/v1/quarantine", headers=admin).json()["quarantines"]
        assert [(q["scope"], q["value"]) for q in listed] == [(scope, value)]
        _switch(observed, via, scope, value, f"resolved {run}", release=True)
        wait_for(lambda: _code(target, CHAT) == "ok", "the release to reach the open tunnel", 10)
        assert [_code(target, BALANCE), _code(bystander, CHAT)] == ["ok", "ok"]
    audited = [r for r in observed.audit() if r.get("phase") == "quarantine" and r["reason"].endswith(run)]
    assert [(r["decision"], r["scope"], r["value"], r["reason"], r["by"].split(":")[0]) for r in audited] == [
        ("quarantine", scope, value, f"incident {run}", via),
        ("release", scope, value, f"resolved {run}", via),
    ]
    refused = [r for r in observed.audit() if r.get("code") == "quarantined" and r.get("sub") == target_sub]
    assert refused and all(r["decision"] == "deny" for r in refused)
    (*_, last) = [r for r in observed.audit() if r.get("sub") == target_sub and r.get("phase") == "decision"]
    _exported_once(observed, audited, last["decision_id"])  # the target's last call: after the release


def _exported_once(gw: GatewayProcess, changes: list[dict[str, Any]], later: str) -> None:
    """Each change is in the gateway's OCSF file export exactly once, as Entity Management (Suspend,
    then Resume), with nothing its audit record does not hold. `later`: a decision made after both,
    whose event, once written, means every earlier record's is (one thread writes the file in order)."""
    siem_file = gw.root / "siem" / "ocsf.jsonl"
    wait_for(lambda: exported(siem_file, decision_id=later), "a later decision's event")
    events = [e for e in exported(siem_file, phase="quarantine") if e["metadata"]["uid"] in {c["decision_id"] for c in changes}]
    audit = gw.audit()
    assert [check_event(e, audit)["decision_id"] for e in events] == [c["decision_id"] for c in changes]
    assert [(e["class_uid"], e["activity_id"], e["type_uid"]) for e in events] == [(3004, 12, 300412), (3004, 13, 300413)]
    for event, change in zip(events, changes, strict=True):
        assert event["entity"]["name"] == change["value"] and event["entity"]["type"] == change["scope"]
        assert (event["comment"], event["actor"]["user"]["name"]) == (change["reason"], change["by"])
    text = json.dumps(events)
    assert not [secret for secret in VENDOR_ENV.values() if secret in text] and "Bearer" not in text


def test_a_tenant_admin_stops_only_its_own_tenant(observed: GatewayProcess) -> None:
    acme = {"authorization": f"Bearer {observed.token(sub='acme-admin', role='admin', tenant='acme')}"}
    url = f"{observed.api_url}/v1/quarantine"
    for body in ({"sub": "someone", "reason": "x"}, {"connector": "openai", "reason": "x"}, {"all": True, "reason": "x"},
                 {"tenant": "globex", "reason": "x"}):
        r = httpx.post(url, json=body, headers=acme)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "admin_required"), body
    for body in ({"reason": "no scope"}, {"sub": "a", "tenant": "b", "reason": "two"}, {"tenant": "acme", "reason": ""},
                 {"tenant": "acme", "reason": "x" * 501}, {"tenant": "acme", "reason": "x", "extra": 1}):
        r = httpx.post(url, json=body, headers=acme)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "schema_violation"), body
    agent = {"authorization": f"Bearer {observed.token(sub='not-an-admin', tenant='acme')}"}
    r = httpx.post(url, json={"tenant": "acme", "reason": "x"}, headers=agent)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "admin_required")
    assert httpx.get(url, headers=acme).json() == {"quarantines": []}  # nothing was switched on


@pytest.mark.parametrize(
    "body", [b'{"tenant": "acme", ', b"not json", b"[1]", b'{"tenant": "acme", "tenant": "globex", "reason": "x"}'],
    ids=["truncated", "text", "array", "duplicate-key"],
)
def test_a_quarantine_body_that_is_not_a_json_object_is_malformed_body(observed: GatewayProcess, body: bytes) -> None:
    """Was `schema_violation`, where every other endpoint answers an undecodable body `malformed_body`;
    a duplicate key was read as its last value."""
    acme = {"authorization": f"Bearer {observed.token(sub='acme-admin', role='admin', tenant='acme')}",
            "content-type": "application/json"}
    r = httpx.post(f"{observed.api_url}/v1/quarantine", content=body, headers=acme)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_body")
    assert httpx.get(f"{observed.api_url}/v1/quarantine", headers=acme).json() == {"quarantines": []}


@pytest.mark.parametrize(
    "body",
    [{"all": "yes", "reason": "x"}, {"all": 1, "reason": "x"}, {"all": "true", "reason": "x"},
     {"tenant": "acme", "release": "true", "reason": "x"}, {"tenant": "acme", "release": 1, "reason": "x"}],
)
def test_a_quarantine_takes_only_json_booleans(observed: GatewayProcess, body: dict[str, Any]) -> None:
    """Pydantic's lax mode read `"all": "yes"` as true: a string (or a 1) stopped the whole gateway.
    A tenant admin sends these, so a regression is a 403 here, never a gateway actually stopped."""
    acme = {"authorization": f"Bearer {observed.token(sub='acme-admin', role='admin', tenant='acme')}"}
    r = httpx.post(f"{observed.api_url}/v1/quarantine", json=body, headers=acme)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "schema_violation")
    assert httpx.get(f"{observed.api_url}/v1/quarantine", headers=acme).json() == {"quarantines": []}


def test_the_cli_refuses_a_quarantine_without_a_reason_or_scope(observed: GatewayProcess) -> None:
    assert observed.cli("quarantine", "--sub", "x", check=False).returncode == 2
    failed = observed.cli("quarantine", "--sub", "x", "--reason", " ", check=False)
    assert failed.returncode == 2 and "reason" in failed.stderr
