"""A decision as an OCSF HTTP Activity event (class 4002, category Network Activity), for SIEMs.

Built from the audit record alone (`Call.record`, the one projection), field by field: whatever
the record does not hold, the event cannot hold, and no record field is copied wholesale. The
event follows OCSF 1.3.0: the base event's required attributes (`activity_id`, `category_uid`,
`class_uid`, `metadata` with `product` and `version`, `severity_id`, `time`, `type_uid`), at least one
of `http_request`/`http_response` and at least one of `src_endpoint`/`dst_endpoint`; the gateway's
own names (decision id, connector, action, refusal code, policy version, rules) go under `unmapped`.
"""

from __future__ import annotations

from typing import Any

OCSF_VERSION = "1.3.0"
CLASS_UID = 4002  # HTTP Activity
CATEGORY_UID = 4  # Network Activity
# HTTP Activity's activity_id by method; 99 Other
ACTIVITIES = {"CONNECT": 1, "DELETE": 2, "GET": 3, "HEAD": 4, "OPTIONS": 5, "POST": 6, "PUT": 7, "TRACE": 8, "PATCH": 9}
OTHER = 99
PHASES = ("decision", "outcome")  # the records that are HTTP activity (approvals, reveals, ... are not)
_UNMAPPED = ("decision_id", "phase", "connector", "action", "code", "policy_version", "rules", "approval_id",
             "tool", "tenant", "anomaly", "latency_ms")


def exported(rec: dict[str, Any]) -> bool:
    return rec.get("phase") in PHASES


def event(rec: dict[str, Any], product_version: str) -> dict[str, Any]:
    """The OCSF HTTP Activity event of one audit record (`exported(rec)` must hold)."""
    method = str(rec.get("method") or "")
    activity = ACTIVITIES.get(method, OTHER)
    denied = rec.get("decision") == "deny"
    evt: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "HTTP Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Network Activity",
        "activity_id": activity,
        "type_uid": CLASS_UID * 100 + activity,
        "time": int(float(rec.get("time") or 0) * 1000),
        "severity_id": 3 if denied else 1,  # Medium for a refusal, Informational otherwise
        "status_id": 2 if denied else 1,  # Failure | Success
        "action_id": 2 if denied else 1,  # Denied | Allowed (security control profile)
        "disposition_id": 2 if denied else 1,  # Blocked | Allowed
        "metadata": {
            "version": OCSF_VERSION,
            "uid": rec.get("decision_id"),
            "product": {"name": "egress-gateway", "vendor_name": "egress-gateway", "version": product_version},
            "profiles": ["security_control"],
        },
        "http_request": {"http_method": method or None, "url": {"hostname": rec.get("host"), "path": rec.get("path")}},
        "dst_endpoint": {"hostname": rec.get("host")},
        "actor": {"user": {"uid": rec.get("sub"), "type": "Service", "groups": [{"name": rec.get("role")}]}},
        "unmapped": {k: rec[k] for k in _UNMAPPED if rec.get(k) is not None},
    }
    if rec.get("code"):
        evt["status_code"] = rec["code"]
        evt["status_detail"] = rec.get("message")
    if rec.get("client"):
        evt["src_endpoint"] = {"ip": rec["client"]}
    if rec.get("upstream_status") is not None:
        evt["http_response"] = {"code": rec["upstream_status"]}
    return evt
