"""OpenTelemetry traces of decisions, exported over OTLP/HTTP; built only when configured.

One span per decision (`egress.decision`), a child per pipeline step (DLP is one), and a child for
the upstream call (`egress.upstream`, from forwarding to the vendor's answer or the failure). With
`telemetry.otlp_endpoint` unset this module is never imported: the SDK is not loaded and the
pipeline does one `is None` test per call.

Attributes are read from the call's audit record (`Call.record`, the one projection), so a span can
never hold more than the audit does, and each value is bounded and held to a safe alphabet
(`safe`): subjects, roles and tenants come from signed tokens, but every string is treated as
untrusted all the same. The `egress.*` names are the README's table; the GenAI semantic
conventions (`gen_ai.provider.name`, `gen_ai.operation.name`) are added for model vendors.

Every decision is sampled: an agent's `traceparent` chooses the parent, never whether the gateway
records (a flag of 00 must not hide a call from the trace). The SDK's batch processor keeps its own
bounded queue and drops spans when the collector is slow; the request path never waits for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from gateway.config import Telemetry
from gateway.errors import Refusal
from gateway.telemetry import traceparent_ids

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


class Tracing:
    """The tracer of one gateway process, with its exporter and batch processor."""

    def __init__(self, settings: Telemetry) -> None:
        assert settings.otlp_endpoint is not None
        endpoint = settings.otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        self.provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}), sampler=ALWAYS_ON)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5)))
        self.tracer = self.provider.get_tracer("egress-gateway")

    def decision(self, traceparent: str | None) -> Span:
        """The decision's span, continuing the agent's trace when it sent a valid traceparent."""
        ids = traceparent_ids(traceparent)
        context = None
        if ids is not None:
            parent = SpanContext(ids[0], ids[1], is_remote=True, trace_flags=TraceFlags(ids[2]))
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        return self._start("egress.decision", context, SpanKind.SERVER)

    @contextmanager
    def step(self, parent: Span, name: str) -> Iterator[None]:
        """A child span for one pipeline step; a refusal marks it with its code, never its message."""
        span = self._start(f"egress.step.{name}", trace.set_span_in_context(parent), SpanKind.INTERNAL)
        try:
            yield
        except Refusal as r:
            span.set_status(Status(StatusCode.ERROR, r.code))
            raise
        except Exception:
            span.set_status(Status(StatusCode.ERROR, "internal_error"))
            raise
        finally:
            span.end()

    @staticmethod
    def traceparent(span: Span) -> str:
        """What the vendor gets when `propagate` is on: the decision's span as its parent."""
        ctx = span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"

    def upstream(self, parent: Span, rec: Mapping[str, Any]) -> Span:
        span = self._start("egress.upstream", trace.set_span_in_context(parent), SpanKind.CLIENT)
        span.set_attributes(attributes(rec))
        return span

    def finish(self, span: Span, rec: Mapping[str, Any], status: int | None = None) -> None:
        """End a span with its audit record's attributes (and the vendor's status, if any)."""
        span.set_attributes(attributes(rec))
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if rec.get("code"):
            span.set_status(Status(StatusCode.ERROR, safe(rec["code"])))
        span.end()

    def _start(self, name: str, context: Any, kind: SpanKind) -> Span:
        return self.tracer.start_span(name, context, kind, record_exception=False, set_status_on_exception=False)

    def close(self) -> None:
        """Flush what is queued (bounded by the exporter's timeout) and stop the exporter."""
        self.provider.shutdown()
