"""Audit records as OCSF 1.3.0 events, for SIEMs: which class each record is, and its fields.

Built from the audit record alone (`Call.record` and the runtime's quarantine and baseline records),
field by field: whatever the record does not hold, the event cannot hold, and no record field is
copied wholesale. Every event has the base event's required attributes (`activity_id`,
`category_uid`, `class_uid`, `metadata` with `product` and `version`, `severity_id`, `time`,
`type_uid`) and its class's; the gateway's own names go under `unmapped`.

    record                             OCSF class (class_uid)            activity
    decision, outcome                  HTTP Activity (4002)              by method (CONNECT 1 ... PATCH 9, 99)
    decision with `anomaly` (a rule    + Detection Finding (2004)        Create (1)
      held: record, approval, quarantine)
    quarantine (any scope, any door)   Entity Management (3004)          Suspend (12), release: Resume (13)
    baseline (reset, ratify)           Entity Management (3004)          reset: Delete (4), ratify: Update (3)

Why these: a decision is an HTTP request the gateway allowed or blocked (4002, with the security
control profile's `action_id` and `disposition_id`); an anomaly rule that held is a detection made
by the gateway's own analytic (2004: `finding_info` with the conditions as its `types`); a
quarantine stops an agent, a tenant, a connector or everything, not only a user account, so it is
the suspension and resumption of a managed entity (3004: `entity` with the scope as its `type` and
`type_id` User for a sub, Organization for a tenant) rather than Account Change (3001), whose
`user` cannot name a connector; a baseline is the gateway's managed record of an agent, deleted by
a reset and updated by a ratify.
"""

from __future__ import annotations

from typing import Any

OCSF_VERSION = "1.3.0"
HTTP_ACTIVITY, NETWORK = 4002, 4
DETECTION_FINDING, FINDINGS = 2004, 2
ENTITY_MANAGEMENT, IAM = 3004, 3
# HTTP Activity's activity_id by method; 99 Other
ACTIVITIES = {"CONNECT": 1, "DELETE": 2, "GET": 3, "HEAD": 4, "OPTIONS": 5, "POST": 6, "PUT": 7, "TRACE": 8, "PATCH": 9}
OTHER = 99
ENTITY_ACTIVITIES = {"quarantine": 12, "release": 13, "reset": 4, "ratify": 3}  # Suspend, Resume, Delete, Update
ENTITY_TYPE_IDS = {"sub": 2, "tenant": 4}  # managed_entity.type_id: User, Organization
PHASES = ("decision", "outcome", "quarantine", "baseline")  # what is exported (approvals, reveals, ... are not)
FINDING_TITLE = "Agent behaviour unlike its baseline"
# A finding's severity and disposition by the decision's code: Quarantined, Delayed (held for a
# person), Blocked (refused by a later step); otherwise the call went on (Allowed).
_FINDING = {"quarantined": (4, 3), "approval_required": (3, 14)}
_UNMAPPED = ("decision_id", "phase", "connector", "action", "code", "policy_version", "rules", "approval_id",
             "tool", "tenant", "anomaly", "latency_ms")
_CHANGE_UNMAPPED = ("decision_id", "phase", "decision", "scope", "value", "agent", "by")


def exported(rec: dict[str, Any]) -> bool:
    return rec.get("phase") in PHASES


def events(rec: dict[str, Any], product_version: str) -> list[dict[str, Any]]:
    """The OCSF events of one audit record (`exported(rec)` must hold): one, or two for a decision
    an anomaly rule held (its HTTP Activity and the finding)."""
    phase = rec.get("phase")
    if phase in ("quarantine", "baseline"):
        return [entity_change(rec, product_version)]
    found = [http_activity(rec, product_version)]
    if phase == "decision" and rec.get("anomaly"):
        found.append(detection_finding(rec, product_version))
    return found


def _base(rec: dict[str, Any], class_uid: int, class_name: str, category_uid: int, category_name: str, activity: int,
          severity: int, product_version: str) -> dict[str, Any]:
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity,
        "type_uid": class_uid * 100 + activity,
        "time": int(float(rec.get("time") or 0) * 1000),
        "severity_id": severity,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": rec.get("decision_id"),
            "product": {"name": "egress-gateway", "vendor_name": "egress-gateway", "version": product_version},
        },
    }


