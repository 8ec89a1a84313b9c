"""SIEM events (issue 16, item 2): each decision as an OCSF HTTP Activity event (class 4002) to a
file, syslog and an HTTPS endpoint (retried while it fails); built from the audit record, so an
event holds nothing the record does not; a full queue drops and counts, never holds a call."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients import chat, client
from tests.fakes import PKI, VENDOR_ENV, FakeVendor, vendor_settings
from tests.processes import GatewayProcess
from tests.telemetry.receivers import SiemServer, SyslogReceiver, wait_for

CHAT = "https://api.openai.com/v1/chat/completions"
EMAIL = "jane.doe@example.com"
# OCSF 1.3.0: the base event's required attributes, and the enumerations every class shares
REQUIRED = {"activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid"}
SEVERITY_IDS = {0, 1, 2, 3, 4, 5, 6, 99}
# Each class the gateway writes: its category, its activity_ids, and what the class (and the
# security_control profile, where applied) requires besides the base event
CLASSES: dict[int, tuple[int, set[int]]] = {
    4002: (4, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 99}),  # HTTP Activity
    2004: (2, {0, 1, 2, 3, 99}),  # Detection Finding
    3004: (3, {0, *range(1, 14), 99}),  # Entity Management
}
# What every event says of itself rather than of the call
CONSTANTS = {"HTTP Activity", "Network Activity", "Detection Finding", "Findings", "Entity Management",
             "Identity & Access Management", "Agent behaviour unlike its baseline", "1.3.0", "egress-gateway",
             "security_control", "Service", "0.1.0"}


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def _class_requirements(event: dict[str, Any]) -> None:
    """What the event's class requires beyond the base event (OCSF 1.3.0 schema)."""
    uid = event["class_uid"]
    if uid in (4002, 2004):  # the security_control profile: action_id required
        assert event["metadata"]["profiles"] == ["security_control"] and event["action_id"] in {0, 1, 2, 99}
    if uid == 4002:  # at least one of http_request/http_response, and of src_endpoint/dst_endpoint
        assert {"http_request", "http_response"} & set(event) and {"src_endpoint", "dst_endpoint"} & set(event)
    elif uid == 2004:  # finding_info, with its uid and title
        info = event["finding_info"]
        assert info["uid"] and info["title"] and all(isinstance(t, str) for t in info["types"])
    elif uid == 3004:  # entity (a managed entity: at least a name or uid)
        assert event["entity"].get("name") or event["entity"].get("uid")
        assert event["entity"].get("type_id", 2) in {1, 2, 3, 4, 5, 6}
        assert event["actor"]["user"]["name"]  # a user names itself: account, name or uid


def check_event(event: dict[str, Any], audit: list[dict[str, Any]]) -> dict[str, Any]:
    """A valid OCSF event of a class the gateway writes, whose every string is one of its audit
    record's values; returns that record."""
    assert set(event) >= REQUIRED, REQUIRED - set(event)
    category, activities = CLASSES[event["class_uid"]]
    assert event["category_uid"] == category
    assert event["activity_id"] in activities and event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert event["severity_id"] in SEVERITY_IDS and isinstance(event["time"], int)
    assert event["metadata"]["version"] and event["metadata"]["product"]["name"] and event["metadata"]["product"]["vendor_name"]
    _class_requirements(event)
    phase = event["unmapped"]["phase"]
    (rec,) = [r for r in audit if r["decision_id"] == event["metadata"]["uid"] and r.get("phase") == phase]
    assert event["time"] == int(rec["time"] * 1000)
    record_values = {str(x) for x in _leaves(rec) if x is not None}
    foreign = [v for v in _leaves(event) if isinstance(v, str) and v not in record_values | CONSTANTS]
    assert not foreign, foreign
    return rec


def exported(path: Path, **unmapped: str) -> list[dict[str, Any]]:
    """The events of an OCSF file export whose `unmapped` fields have these values."""
    events = [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
    return [e for e in events if all(e["unmapped"].get(k) == v for k, v in unmapped.items())]


def _calls(gw: GatewayProcess, sub: str) -> tuple[str, str]:
    with client(gw, gw.token(sub=sub, role="research", tenant="acme", scopes=("openai:*",))) as c:
        allowed = c.post(CHAT, json=chat(f"mail {EMAIL}"))
        refused = c.post(f"https://api.stripe.com/v1/customers?email={EMAIL}", data={"email": EMAIL})
    assert (allowed.status_code, refused.status_code) == (200, 403)
    return allowed.headers["x-egress-decision-id"], refused.headers["x-egress-decision-id"]


def _events(lines: list[bytes], ids: set[str]) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in lines]
    return [e for e in events if e["metadata"]["uid"] in ids]


