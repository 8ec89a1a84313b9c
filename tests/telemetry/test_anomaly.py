"""Behaviour baselines (issue 16, item 3): an agent observed for a short period, then scored; an
agent that calls a new connector at 20x its rate is quarantined by a rule and its open stream is
cut; a first-seen action is held for approval through the ordinary approval flow; baselines are
shown, ratified and reset from the CLI and the API; a hostile agent cannot grow its baseline."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.clients import chat, client
from tests.fakes import PKI, VENDOR_ENV, FakeVendor, vendor_settings
from tests.processes import GatewayProcess
from tests.telemetry.receivers import wait_for
from tests.telemetry.test_ocsf import check_event, exported

CHAT = "https://api.openai.com/v1/chat/completions"
EMBEDDINGS = "https://api.openai.com/v1/embeddings"
BALANCE = "https://api.stripe.com/v1/balance"
OBSERVE = 3.0
ANOMALY = {
    "observe_for": f"{OBSERVE}s",
    "window": "2s",
    "max_items": 8,
    "rules": [
        {"when": "new_connector", "then": "record"},
        {"when": "new_action_or_host", "then": "approval"},
        {"rate_above_baseline": "10x", "then": "quarantine"},
    ],
}


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("watched")
    settings = vendor_settings(pki, vendor_server, anomaly=ANOMALY,
                               audit={"export": [{"kind": "ocsf", "to": f"file:{root / 'siem' / 'ocsf.jsonl'}"}]})
    with GatewayProcess(root, settings).start() as gw:
        yield gw


def _siem(gw: GatewayProcess, later: str, **unmapped: str) -> list[dict[str, Any]]:
    """The OCSF file export's events with these `unmapped` fields, each checked against its audit
    record, once the event of `later` (a decision made after them) is written: one thread writes
    the file in order, so every earlier record's events are in it by then."""
    siem_file = gw.root / "siem" / "ocsf.jsonl"
    wait_for(lambda: exported(siem_file, decision_id=later), "a later decision's event")
    events, audit = exported(siem_file, **unmapped), gw.audit()
    for event in events:
        check_event(event, audit)
    text = json.dumps(events)
    assert not [secret for secret in VENDOR_ENV.values() if secret in text] and "Bearer" not in text
    return events


def _admin(gw: GatewayProcess) -> dict[str, str]:
    return {"authorization": f"Bearer {gw.token(role='admin')}"}


def _baseline(gw: GatewayProcess, sub: str) -> dict[str, Any]:
    r = httpx.get(f"{gw.api_url}/v1/agents/{sub}/baseline", headers=_admin(gw))
    assert r.status_code == 200, r.text
    return r.json()


def _observe(gw: GatewayProcess, c: httpx.Client, sub: str, url: str, body: dict[str, Any], calls: int) -> None:
    """`calls` calls during the observation period, then wait for it to end."""
    assert [c.post(url, json=body).status_code for _ in range(calls)] == [200] * calls
    wait_for(lambda: not _baseline(gw, sub)["observing"], "the observation period to end", OBSERVE * 4)


