"""OpenTelemetry traces of decisions, exported over OTLP/HTTP; built only when configured.

One span per decision (`egress.decision`), a child per pipeline step (DLP is one), and a child for
the upstream call (`egress.upstream`, from forwarding to the vendor's answer or the failure). With
`telemetry.otlp_endpoint` unset this module is never imported: the SDK is not loaded and the
pipeline does one `is None` test per call.

Cheap by construction (issue 16's target: at most 5% of a call's cost). While a decision runs,
tracing only notes numbers: the pipeline appends each step's end time (`time.time_ns()`) to a list.
When the decision is over, its span is built once as the SDK's finished span (`ReadableSpan`, with
explicit start and end times), carrying the steps' names and end times (`otlp.StepsSpan`), and
handed to the SDK's `BatchSpanProcessor`; its worker thread writes each step as a child span while
encoding the batch (`gateway.telemetry.otlp`), off the event loop. The upstream call is a second
finished span. Going through `Tracer.start_span`/`Span.end` instead cost ~20 µs per span in the
event loop (a sampler call, a lock, attribute bounding, processor callbacks at start and end, a
context to attach per step) and the SDK's exporter ~20 µs more to encode it: for 16 spans, several
times the budget. What the collector receives is the same spans.

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

import functools
import random
import re
from collections.abc import Mapping
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
from gateway.telemetry.otlp import OtlpHttpExporter, StepsSpan

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
    if type(value) is str and len(value) <= MAX_ATTRIBUTE:  # nearly every value: no copy to make
        return _sanitized(value)
    return _sanitized(str(value)[:MAX_ATTRIBUTE])


@functools.lru_cache(maxsize=4096)
def _sanitized(text: str) -> str:
    """Remembered: most values (role, connector, action, host, policy version) recur call after call."""
    return _UNSAFE.sub("_", text)


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


# Spans waiting for the exporter (a decision's with its steps, an upstream call's): ~2000 decisions,
# several seconds of a busy gateway's traffic, a few MB at most.
MAX_QUEUED_SPANS = 4096
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
    attributes: dict[str, Any] = field(default_factory=dict)  # the decision span's, once it ended


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
        # a busy gateway fills a batch well before the delay, an idle one has nothing to hurry. A
        # decision's span counts once with its steps: a POST of 512 is ~600 KB at most.
        self.processor = BatchSpanProcessor(self.exporter, max_queue_size=MAX_QUEUED_SPANS)
        self.sample_ratio = settings.sample_ratio
        self._ids = RandomIdGenerator()
        self._step_spans: dict[tuple[str, ...], tuple[str, ...]] = {}

    def decision(self, traceparent: str | None) -> DecisionTrace | None:
        """A decision's trace, continuing the agent's trace when it sent a valid traceparent; None
        when `sample_ratio` leaves this decision out (drawn by the gateway, not the agent)."""
        if self.sample_ratio < 1.0 and random.random() >= self.sample_ratio:
            return None
        ids = traceparent_ids(traceparent)
        parent = SpanContext(ids[0], ids[1], is_remote=True, trace_flags=TraceFlags(ids[2])) if ids else None
        trace_id = ids[0] if ids else self._ids.generate_trace_id()
        return DecisionTrace(SpanContext(trace_id, self._ids.generate_span_id(), False, _SAMPLED), parent, time_ns())

    def end_decision(self, trace: DecisionTrace, steps: tuple[str, ...], rec: Mapping[str, Any]) -> None:
        """The decision's span and one child per step that ran (`steps` are the pipeline's step
        names, in order; `trace.ends` has the end of each that finished). A refusing step, the one
        after the last finished, ends with the decision and is marked with the code, never the message."""
        names = self._step_spans.get(steps)
        if names is None:
            names = self._step_spans[steps] = tuple(f"egress.step.{name}" for name in steps)
        code = rec.get("code")
        error = safe(code) if code else None
        trace.attributes = attributes(rec)
        self.processor.on_end(StepsSpan(
            "egress.decision", trace.context, trace.parent, self.resource, trace.attributes, kind=SpanKind.SERVER,
            status=Status(StatusCode.ERROR, error) if error else _UNSET, start_time=trace.start, end_time=time_ns(),
            instrumentation_scope=self.scope, step_names=names, step_ends=trace.ends, step_error=error,
        ))

    @staticmethod
    def traceparent(trace: DecisionTrace) -> str:
        """What the vendor gets when `propagate` is on: the decision's span as its parent."""
        return f"00-{trace.context.trace_id:032x}-{trace.context.span_id:016x}-01"

    @staticmethod
    def upstream(trace: DecisionTrace) -> UpstreamTrace:
        return UpstreamTrace(trace, time_ns())

    def end_upstream(self, up: UpstreamTrace, rec: Mapping[str, Any], status: int | None = None) -> None:
        """The upstream call's span, with its outcome record's attributes (and the vendor's status).
        The record is the decision's call's, so only its decision and code can differ from the
        decision span's attributes, which are reused rather than sanitized again."""
        attrs = dict(up.decision.attributes)
        attrs["egress.decision"] = safe(rec["decision"])
        code = rec.get("code")
        if code:
            attrs["egress.code"] = safe(code)
        else:
            attrs.pop("egress.code", None)
        if status is not None:
            attrs["http.response.status_code"] = status
        parent = up.decision.context
        self.processor.on_end(ReadableSpan(
            "egress.upstream", SpanContext(parent.trace_id, self._ids.generate_span_id(), False, _SAMPLED), parent,
            self.resource, attrs, kind=SpanKind.CLIENT, status=Status(StatusCode.ERROR, safe(code)) if code else _UNSET,
            start_time=up.start, end_time=time_ns(), instrumentation_scope=self.scope,
        ))

    def close(self) -> None:
        """Export what is queued (bounded by the exporter's timeout) and stop the exporter."""
        self.processor.shutdown()
