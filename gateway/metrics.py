"""Prometheus metrics, written by hand: a few counters and a latency sum need no client library.

Labels are connector, action and refusal code only (closed, small sets); never an agent-supplied
value, so a hostile agent cannot blow up the series count or smuggle data into a scrape.
"""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str, str, str]] = Counter()
        self.upstream_seconds_sum = 0.0
        self.upstream_count = 0
        self.audit_failures = 0

    def decision(self, connector: str | None, action: str | None, decision: str, code: str | None) -> None:
        self.decisions[(connector or "", action or "", decision, code or "")] += 1

    def upstream(self, seconds: float) -> None:
        self.upstream_seconds_sum += seconds
        self.upstream_count += 1

    def audit_failure(self) -> None:
        self.audit_failures += 1

    def render(self) -> str:
        lines = [
            "# HELP egress_decisions_total Decisions by connector, action, outcome and refusal code.",
            "# TYPE egress_decisions_total counter",
        ]
        for (connector, action, decision, code), n in sorted(self.decisions.items()):
            lines.append(
                f'egress_decisions_total{{connector="{connector}",action="{action}",'
                f'decision="{decision}",code="{code}"}} {n}'
            )
        lines += [
            "# HELP egress_upstream_seconds Time from forwarding a call to its upstream response.",
            "# TYPE egress_upstream_seconds summary",
            f"egress_upstream_seconds_sum {self.upstream_seconds_sum:.6f}",
            f"egress_upstream_seconds_count {self.upstream_count}",
            "# HELP egress_audit_write_failures_total Audit records that could not be written (alert on any).",
            "# TYPE egress_audit_write_failures_total counter",
            f"egress_audit_write_failures_total {self.audit_failures}",
        ]
        return "\n".join(lines) + "\n"