def test_a_new_connector_at_20x_the_rate_is_quarantined_and_its_stream_cut(watched: GatewayProcess,
                                                                           vendor: FakeVendor) -> None:
    sub = f"drifter-{uuid.uuid4().hex[:8]}"
    token = watched.token(sub=sub, role="research", scopes=("openai:*", "stripe:*"))
    with client(watched, token) as c:
        _observe(watched, c, sub, CHAT, chat("hi", stream=True), 2)  # baseline: 2 calls in 3 s
    shown = json.loads(watched.cli("baseline", "show", sub).stdout)
    assert (shown["connectors"], shown["actions"], shown["observing"]) == (["openai"], ["openai:chat_completions"], False)

    # A long stream on its usual connector, open while it drifts.
    vendor.stream_interval = 0.05
    stream: dict[str, Any] = {"events": 0, "done": False}
    opened = threading.Event()

    def listen() -> None:
        body = chat("x" * 7 * 400, stream=True)
        with client(watched, token) as s, s.stream("POST", CHAT, json=body) as r:
            stream["decision_id"], stream["status"] = r.headers["x-egress-decision-id"], r.status_code
            try:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        stream["events"] += 1
                        stream["done"] = line == "data: [DONE]"
                        opened.set()
            except httpx.HTTPError:
                pass  # cut: what the test expects
        opened.set()

    listener = threading.Thread(target=listen)
    listener.start()
    assert opened.wait(30) and stream["status"] == 200 and stream["events"] > 0 and not stream["done"]
    # Then a connector it never used, at about 20x its baseline rate (0.67/s): 30 calls as fast as it can.
    codes: list[str] = []
    with client(watched, token) as c:
        for _ in range(30):
            r = c.get(BALANCE)
            codes.append(r.json()["error"]["code"] if r.status_code != 200 else "ok")
            time.sleep(0.05)
    listener.join(60)
    held = codes.index("quarantined")
    assert held > 0 and codes[:held] == ["approval_required"] * held and codes[held:] == ["quarantined"] * (30 - held)
    assert not stream["done"]
    audit = watched.audit()
    (quarantine,) = [r for r in audit if r.get("phase") == "quarantine" and r.get("value") == sub]
    assert (quarantine["decision"], quarantine["scope"], quarantine["by"]) == ("quarantine", "sub", "anomaly")
    assert quarantine["reason"] == "anomaly: new_action_or_host, new_connector, rate_above_baseline"
    (cut,) = wait_for(lambda: [r for r in watched.audit() if r["decision_id"] == stream["decision_id"] and r.get("phase") == "outcome"],
                      "the stream's outcome record")
    assert cut["code"] == "quarantined", cut
    assert (cut["phase"], cut["decision"]) == ("outcome", "deny")
    flagged = [r["anomaly"] for r in audit if r.get("sub") == sub and r.get("connector") == "stripe" and "anomaly" in r]
    assert flagged == [["new_action_or_host", "new_connector"]] * held + [
        ["new_action_or_host", "new_connector", "rate_above_baseline"]]
    # The console's view: the agent, quarantined, with its signals.
    agents = httpx.get(f"{watched.api_url}/v1/agents", headers=_admin(watched)).json()["agents"]
    (seen,) = [a for a in agents if a["agent"] == f"/{sub}"]
    assert seen["quarantined"] and seen["anomaly_score"] >= 2 and seen["signals"]["rate_above_baseline"] > 10
    # The SIEM: the quarantine once (Entity Management, Suspend, by the rule), and a Detection
    # Finding beside each flagged call's HTTP Activity: held for approval (Delayed), then quarantined.
    last = [r for r in audit if r.get("sub") == sub and r.get("phase") == "decision"][-1]["decision_id"]
    (stopped,) = _siem(watched, last, phase="quarantine", value=sub)
    assert (stopped["class_uid"], stopped["activity_id"], stopped["actor"]["user"]["name"]) == (3004, 12, "anomaly")
    assert stopped["entity"] == {"type": "sub", "type_id": 2, "name": sub} and stopped["comment"] == quarantine["reason"]
    findings = [e for e in _siem(watched, last, phase="decision", connector="stripe") if e["class_uid"] == 2004
                and e["actor"]["user"]["uid"] == sub]
    assert [(f["finding_info"]["types"], f["disposition_id"], f["severity_id"]) for f in findings] == [
        (["new_action_or_host", "new_connector"], 14, 3)] * held + [
        (["new_action_or_host", "new_connector", "rate_above_baseline"], 3, 4)]
    assert [f["finding_info"]["title"] for f in findings] == ["Agent behaviour unlike its baseline"] * (held + 1)
    watched.cli("quarantine", "--sub", sub, "--release", "--reason", "test over")


