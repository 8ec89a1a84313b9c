"""What the `anomaly.rules` make of a call's signals (`gateway.telemetry.baseline`): which rules
hold, and, for `then: approval`, the policy decision turned into one that needs a person.

Responses are graduated: `record` (the audit record names the conditions), `approval` (the call is
held like a policy's approval_required: the same store, the same `X-Egress-Approval` retry), and
`quarantine` (the agent is stopped everywhere, `gateway.identity.quarantine`); the strongest of the
rules that hold wins.
"""

from __future__ import annotations

import dataclasses

from gateway.config import AnomalyRule, Config
from gateway.errors import Refusal
from gateway.identity.tokens import Identity
from gateway.policy.engine import Decision, Subject

RESPONSES = ("record", "approval", "quarantine")  # weakest first
ANOMALY_POLICY = "anomaly"  # the policy version of an approval asked for by an anomaly rule alone


def holds(rule: AnomalyRule, signals: dict[str, float]) -> bool:
    value = signals.get(rule.condition)
    if value is None:
        return False
    if rule.rate_above_baseline is not None:
        return value > rule.rate_above_baseline
    if rule.deny_ratio_above is not None:
        return value > rule.deny_ratio_above
    return value > 0


def fired_rules(config: Config, signals: dict[str, float]) -> list[AnomalyRule]:
    if config.anomaly is None or not signals:
        return []
    return [rule for rule in config.anomaly.rules if holds(rule, signals)]


def held_for_anomaly(
    decision: Decision | None, identity: Identity, connector: str, action: str, conditions: list[str]
) -> Decision:
    """The decision as one that needs an approval; the approver is told why (conditions only)."""
    refusal = Refusal("approval_required", f"the call is unusual for this agent ({', '.join(conditions)}); a person must approve it")
    if decision is None:
        subject = Subject(identity.sub, identity.role, identity.tenant)
        return Decision("approval_required", subject, connector, action, ANOMALY_POLICY, refusal=refusal)
    if decision.outcome == "approval_required":
        return decision
    return dataclasses.replace(decision, outcome="approval_required", refusal=refusal)
