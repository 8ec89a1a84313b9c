"""The OTLP/HTTP span exporter of `gateway.telemetry.tracing`: the OpenTelemetry SDK's batch
processor hands it finished spans, it POSTs them as one protobuf `ExportTraceServiceRequest` to the
collector's `/v1/traces`.

Why not the SDK's own `OTLPSpanExporter`: its encoder (`encode_spans`) spends 25-50 µs of Python per
span (a dozen helper calls, and a JSON dump of the resource to hash it, for every span), which at
16 spans per decision was more than the whole 5% budget of tracing on its own (issue 16's bench).
This one builds the same messages from the same `opentelemetry-proto` classes (the resource and
scope once per process, the spans with one constructor call each), so a collector cannot tell them
apart: `tests/telemetry/test_otlp_encoding.py` decodes both encoders' output and compares them.
It runs in the batch processor's worker thread, off the event loop.

A failed POST (no answer, or 429/502/503/504) is retried with backoff within `timeout`; then the
batch is given up and logged once per burst of failures: a slow or dead collector loses spans,
never holds a call (the processor's queue is bounded and drops when full).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, SpanFlags, Status
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

log = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 502, 503, 504})  # as the OTLP/HTTP specification says
BACKOFF = (0.5, 1.0, 2.0, 4.0)  # seconds between attempts, cut short by the export's timeout
_KINDS = {
    SpanKind.INTERNAL: Span.SPAN_KIND_INTERNAL,
    SpanKind.SERVER: Span.SPAN_KIND_SERVER,
    SpanKind.CLIENT: Span.SPAN_KIND_CLIENT,
    SpanKind.PRODUCER: Span.SPAN_KIND_PRODUCER,
    SpanKind.CONSUMER: Span.SPAN_KIND_CONSUMER,
}
_STATUS = {StatusCode.UNSET: Status.STATUS_CODE_UNSET, StatusCode.OK: Status.STATUS_CODE_OK,
           StatusCode.ERROR: Status.STATUS_CODE_ERROR}
_LOCAL = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE = _LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def value(v: Any) -> AnyValue:
    """An attribute value as OTLP's AnyValue (the SDK allows str, bool, int, float, bytes and
    sequences of them; a mapping is a key-value list)."""
    if v is None:
        return AnyValue()
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, Sequence):
        return AnyValue(array_value=ArrayValue(values=[value(x) for x in v]))
    if isinstance(v, Mapping):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(v)))
    raise TypeError(f"an attribute value of type {type(v).__name__}")


def key_values(attributes: Mapping[str, Any] | None) -> list[KeyValue]:
    return [KeyValue(key=str(k), value=value(v)) for k, v in attributes.items()] if attributes else []


def _span(s: ReadableSpan) -> Span:
    ctx, parent = s.get_span_context(), s.parent
    assert ctx is not None
    trace_state = ctx.trace_state
    return Span(
        trace_id=ctx.trace_id.to_bytes(16, "big"),
        span_id=ctx.span_id.to_bytes(8, "big"),
        trace_state=",".join(f"{k}={v}" for k, v in trace_state.items()) if trace_state else "",
        parent_span_id=parent.span_id.to_bytes(8, "big") if parent else b"",
        name=s.name,
        kind=_KINDS[s.kind],
        start_time_unix_nano=s.start_time or 0,
        end_time_unix_nano=s.end_time or 0,
        attributes=key_values(s.attributes),
        events=[
            Span.Event(name=e.name, time_unix_nano=e.timestamp, attributes=key_values(e.attributes),
                       dropped_attributes_count=e.dropped_attributes)
            for e in s.events
        ],
        links=[
            Span.Link(trace_id=link.context.trace_id.to_bytes(16, "big"), span_id=link.context.span_id.to_bytes(8, "big"),
                      attributes=key_values(link.attributes), dropped_attributes_count=link.dropped_attributes,
                      flags=_REMOTE if link.context.is_remote else _LOCAL)
            for link in s.links
        ],
        status=Status(code=_STATUS[s.status.status_code], message=s.status.description or ""),
        dropped_attributes_count=s.dropped_attributes,
        dropped_events_count=s.dropped_events,
        dropped_links_count=s.dropped_links,
        flags=_REMOTE if parent is not None and parent.is_remote else _LOCAL,
    )


class Encoder:
    """Spans to one ExportTraceServiceRequest, grouped by resource and scope as the SDK's encoder
    does; each distinct resource and scope object is encoded once and remembered (a process has
    one of each), compared by identity rather than by the SDK's JSON-dumping hash."""

    def __init__(self) -> None:
        self._resources: dict[int, tuple[Any, Resource]] = {}
        self._scopes: dict[int, tuple[Any, InstrumentationScope]] = {}

    def _resource(self, resource: Any) -> Resource:
        found = self._resources.get(id(resource))
        if found is None or found[0] is not resource:
            found = self._resources[id(resource)] = (resource, Resource(attributes=key_values(resource.attributes)))
        return found[1]

    def _scope(self, scope: Any) -> InstrumentationScope:
        if scope is None:
            return InstrumentationScope()
        found = self._scopes.get(id(scope))
        if found is None or found[0] is not scope:
            encoded = InstrumentationScope(name=scope.name, version=scope.version, attributes=key_values(scope.attributes))
            found = self._scopes[id(scope)] = (scope, encoded)
        return found[1]

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[Span]]]]] = {}
        for s in spans:
            resource, scope = s.resource, s.instrumentation_scope
            by_scope = groups.setdefault(id(resource), (resource, {}))[1]
            by_scope.setdefault(id(scope), (scope, []))[1].append(_span(s))
        request = ExportTraceServiceRequest(resource_spans=[
            ResourceSpans(
                resource=self._resource(resource),
                schema_url=resource.schema_url,
                scope_spans=[
                    ScopeSpans(scope=self._scope(scope), spans=encoded, schema_url=(scope.schema_url or "") if scope else "")
                    for scope, encoded in by_scope.values()
                ],
            )
            for resource, by_scope in groups.values()
        ])
        return request.SerializePartialToString()


class OtlpHttpExporter(SpanExporter):
    """POST batches of spans to an OTLP/HTTP collector (`endpoint` ends in /v1/traces)."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint, self.timeout = endpoint, timeout
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)
        self._encoder = Encoder()
        self._stopping = threading.Event()
        self._failing = False
        self.failed = 0  # spans given up

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = self._encoder.encode(spans)
        deadline = time.monotonic() + self.timeout
        why = ""
        for delay in (*BACKOFF, None):
            try:
                r = self._client.post(self.endpoint, content=body, headers={"content-type": "application/x-protobuf"})
                if r.status_code < 300:
                    self._failing = False
                    return SpanExportResult.SUCCESS
                why = f"HTTP {r.status_code}"
                if r.status_code not in RETRYABLE:
                    break
            except httpx.HTTPError as e:
                why = type(e).__name__
            if delay is None or time.monotonic() + delay > deadline or self._stopping.wait(delay):
                break
        self.failed += len(spans)
        if not self._failing:
            self._failing = True
            log.error("trace export to %s failed (%s): %d spans lost (logged once until an export succeeds)",
                      self.endpoint, why, len(spans))
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._stopping.set()
        self._client.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
