"""Prometheus metrics, written by hand: a few counters and histograms need no client library.

Labels are connector, action and refusal code only (closed, small sets); never an agent-supplied
value, so a hostile agent cannot blow up the series count or smuggle data into a scrape.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
        return [*out, f"{name}_sum{{{labels}}} {self.total:.6f}", f"{name}_count{{{labels}}} {running}"]


class Metrics:
    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str, str, str]] = Counter()
        self.upstream_seconds: dict[tuple[str, str], _Histogram] = {}
        self.audit_failures = 0
        # Read at scrape time from the stores that hold them (set by the runtime).
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}

    def decision(self, connector: str | None, action: str | None, decision: str, code: str | None) -> None:
        self.decisions[(connector or "", action or "", decision, code or "")] += 1

    def upstream(self, connector: str | None, action: str | None, seconds: float) -> None:
        self.upstream_seconds.setdefault((connector or "", action or ""), _Histogram()).observe(seconds)

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
            "# TYPE egress_upstream_seconds histogram",
        ]
        for (connector, action), hist in sorted(self.upstream_seconds.items()):
            lines += hist.lines("egress_upstream_seconds", f'connector="{connector}",action="{action}"')
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        for name, (help_text, read) in sorted(self.counters.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {read():g}"]
        lines += [
            "# HELP egress_audit_write_failures_total Audit records that could not be written (alert on any).",
            "# TYPE egress_audit_write_failures_total counter",
            f"egress_audit_write_failures_total {self.audit_failures}",
        ]
        return "\n".join(lines) + "\n"
