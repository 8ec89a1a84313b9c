"""The event loop's share of telemetry's cost, measured in this process (`bench.telemetry_bench`).

Why: on this 2-core VM a whole gateway's CPU per request varies by 10-35% from round to round, two
identical gateways included (`telemetry_bench --noise`), so a cost of a few percent cannot be read
from throughput alone. The bench therefore also accounts telemetry piece by piece, each piece
measured where it is steady: the export threads (spans, SIEM) in the live gateways, from their
per-thread CPU; and the work telemetry adds to the event loop, here, by making the very calls the
request path makes for one decision, many times, with the best of several repeats (timeit's rule:
the least disturbed run).

What one decision's loop work is, by config (`gateway.pipeline.decision.decide`, the proxy's
`Decide` and `Outcome`, `Runtime._count`/`_publish`):
- "traces": the decision's trace (ids, the agent's traceparent parsed), a time per pipeline step,
  the decision's audit record built once more for its span, the span handed to the batch processor,
  the upstream call's trace and span;
- "all on": that, the anomaly step (the call's items scored against the baseline and the rules
  checked), the decision counted in the baseline, and both records offered to the SIEM export.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from gateway.config import AnomalySettings, AuditExport, Telemetry, load
from gateway.pipeline.decision import STEP_NAMES
from gateway.telemetry.anomaly import fired_rules
from gateway.telemetry.baseline import Baselines, agent_key, shape_of
from gateway.telemetry.export import SiemExport
from gateway.telemetry.tracing import MAX_QUEUED_SPANS, Tracing

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PARAMS = {"amount": 2000, "currency": "usd", "description": "order 1234"}


class _Discard(SpanExporter):
    """The spans' thread is measured in the live gateways; here only the loop's side counts."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _record(decision: str, **extra: Any) -> dict[str, Any]:
    """An allowed payment's audit record, built as `Call.record` builds it (a fresh dict each time)."""
    rec: dict[str, Any] = {
        "decision_id": "dec_0af7651916cd43dd8448eb211c80319c", "time": time.time(), "sub": "bench", "tenant": None,
        "role": "finance", "jti": "jti-0af7651916cd43dd", "tool": None, "connector": "stripe",
        "action": "create_payment_intent", "host": "api.stripe.com", "method": "POST", "path": "/v1/payment_intents",
        "decision": decision, "code": None, "message": None,
    }
    rec.update(policy_version="sha256:0af7651916cd43dd", rules=["finance#0"], phase="decision")
    rec.update(extra)
    return rec


# The audit log's own records of a call, built whether or not telemetry is on: the outcome's
# span and the SIEM export take them as they are; only the decision's span has its record built again.
DECISION = _record("allow")
OUTCOME = _record("allow", phase="outcome", upstream_status=200)


def _traces(tracing: Tracing) -> Callable[[], None]:
    def one() -> None:
        trace = tracing.decision(TRACEPARENT)
        assert trace is not None
        for _ in STEP_NAMES:
            trace.ends.append(time.time_ns())
        tracing.end_decision(trace, STEP_NAMES, _record("allow"))
        up = tracing.upstream(trace)
        tracing.end_upstream(up, OUTCOME, 200)

    return one


def _all_on(tracing: Tracing, siem: SiemExport, baselines: Baselines, config: Any) -> Callable[[], None]:
    traced = _traces(tracing)

    def one() -> None:
        items = {"connectors": "stripe", "actions": "stripe:create_payment_intent", "hosts": "api.stripe.com",
                 "shapes": shape_of("stripe", "create_payment_intent", PARAMS)}
        fired_rules(config, baselines.score(agent_key(None, "bench", "finance", "sub"), items))
        traced()
        baselines.count(agent_key(DECISION["tenant"], DECISION["sub"], DECISION["role"], "sub"), False)
        siem.offer(DECISION)
        siem.offer(OUTCOME)

    return one


def _best(one: Callable[[], None], n: int, repeats: int) -> float:
    """Seconds of this thread's CPU per call: the best of `repeats` runs of `n` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(n):
            one()
        best = min(best, (time.thread_time() - start) / n)
    return best


def loop_work(n: int = 4000, repeats: int = 7) -> dict[str, float]:
    """Microseconds of event-loop work per decision that "traces" and "all on" add."""
    with tempfile.TemporaryDirectory(prefix="telemetry-work-") as tmp:
        tracing = Tracing(Telemetry(otlp_endpoint="http://127.0.0.1:9/v1/traces"))
        tracing.processor = BatchSpanProcessor(_Discard(), max_queue_size=MAX_QUEUED_SPANS)
        siem = SiemExport.build((AuditExport(kind="ocsf", to=f"file:{Path(tmp) / 'ocsf.jsonl'}", queue=1_000_000),), None, "bench")
        siem.start()
        settings = AnomalySettings.model_validate({"observe_for": "7d", "rules": [{"rate_above_baseline": "1000x", "then": "record"}]})
        config = load(None, {"anomaly": settings.model_dump()})
        try:
            work = {
                "traces": _best(_traces(tracing), n, repeats),
                "all on": _best(_all_on(tracing, siem, Baselines(settings), config), n, repeats),
            }
        finally:
            siem.stop()
            tracing.close()
    return {name: seconds * 1e6 for name, seconds in work.items()}