def test_each_decision_reaches_file_syslog_and_a_failing_siem(observed: GatewayProcess, syslog: SyslogReceiver,
                                                              siem: SiemServer) -> None:
    siem.fail_next = 2  # the SIEM answers 503 twice: the batch is retried, not lost
    allowed, refused = _calls(observed, f"siem-{uuid.uuid4().hex[:8]}")
    ids = {allowed, refused}
    ocsf_file = Path(str(observed.root)) / "siem" / "ocsf.jsonl"
    expected = 3  # the allowed call's decision and outcome, the refusal

    def from_file() -> list[dict[str, Any]]:
        return _events(ocsf_file.read_bytes().splitlines(), ids) if ocsf_file.exists() else []

    in_file = wait_for(lambda: len(e := from_file()) == expected and e, "3 events in the file")
    over_syslog = wait_for(lambda: len(e := _events([d.partition(b" - ocsf - ")[2] for d in syslog.datagrams], ids))
                           == expected and e, "3 events over syslog")
    at_siem = wait_for(lambda: len(e := _events(siem.lines, ids)) == expected and e, "3 events at the SIEM")
    assert siem.fail_next == 0
    audit = observed.audit()
    for events in (in_file, over_syslog, at_siem):
        for event in events:
            check_event(event, audit)
        assert sorted((e["metadata"]["uid"] == refused, e["disposition_id"], e.get("status_code")) for e in events) == [
            (False, 1, None), (False, 1, None), (True, 2, "scope_denied")]
    (outcome,) = [e for e in in_file if e["unmapped"]["phase"] == "outcome"]
    assert outcome["http_response"] == {"code": 200} and outcome["activity_id"] == 6  # POST
    everything = ocsf_file.read_text() + b"".join(syslog.datagrams).decode() + b"".join(siem.lines).decode()
    assert EMAIL not in everything and not [k for k in VENDOR_ENV.values() if k in everything]


@pytest.mark.chaos_full  # a gateway of its own (~10 s); the export path itself is in the default run above
def test_a_stuck_siem_drops_and_counts_but_never_holds_a_call(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    stuck = SiemServer(pki.leaf("stuck-siem", ("localhost",)))
    stuck.gate = threading.Event()  # every POST hangs until the test ends
    try:
        gw = make_gateway(vendor_settings(pki, vendor, audit={"export": [{"to": stuck.url, "queue": 4}]}))
        calls = 10
        with client(gw, gw.token(scopes=("openai:*",))) as c:
            codes = [c.post(CHAT, json=chat("hi")).status_code for _ in range(calls)]
        assert codes == [200] * calls
        admin = {"authorization": f"Bearer {gw.token(role='admin')}"}
        metrics = httpx.get(f"{gw.api_url}/metrics", headers=admin).text
        dropped = int(next(line.split()[1] for line in metrics.splitlines()
                           if line.startswith("egress_siem_events_dropped_total ")))
        stuck.gate.set()  # the SIEM recovers: what was queued arrives, what was dropped does not
        wait_for(lambda: len(stuck.lines) + dropped == 2 * calls, "the queued events to arrive")
        assert dropped > 0 and len(stuck.lines) + dropped == 2 * calls
        assert gw.log_file.read_text().count("queue is full") == 1  # one line per burst
    finally:
        stuck.close()


@pytest.mark.parametrize("odd", ["\ud800 lone surrogate", 2**70, "müller ✓"], ids=["surrogate", "big-int", "non-ascii"])
def test_every_event_is_one_json_line_whatever_the_record_holds(odd: Any) -> None:
    """The fast encoder (orjson) refuses a lone surrogate and an int beyond 64 bits; such an event
    is written by json instead, never dropped, and each line parses back to the same event."""
    from gateway.telemetry.export import encode
    from gateway.telemetry.ocsf import events

    rec = {"phase": "decision", "decision": "allow", "decision_id": "dec_1", "time": 1.5, "method": "POST",
           "host": "api.stripe.com", "path": "/v1/x", "sub": "a", "role": "r", "tool": odd}
    (event,) = events(rec, "1.0")
    line = encode(event)
    assert b"\n" not in line and json.loads(line) == event
