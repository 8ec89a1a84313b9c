"""What is known about one call, and its one projection into the audit record.

Every surface (the proxy, the API, sandbox runs, and MCP) makes a `Call` when a request arrives, so
the decision id on the response and the audit record are the same from the first byte. The record
is written from here alone: tests read what the gateway writes, never a second projection.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Refusal
from gateway.identity.tokens import Identity
from gateway.policy.engine import Decision


def new_decision_id() -> str:
    return "dec_" + uuid.uuid4().hex


@dataclass
class Call:
    """What is known about one call so far; becomes its audit record."""

    decision_id: str = field(default_factory=new_decision_id)
    started: float = field(default_factory=time.time)
    identity: Identity | None = None
    host: str | None = None
    method: str | None = None
    path: str | None = None
    connector: str | None = None
    action: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The decision's trace when tracing is on and samples it (`gateway.telemetry.tracing`); never recorded.
    trace: Any = field(default=None, repr=False, compare=False)
    # Its refusal's record was held back as unauthenticated noise (`gateway.audit.noise`): not traced either.
    held_back: bool = field(default=False, repr=False, compare=False)

    @property
    def agent(self) -> str | None:
        """Who is calling, as one key (tenant and subject): what per-agent state is kept under."""
        return f"{self.identity.tenant or ''}/{self.identity.sub}" if self.identity else None

    def decided_by(self, decision: Decision) -> None:
        """The policy's part of the record: which version and rules decided, and shadow findings."""
        self.extra.update(
            policy_version=decision.policy_version,
            rules=[m.ref.id for m in decision.rules],
            would_deny=[f.as_dict() for f in decision.would_deny],
        )

    def record(self, decision: str, refusal: Refusal | None = None, **extra: Any) -> dict[str, Any]:
        """The audit record of this call: names and codes only, never a value, token or key."""
        ident = self.identity
        rec: dict[str, Any] = {
            "decision_id": self.decision_id,
            "time": round(self.started, 6),
            "sub": ident.sub if ident else None,
            "tenant": ident.tenant if ident else None,
            "role": ident.role if ident else None,
            "jti": ident.jti if ident else None,
            "tool": ident.tool if ident else None,
            "connector": self.connector,
            "action": self.action,
            "host": self.host,
            "method": self.method,
            "path": self.path,
            "decision": decision,
            "code": refusal.code if refusal else None,
            "message": refusal.message if refusal else None,
        }
        if ident is not None and ident.issuer is not None:
            rec["issuer"] = ident.issuer  # an identity from `identity.issuers`; the sub is `ISSUER:SUB`
        rec.update(self.extra)
        rec.update(extra)
        return rec