def _agent(rec: dict[str, Any]) -> dict[str, Any]:
    return {"user": {"uid": rec.get("sub"), "type": "Service", "groups": [{"name": rec.get("role")}]}}


def http_activity(rec: dict[str, Any], product_version: str) -> dict[str, Any]:
    """A decision or outcome record as HTTP Activity: `disposition_id` 1 allowed, 2 blocked;
    `status_code` the refusal code; `http_response.code` the vendor's status."""
    method = str(rec.get("method") or "")
    activity = ACTIVITIES.get(method, OTHER)
    denied = rec.get("decision") == "deny"
    evt = _base(rec, HTTP_ACTIVITY, "HTTP Activity", NETWORK, "Network Activity", activity, 3 if denied else 1,
                product_version)
    evt["metadata"]["profiles"] = ["security_control"]
    evt.update({
        "status_id": 2 if denied else 1,  # Failure | Success
        "action_id": 2 if denied else 1,  # Denied | Allowed (security control profile)
        "disposition_id": 2 if denied else 1,  # Blocked | Allowed
        "http_request": {"http_method": method or None, "url": {"hostname": rec.get("host"), "path": rec.get("path")}},
        "dst_endpoint": {"hostname": rec.get("host")},
        "actor": _agent(rec),
        "unmapped": {k: rec[k] for k in _UNMAPPED if rec.get(k) is not None},
    })
    if rec.get("code"):
        evt["status_code"] = rec["code"]
        evt["status_detail"] = rec.get("message")
    if rec.get("client"):
        evt["src_endpoint"] = {"ip": rec["client"]}
    if rec.get("upstream_status") is not None:
        evt["http_response"] = {"code": rec["upstream_status"]}
    return evt


def detection_finding(rec: dict[str, Any], product_version: str) -> dict[str, Any]:
    """The finding of a decision an anomaly rule held: which conditions (`finding_info.types`), and
    what the gateway did (severity and disposition by the decision's code)."""
    denied = rec.get("decision") == "deny"
    severity, disposition = _FINDING.get(str(rec.get("code")), (2, 2) if denied else (2, 1))
    evt = _base(rec, DETECTION_FINDING, "Detection Finding", FINDINGS, "Findings", 1, severity, product_version)
    evt["metadata"]["profiles"] = ["security_control"]
    evt.update({
        "finding_info": {"uid": rec.get("decision_id"), "title": FINDING_TITLE, "types": list(rec["anomaly"])},
        "action_id": 2 if denied else 1,  # Denied | Allowed (security control profile)
        "disposition_id": disposition,
        "actor": _agent(rec),
        "evidences": [{"dst_endpoint": {"hostname": rec.get("host")}}],
        "unmapped": {k: rec[k] for k in _UNMAPPED if rec.get(k) is not None},
    })
    if rec.get("code"):
        evt["status_code"] = rec["code"]
    return evt


def entity_change(rec: dict[str, Any], product_version: str) -> dict[str, Any]:
    """A quarantine or release (the entity: the scope and its value) or a baseline reset or ratify
    (the entity: the agent's baseline), by whom (`actor.user.name`: cli, api:ADMIN, anomaly) and why
    (`comment`: the reason given, a quarantine's only)."""
    verb = str(rec.get("decision"))
    quarantine = rec.get("phase") == "quarantine"
    if quarantine:
        scope = str(rec.get("scope"))
        entity: dict[str, Any] = {"type": scope, "name": rec.get("value")}
        if scope in ENTITY_TYPE_IDS:
            entity["type_id"] = ENTITY_TYPE_IDS[scope]
        severity = 4 if verb == "quarantine" else 1  # High | Informational
    else:
        entity = {"type": rec.get("phase"), "name": rec.get("agent")}
        severity = 2  # Low: an operator's change of what counts as normal
    evt = _base(rec, ENTITY_MANAGEMENT, "Entity Management", IAM, "Identity & Access Management",
                ENTITY_ACTIVITIES.get(verb, OTHER), severity, product_version)
    evt.update({
        "status_id": 1,  # Success: the change is made
        "entity": entity,
        "actor": {"user": {"name": rec.get("by")}},
        "unmapped": {k: rec[k] for k in _CHANGE_UNMAPPED if rec.get(k) is not None},
    })
    if rec.get("reason"):
        evt["comment"] = rec["reason"]
    return evt
