"""One access-log line per decision and outcome, on stderr: what an operator watches.

The line is built from the audit record, which holds names and codes only (no value, token or
key), so the log can hold nothing the audit may not. `plain` is for people; `json` (one object a
line) is for log shippers: `egress-gateway run --log-format json`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("gateway.access")
FIELDS = ("decision_id", "phase", "decision", "code", "sub", "tenant", "connector", "action",
          "method", "path", "upstream_status", "latency_ms")


def line(rec: dict[str, Any], fmt: str) -> str:
    picked = {k: rec[k] for k in FIELDS if rec.get(k) is not None}
    if fmt == "json":
        return json.dumps(picked, separators=(",", ":"), sort_keys=True)
    what = f"{picked.get('connector', '-')}.{picked.get('action', '-')}"
    extra = " ".join(f"{k}={picked[k]}" for k in ("sub", "tenant", "upstream_status", "latency_ms") if k in picked)
    return f"{picked.get('decision_id', '-')} {picked.get('phase', '-')} {picked.get('decision', '-')} " \
           f"{picked.get('code') or '-'} {what} {extra}".rstrip()


def note(rec: dict[str, Any], fmt: str) -> None:
    if rec.get("phase") in ("decision", "outcome", "suppressed"):
        log.info("%s", line(rec, fmt))
