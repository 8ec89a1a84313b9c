"""`policy report`: what shadow-mode policies would have denied, by agent and rule.

Reads the audit log (records written by `gateway.pipeline.call.Call.record`, whose `would_deny` lists the
findings of shadow rules) so an operator can see what switching a policy to `enforce` would break
before doing it. One call writes several records (a decision record before forwarding, an outcome
record after) and each carries the call's `would_deny`, so a finding is counted once per
`decision_id`; a record without one counts on its own. A torn last line or a line that is not JSON is skipped and counted; run
`audit verify` to trust the file itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DENY = "(no rule: default deny)"


@dataclass
class ReportRow:
    sub: str
    rule: str
    code: str
    count: int
    first_ts: str | None
    last_ts: str | None


@dataclass(frozen=True)
class Report:
    rows: list[ReportRow]
    records: int
    skipped: int


class Tally:
    """The counts of `summarise`, fed one record at a time, so a reader that follows a growing log
    (the console's `GET /v1/policies`) counts each new record once instead of re-reading the file."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], ReportRow] = {}
        # Only calls with findings are remembered, so memory grows with what is reported, not the log.
        self._counted: dict[str, set[tuple[str, str, str]]] = {}

    def add(self, rec: dict[str, object]) -> None:
        decision_id = rec.get("decision_id")
        findings = rec.get("would_deny") or []
        if not isinstance(findings, list) or not findings:
            return
        seen = self._counted.setdefault(str(decision_id), set()) if decision_id else set()
        ts = rec.get("ts")
        for finding in findings:
            if not isinstance(finding, dict):
                continue
            key = (str(rec.get("sub", "?")), str(finding.get("rule") or DEFAULT_DENY), str(finding.get("code", "?")))
            if key in seen:
                continue
            seen.add(key)
            _count(self._rows, key, ts if isinstance(ts, str) else None)

    def rows(self) -> list[ReportRow]:
        """Busiest first."""
        return sorted(self._rows.values(), key=lambda r: (-r.count, r.sub, r.rule, r.code))


def summarise(lines: Iterable[bytes]) -> Report:
    """Count would-deny findings per (agent sub, rule, code), busiest first, each call once."""
    tally = Tally()
    records = skipped = 0
    for raw in lines:
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's limit
            skipped += 1
            continue
        if not isinstance(rec, dict):
            skipped += 1
            continue
        records += 1
        tally.add(rec)
    return Report(tally.rows(), records, skipped)


def _count(rows: dict[tuple[str, str, str], ReportRow], key: tuple[str, str, str], ts: str | None) -> None:
    row = rows.get(key)
    if row is None:
        rows[key] = ReportRow(*key, count=1, first_ts=ts, last_ts=ts)
    else:
        row.count += 1
        row.last_ts = ts or row.last_ts


def report_file(path: Path) -> Report:
    return report_files([path])


def report_files(paths: Iterable[Path]) -> Report:
    """One report over several logs (each worker's chain), read one after the other."""

    def lines() -> Iterator[bytes]:
        for path in paths:
            with path.open("rb") as f:
                yield from f

    return summarise(lines())


def format_report(report: Report) -> str:
    """A plain table for the terminal."""
    if not report.rows:
        return f"no would-deny events in {report.records} records"
    head = ("AGENT", "RULE", "CODE", "COUNT", "FIRST", "LAST")
    body = [(r.sub, r.rule, r.code, str(r.count), r.first_ts or "-", r.last_ts or "-") for r in report.rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    if report.skipped:
        lines.append(f"({report.skipped} unreadable lines skipped)")
    return "\n".join(lines)
