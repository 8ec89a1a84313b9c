"""The chaos table: one row per fault (expected, observed, pass/fail) and the run's totals.

Tests open a `case`, send their requests through `track` (which counts what was sent, refused and
succeeded, and keeps every error body for the leak check), and set `observed`; a case whose block
raises is recorded as FAIL with what was observed so far. The end-of-session checks add the
numbers that matter most: bytes leaked and audit records lost, both expected to be 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from tests.processes import GatewayProcess


@dataclass
class Case:
    fault: str
    expected: str
    observed: str = ""
    passed: bool = False


@dataclass
class ChaosReport:
    cases: list[Case] = field(default_factory=list)
    sent: int = 0
    refused: int = 0
    succeeded: int = 0
    broken: int = 0  # the connection failed: a reset, a cut stream, a closed slowloris
    leaked: int | None = None
    lost_audit: int | None = None
    error_bodies: list[bytes] = field(default_factory=list)
    # What the end-of-session checks read besides the fault vendor's history: every gateway
    # started (its state dir and log stay on disk), their metrics scrapes, and Redis's contents.
    gateways: list[GatewayProcess] = field(default_factory=list)
    scrapes: list[str] = field(default_factory=list)
    redis_dumps: list[bytes] = field(default_factory=list)

    @contextlib.contextmanager
    def case(self, fault: str, expected: str) -> Iterator[Case]:
        c = Case(fault, expected)
        self.cases.append(c)
        try:
            yield c
        except BaseException as e:
            if not c.observed:
                c.observed = f"{type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''}"
            raise
        c.passed = True

    def track(self, r: httpx.Response | BaseException | int) -> None:
        """Count one request's fate; keep error bodies for the leak check."""
        self.sent += 1
        if isinstance(r, BaseException):
            self.broken += 1
            return
        status = r if isinstance(r, int) else r.status_code
        if status < 400:
            self.succeeded += 1
            return
        self.refused += 1
        if isinstance(r, httpx.Response):
            with contextlib.suppress(httpx.ResponseNotRead):
                self.error_bodies.append(r.content)

    def table(self) -> str:
        rows = [("fault", "expected", "observed", "result")]
        rows += [(c.fault, c.expected, c.observed, "pass" if c.passed else "FAIL") for c in self.cases]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        out = [line]
        for n, r in enumerate(rows):
            out.append("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |")
            if n == 0:
                out.append(line.replace("-", "="))
        out.append(line)
        passed = sum(c.passed for c in self.cases)
        unknown = "not checked"
        out.append(
            f"faults: {len(self.cases)}, passed: {passed}, failed: {len(self.cases) - passed} | "
            f"requests sent: {self.sent}, refused: {self.refused}, succeeded: {self.succeeded}, "
            f"connection failed: {self.broken} | "
            f"leaked: {unknown if self.leaked is None else self.leaked}, "
            f"lost audit records: {unknown if self.lost_audit is None else self.lost_audit}"
        )
        return "\n".join(out)

    def __repr__(self) -> str:  # short: a failing test's traceback shows the report, not its contents
        return f"ChaosReport({len(self.cases)} cases, {self.sent} requests)"