def test_a_first_seen_action_waits_for_approval_then_ratify_and_reset(watched: GatewayProcess) -> None:
    sub = f"learner-{uuid.uuid4().hex[:8]}"
    admin = _admin(watched)
    with client(watched, watched.token(sub=sub, role="research", scopes=("openai:*",))) as c:
        _observe(watched, c, sub, EMBEDDINGS, {"model": "text-embedding-3-small", "input": "hi"}, 1)
        r = c.post(CHAT, json=chat("hi"))  # an action it never used
        assert r.status_code == 403 and r.json()["error"]["code"] == "approval_required"
        approval_id = r.json()["error"]["approval_id"]
        approved = httpx.post(f"{watched.api_url}/v1/approvals/{approval_id}/approve", headers=admin)
        assert approved.status_code == 200
        assert c.post(CHAT, json=chat("hi"), headers={"x-egress-approval": approval_id}).status_code == 200
        assert c.post(CHAT, json=chat("hi")).json()["error"]["code"] == "approval_required"  # still not normal
        novel = _baseline(watched, sub)["novel"]
        assert novel[0] == "actions:openai:chat_completions" and [n.rpartition(":")[0] for n in novel[1:]] == [
            "shapes:openai:chat_completions"]  # the action, and its parameters' shape (hashed names)
        # Ratified from the CLI: what it did since is normal now.
        watched.cli("baseline", "ratify", sub)
        # Waited for through the API: polling with calls would itself be a rate far above the baseline.
        wait_for(lambda: not _baseline(watched, sub)["novel"], "the ratification to apply", 10)
        assert c.post(CHAT, json=chat("hi")).status_code == 200
        assert _baseline(watched, sub)["actions"] == ["openai:chat_completions", "openai:embeddings"]
        # Reset from the API: observed again from its next call, so nothing is unusual.
        reset = httpx.post(f"{watched.api_url}/v1/agents/{sub}/baseline/reset", headers=admin)
        assert reset.json() == {"agent": f"/{sub}", "reset": True}
        assert c.post(CHAT, json={**chat("hi"), "temperature": 0.5}).status_code == 200  # a new shape: learned
        assert _baseline(watched, sub)["observing"] and _baseline(watched, sub)["actions"] == ["openai:chat_completions"]
        # Reset from the CLI too; then a call, whose event comes after every change's.
        watched.cli("baseline", "reset", sub)
        wait_for(lambda: exported(watched.root / "siem" / "ocsf.jsonl", phase="baseline", agent=f"/{sub}", by="cli",
                                  decision="reset"), "the CLI's reset to be applied and exported")
        later = c.post(CHAT, json=chat("hi")).headers["x-egress-decision-id"]
    # Each change once, as Entity Management of the agent's baseline: Update (ratify), Delete (reset).
    changes = _siem(watched, later, phase="baseline", agent=f"/{sub}")
    assert [(e["activity_id"], e["entity"], e["actor"]["user"]["name"].partition(":")[0]) for e in changes] == [
        (3, {"type": "baseline", "name": f"/{sub}"}, "cli"), (4, {"type": "baseline", "name": f"/{sub}"}, "api"),
        (4, {"type": "baseline", "name": f"/{sub}"}, "cli")]
    missing = httpx.post(f"{watched.api_url}/v1/agents/nobody/baseline/ratify", headers=admin)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")


def test_a_hostile_agent_cannot_grow_its_baseline(watched: GatewayProcess) -> None:
    """20 parameter shapes invented while observed: learning stops at max_items (8)."""
    sub = f"inventor-{uuid.uuid4().hex[:8]}"
    optional = {"temperature": 0.5, "top_p": 0.5, "n": 1, "seed": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0}
    shapes = list(itertools.combinations(optional, 3))
    assert len(shapes) == 20
    with client(watched, watched.token(sub=sub, role="research", scopes=("openai:*",))) as c:
        codes = [c.post(CHAT, json={**chat("hi"), **{k: optional[k] for k in shape}}).status_code for shape in shapes]
    assert codes == [200] * 20
    assert _baseline(watched, sub)["shapes"] == 8
