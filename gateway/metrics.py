"""Prometheus metrics, written by hand: a few counters and histograms need no client library.

Labels are connector, action, refusal code, a registered tool's name and a reload's result only
(closed, small sets); never an agent-supplied value, so a hostile agent cannot blow up the series
count or smuggle data into a scrape.
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
        self.upstream_seconds: dict[tuple[str, ...], _Histogram] = {}
        self.dlp_seconds: dict[tuple[str, ...], _Histogram] = {}
        self.sandbox_seconds: dict[tuple[str, ...], _Histogram] = {}
        self.audit_failures = 0
        self.quota_store_errors = 0
        self.policy_reloads: Counter[str] = Counter({"ok": 0, "error": 0})
        # Read at scrape time from the stores that hold them (set by the runtime).
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}

    def decision(self, connector: str | None, action: str | None, decision: str, code: str | None) -> None:
        self.decisions[(connector or "", action or "", decision, code or "")] += 1

    def upstream(self, connector: str | None, action: str | None, seconds: float) -> None:
        self.upstream_seconds.setdefault((connector or "", action or ""), _Histogram()).observe(seconds)

    def dlp(self, connector: str, action: str, seconds: float) -> None:
        """One call's DLP step (scanning and tokenizing its fields), refused or not."""
        self.dlp_seconds.setdefault((connector, action), _Histogram()).observe(seconds)

    def sandbox_run(self, tool: str, seconds: float) -> None:
        """One `POST /v1/sandbox/run`; `tool` is a registered name, `python`, or `?` (never the agent's string)."""
        self.sandbox_seconds.setdefault((tool,), _Histogram()).observe(seconds)

    def audit_failure(self) -> None:
        self.audit_failures += 1

    def quota_store_error(self) -> None:
        """A rate-limit or budget store call that failed or timed out (the call was refused, or a
        `fail_open` rule let it through unchecked)."""
        self.quota_store_errors += 1

    def policy_reload(self, ok: bool) -> None:
        """A changed policy directory was loaded (`ok`) or rejected, the last good set serving on."""
        self.policy_reloads["ok" if ok else "error"] += 1

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
        lines += _histograms("egress_upstream_seconds", "Time from forwarding a call to its upstream response.",
                             ("connector", "action"), self.upstream_seconds)
        lines += _histograms("egress_dlp_seconds", "Time a call's DLP step took to scan and tokenize its fields.",
                             ("connector", "action"), self.dlp_seconds)
        lines += _histograms("egress_sandbox_run_seconds", "Time a sandbox run took through the API, refused or not.",
                             ("tool",), self.sandbox_seconds)
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        for name, (help_text, read) in sorted(self.counters.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {read():g}"]
        lines += [
            "# HELP egress_audit_write_failures_total Audit records that could not be written (alert on any).",
            "# TYPE egress_audit_write_failures_total counter",
            f"egress_audit_write_failures_total {self.audit_failures}",
            "# HELP egress_quota_store_errors_total Rate-limit and budget store calls that failed or timed out.",
            "# TYPE egress_quota_store_errors_total counter",
            f"egress_quota_store_errors_total {self.quota_store_errors}",
            "# HELP egress_policy_reloads_total Changed policy directories loaded (ok) or rejected (error).",
            "# TYPE egress_policy_reloads_total counter",
            *(f'egress_policy_reloads_total{{result="{result}"}} {n}' for result, n in sorted(self.policy_reloads.items())),
        ]
        return "\n".join(lines) + "\n"


def _histograms(name: str, help_text: str, labels: tuple[str, ...], series: dict[tuple[str, ...], _Histogram]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for values, hist in sorted(series.items()):
        lines += hist.lines(name, ",".join(f'{label}="{value}"' for label, value in zip(labels, values, strict=True)))
    return lines
