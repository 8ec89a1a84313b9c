"""OpenTelemetry traces of decisions, exported over OTLP/HTTP; built only when configured.

One span per decision (`egress.decision`), a child per pipeline step (DLP is one), and a child for
the upstream call (`egress.upstream`, from forwarding to the vendor's answer or the failure). With
`telemetry.otlp_endpoint` unset this module is never imported: the SDK is not loaded and the
pipeline does one `is None` test per call.

Cheap by construction (issue 16's target: at most 5% of a call's cost). While a decision runs,
tracing only notes numbers: the pipeline appends each step's end time (`time.time_ns()`) to a list.
When the decision is over, all its spans are built at once as the SDK's finished spans
(`ReadableSpan`, with explicit start and end times) and handed to the SDK's `BatchSpanProcessor`,
whose worker thread encodes and exports them off the event loop (`gateway.telemetry.otlp`). Going
through `Tracer.start_span`/`Span.end` instead costs ~20 µs per span (a sampler call, a lock,
attribute bounding, processor callbacks at start and end, a context to attach per step), which for
16 spans was alone more than the budget; the spans exported are the same.

Attributes are read from the call's audit record (`Call.record`, the one projection), so a span can
never hold more than the audit does, and each value is bounded and held to a safe alphabet
(`safe`): subjects, roles and tenants come from signed tokens, but every string is treated as
untrusted all the same. The `egress.*` names are the README's table; the GenAI semantic
conventions (`gen_ai.provider.name`, `gen_ai.operation.name`) are added for model vendors.

Which decisions are traced is the gateway's choice alone (`telemetry.sample_ratio`, default every
one): an agent's `traceparent` chooses the parent, never whether the gateway records (neither a
flag of 00 nor a chosen trace id can hide a call from the trace). The batch processor's queue is
bounded (`MAX_QUEUED_SPANS`) and drops spans when the collector is slow; the request path never
waits for it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from time import time_ns
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from gateway.config import Telemetry
from gateway.telemetry import traceparent_ids
from gateway.telemetry.otlp import OtlpHttpExporter

_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/+\-]")
MAX_ATTRIBUTE = 128

# audit record field -> span attribute (the README's `egress.*` table)
ATTRIBUTES: dict[str, str] = {
    "decision_id": "egress.decision_id",
    "sub": "egress.agent.sub",
    "role": "egress.agent.role",
    "tenant": "egress.agent.tenant",
    "tool": "egress.tool",
    "connector": "egress.connector",
    "action": "egress.action",
    "decision": "egress.decision",
    "code": "egress.code",
    "policy_version": "egress.policy.version",
    "approval_id": "egress.approval_id",
    "host": "server.address",
    "method": "http.request.method",
}
# connector -> (GenAI provider name, {action: operation name})
GENAI: dict[str, tuple[str, dict[str, str]]] = {
    "openai": ("openai", {"chat_completions": "chat", "responses": "chat", "embeddings": "embeddings"}),
}


def safe(value: Any) -> str:
    """An attribute value from an untrusted string: a safe alphabet, at most MAX_ATTRIBUTE characters."""
    return _UNSAFE.sub("_", str(value)[:MAX_ATTRIBUTE])


def attributes(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The span attributes of an audit record: names and codes only, bounded and sanitized."""
    out: dict[str, Any] = {name: safe(rec[key]) for key, name in ATTRIBUTES.items() if rec.get(key) is not None}
    rules = rec.get("rules")
    if isinstance(rules, list) and rules:
        out["egress.rule"] = [safe(r) for r in rules[:16]]
    genai = GENAI.get(str(rec.get("connector")))
    if genai is not None:
        provider, operations = genai
        out["gen_ai.provider.name"] = provider
        if (op := operations.get(str(rec.get("action")))) is not None:
            out["gen_ai.operation.name"] = op
    return out


# Spans waiting for the exporter: ~1000 decisions (16 spans each), a few seconds of a busy
# gateway's traffic, ~10 MB at most. The SDK's default (2048) is 128 decisions, under a second.
MAX_QUEUED_SPANS = 16_384
EXPORT_TIMEOUT = 5.0  # seconds for one batch, retries included
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


@dataclass(slots=True)
class DecisionTrace:
    """A decision being traced: its span's identity, and plain numbers until it ends."""

    context: SpanContext  # the decision span's: the agent's trace id when continued, its own span id
    parent: SpanContext | None  # the agent's span, from a valid traceparent
    start: int  # time.time_ns()
    ends: list[int] = field(default_factory=list)  # each finished step's end, in step order


@dataclass(slots=True)
class UpstreamTrace:
    """The upstream call of a traced decision, from forwarding until its outcome."""

    decision: DecisionTrace
    start: int


class Tracing:
    """The traces of one gateway process: its resource, the SDK's batch processor and the exporter."""

    def __init__(self, settings: Telemetry) -> None:
        assert settings.otlp_endpoint is not None
        endpoint = settings.otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        self.resource = Resource.create({"service.name": settings.service_name})
        self.scope = InstrumentationScope("egress-gateway")
        self.exporter = OtlpHttpExporter(endpoint, EXPORT_TIMEOUT)
        # Batch size and schedule delay are the SDK's (512 spans, 5 s; OTEL_BSP_* can change them):
        # a busy gateway fills a batch well before the delay, an idle one has nothing to hurry.
        self.processor = BatchSpanProcessor(self.exporter, max_queue_size=MAX_QUEUED_SPANS)
        self.sample_ratio = settings.sample_ratio
        self._ids = RandomIdGenerator()

    def decision(self, traceparent: str | None) -> DecisionTrace | None:
        """A decision's trace, continuing the agent's trace when it sent a valid traceparent; None
        when `sample_ratio` leaves this decision out (drawn by the gateway, not the agent)."""
        if self.sample_ratio < 1.0 and random.random() >= self.sample_ratio:
            return None
        ids = traceparent_ids(traceparent)
        parent = SpanContext(ids[0], ids[1], is_remote=True, trace_flags=TraceFlags(ids[2])) if ids else None
        trace_id = ids[0] if ids else self._ids.generate_trace_id()
        return DecisionTrace(SpanContext(trace_id, self._ids.generate_span_id(), False, _SAMPLED), parent, time_ns())

    def end_decision(self, trace: DecisionTrace, steps: Sequence[str], rec: Mapping[str, Any]) -> None:
        """The decision's span and one child per step that ran (`steps` are their names, in order;
        `trace.ends` has the end of each that finished). A refusing step, the one after the last
        finished, ends with the decision and is marked with the code, never the message."""
        end = time_ns()
        ctx, code = trace.context, rec.get("code")
        status = Status(StatusCode.ERROR, safe(code)) if code else _UNSET
        spans = [self._span("egress.decision", ctx, trace.parent, SpanKind.SERVER, trace.start, end, attributes(rec), status)]
        start = trace.start
        for name, step_end in zip(steps, trace.ends, strict=False):
            spans.append(self._child(f"egress.step.{name}", ctx, SpanKind.INTERNAL, start, step_end, None, _UNSET))
            start = step_end
        if code and len(trace.ends) < len(steps):
            spans.append(self._child(f"egress.step.{steps[len(trace.ends)]}", ctx, SpanKind.INTERNAL, start, end, None, status))
        for span in spans:
            self.processor.on_end(span)

    @staticmethod
    def traceparent(trace: DecisionTrace) -> str:
        """What the vendor gets when `propagate` is on: the decision's span as its parent."""
        return f"00-{trace.context.trace_id:032x}-{trace.context.span_id:016x}-01"

    @staticmethod
    def upstream(trace: DecisionTrace) -> UpstreamTrace:
        return UpstreamTrace(trace, time_ns())

    def end_upstream(self, up: UpstreamTrace, rec: Mapping[str, Any], status: int | None = None) -> None:
        """The upstream call's span, with its outcome record's attributes (and the vendor's status)."""
        attrs = attributes(rec)
        if status is not None:
            attrs["http.response.status_code"] = status
        code = rec.get("code")
        span_status = Status(StatusCode.ERROR, safe(code)) if code else _UNSET
        self.processor.on_end(self._child("egress.upstream", up.decision.context, SpanKind.CLIENT, up.start, time_ns(), attrs,
                                          span_status))

    def _child(self, name: str, parent: SpanContext, kind: SpanKind, start: int, end: int, attrs: dict[str, Any] | None,
               status: Status) -> ReadableSpan:
        ctx = SpanContext(parent.trace_id, self._ids.generate_span_id(), False, _SAMPLED)
        return self._span(name, ctx, parent, kind, start, end, attrs, status)

    def _span(self, name: str, ctx: SpanContext, parent: SpanContext | None, kind: SpanKind, start: int, end: int,
              attrs: dict[str, Any] | None, status: Status) -> ReadableSpan:
        return ReadableSpan(name, ctx, parent, self.resource, attrs, kind=kind, status=status, start_time=start, end_time=end,
                            instrumentation_scope=self.scope)

    def close(self) -> None:
        """Export what is queued (bounded by the exporter's timeout) and stop the exporter."""
        self.processor.shutdown()
