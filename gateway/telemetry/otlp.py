"""The OTLP/HTTP span exporter of `gateway.telemetry.tracing`: the OpenTelemetry SDK's batch
processor hands it finished spans, it POSTs them as one protobuf `ExportTraceServiceRequest` to the
collector's `/v1/traces`, from the processor's worker thread (off the event loop).

Why not the SDK's own `OTLPSpanExporter`: its encoder (`encode_spans`) spends 20-50 µs of Python per
span (a dozen helper calls, and a JSON dump of the resource to hash it, for every span), which at
16 spans per decision was more than the whole 5% budget of tracing (issue 16's bench) on its own.
Here a span is one `opentelemetry-proto` message built with one constructor call, the resource and
scope are encoded once per process, and the pipeline steps of a decision are not SDK spans at all:
the decision's span (`StepsSpan`) carries their names and end times as plain numbers, and each is
written straight to the wire as a child span (a fresh span id, the decision's span as parent,
kind INTERNAL, status ERROR with the code for a refusing step). A collector cannot tell the output
from the SDK's encoder's: `tests/telemetry/test_otlp_encoding.py` decodes both and compares them.

A failed POST (no answer, or 429/502/503/504) is retried with backoff within `timeout`; then the
batch is given up and logged once per burst of failures: a slow or dead collector loses spans,
never holds a call (the processor's queue is bounded and drops when full).
"""

from __future__ import annotations

import logging
import os
import random
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace import Status as SdkStatus
from opentelemetry.util.re import parse_env_headers

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


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]
_TAGS = [bytes((n << 3 | 2,)) for n in range(16)]  # length-delimited fields 0-15


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (numbers 1-15: a one-byte tag)."""
    return _TAGS[number] + _varint(len(payload)) + payload


_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (7) and end_time_unix_nano (8), fixed64 each
_KIND_INTERNAL_FLAGS_LOCAL = b"\x30" + _varint(Span.SPAN_KIND_INTERNAL) + b"\x85\x01" + struct.pack("<I", _LOCAL)
_WIRE_UNSET = _field(15, b"")  # the SDK's encoder always writes a status, empty when unset
# A step span's bytes besides its name, kind and flags: trace id (2+16), parent span id (2+8),
# span id (2+8), times (2 x 9), an empty status (2)
_STEP_FIXED = 18 + 10 + 10 + 18 + 2


# (key, value) -> its encoded Span.attributes field. Most of a decision's attributes repeat from
# call to call (role, connector, action, host, policy version, the rules, the vendor's status); the
# cache is emptied when full.
_ATTRIBUTES: dict[tuple[Any, ...], bytes] = {}
MAX_CACHED_ATTRIBUTES = 4096


def _attribute(key: str, v: Any) -> bytes:
    """One Span.attributes field (a KeyValue), remembered: a string value written without building
    a message; an int, or a list of strings (`egress.rule`), through `value` once (a protobuf
    message built and serialized was ~4 µs, twice a decision). A non-string's key holds its type:
    True == 1, but they are encoded apart."""
    if type(v) is str:
        found = _ATTRIBUTES.get((key, v))
        if found is None:
            found = _remember((key, v), _field(9, _field(1, key.encode()) + _field(2, _field(1, v.encode()))))
        return found
    cached = (key, type(v), v) if type(v) in (int, bool) else (key, list, *v) if type(v) is list and all(type(x) is str for x in v) else None
    if cached is None:
        return _field(9, _field(1, key.encode()) + _field(2, value(v).SerializeToString()))
    found = _ATTRIBUTES.get(cached)
    if found is None:
        found = _remember(cached, _field(9, _field(1, key.encode()) + _field(2, value(v).SerializeToString())))
    return found


def _remember(key: tuple[Any, ...], encoded: bytes) -> bytes:
    if len(_ATTRIBUTES) >= MAX_CACHED_ATTRIBUTES:
        _ATTRIBUTES.clear()
    _ATTRIBUTES[key] = encoded
    return encoded


_FLAGS = {False: b"\x85\x01" + struct.pack("<I", _LOCAL), True: b"\x85\x01" + struct.pack("<I", _REMOTE)}
_KIND_FIELDS = {kind: b"\x30" + _varint(number) for kind, number in _KINDS.items()}
_NAMES: dict[str, bytes] = {}  # span name -> its encoded field (a process has a handful)
_STATUSES: dict[tuple[StatusCode, str], bytes] = {}  # (code, description) -> its encoded field


def _status(status: SdkStatus) -> bytes:
    key = (status.status_code, status.description or "")
    found = _STATUSES.get(key)
    if found is None:
        if key[0] is StatusCode.UNSET and not key[1]:
            found = _WIRE_UNSET
        else:
            found = _field(15, Status(code=_STATUS[key[0]], message=key[1]).SerializeToString())
        if len(_STATUSES) < MAX_CACHED_ATTRIBUTES:  # descriptions are refusal codes: a few dozen
            _STATUSES[key] = found
    return found


def _name(name: str) -> bytes:
    found = _NAMES.get(name)
    if found is None:
        found = _field(5, name.encode())
        if len(_NAMES) < MAX_CACHED_ATTRIBUTES:
            _NAMES[name] = found
    return found


def _span(s: ReadableSpan) -> bytes:
    """One span on the wire, the fields in the order and form of the SDK's encoder (which sets a
    status always, and flags saying whether the parent is remote)."""
    ctx, parent = s.get_span_context(), s.parent
    assert ctx is not None
    parts = [b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"), b"\x12\x08" + ctx.span_id.to_bytes(8, "big")]
    if ctx.trace_state:
        parts.append(_field(3, ",".join(f"{k}={v}" for k, v in ctx.trace_state.items()).encode()))
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    parts += (_name(s.name), _KIND_FIELDS[s.kind], _TIMES.pack(0x39, s.start_time or 0, 0x41, s.end_time or 0))
    if attributes := s.attributes:
        parts.extend([_attribute(k, v) for k, v in attributes.items()])
    if dropped := s.dropped_attributes:
        parts.append(b"\x50" + _varint(dropped))
    for e in s.events:
        event = Span.Event(name=e.name, time_unix_nano=e.timestamp, attributes=key_values(e.attributes),
                           dropped_attributes_count=e.dropped_attributes)
        parts.append(_field(11, event.SerializeToString()))
    if dropped := s.dropped_events:
        parts.append(b"\x60" + _varint(dropped))
    for link in s.links:
        encoded = Span.Link(trace_id=link.context.trace_id.to_bytes(16, "big"), span_id=link.context.span_id.to_bytes(8, "big"),
                            attributes=key_values(link.attributes), dropped_attributes_count=link.dropped_attributes,
                            flags=_REMOTE if link.context.is_remote else _LOCAL)
        parts.append(_field(13, encoded.SerializeToString()))
    if dropped := s.dropped_links:
        parts.append(b"\x70" + _varint(dropped))
    parts += (_status(s.status), _FLAGS[parent is not None and parent.is_remote])
    return b"".join(parts)


class StepsSpan(ReadableSpan):
    """A finished span with child spans given as numbers: `step_names[i]` ran from the previous
    step's end (the span's start, for the first) to `step_ends[i]`. With `step_error`, the step
    after the last finished one refused: it ends with the span, status ERROR and that description."""

    def __init__(self, *args: Any, step_names: Sequence[str], step_ends: Sequence[int], step_error: str | None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_names, self.step_ends, self.step_error = step_names, step_ends, step_error


class Encoder:
    """Spans to one serialized ExportTraceServiceRequest, grouped by resource and scope as the
    SDK's encoder does; each distinct resource and scope object is encoded once and remembered
    (a process has one of each), compared by identity rather than by the SDK's JSON-dumping hash.
    `span_ids` makes the steps' span ids (the SDK's generator draws 64 random bits the same way)."""

    def __init__(self, span_ids: Any = None) -> None:
        self._resources: dict[int, tuple[Any, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes]] = {}
        self._names: dict[str, tuple[bytes, bytes]] = {}
        self._span_id = span_ids or (lambda: random.getrandbits(64) or 1)

    def _resource(self, resource: Any) -> bytes:
        found = self._resources.get(id(resource))
        if found is None or found[0] is not resource:
            encoded = Resource(attributes=key_values(resource.attributes)).SerializeToString()
            found = self._resources[id(resource)] = (resource, encoded)
        return found[1]

    def _scope(self, scope: Any) -> bytes:
        if scope is None:
            return b""
        found = self._scopes.get(id(scope))
        if found is None or found[0] is not scope:
            encoded = InstrumentationScope(name=scope.name, version=scope.version,
                                           attributes=key_values(scope.attributes)).SerializeToString()
            found = self._scopes[id(scope)] = (scope, encoded)
        return found[1]

    def _steps(self, s: StepsSpan, out: list[bytes]) -> None:
        """The wire form of each step of `s` as a child span of it, appended to `out` (each a
        ScopeSpans.spans field). Only the span id and times differ from step to step: the rest
        is the parent's ids and the step's name, its kind and flags (`_step`, once per name)."""
        ctx = s.get_span_context()
        assert ctx is not None
        # trace id, parent span id, and the tag and length of the span id that follows them
        head = _field(1, ctx.trace_id.to_bytes(16, "big")) + _field(4, ctx.span_id.to_bytes(8, "big")) + b"\x12\x08"
        names, ends = s.step_names, s.step_ends
        start = s.start_time or 0
        pack, span_id = _TIMES.pack, self._span_id
        for i, end in enumerate(ends):
            frame, name = self._step(names[i])
            out.append(b"".join((frame, head, span_id().to_bytes(8, "big"), name, pack(0x39, start, 0x41, end), _WIRE_UNSET)))
            start = end
        if s.step_error is not None and len(ends) < len(names):
            status = _field(15, Status(code=Status.STATUS_CODE_ERROR, message=s.step_error).SerializeToString())
            body = b"".join((head, span_id().to_bytes(8, "big"), self._step(names[len(ends)])[1],
                             pack(0x39, start, 0x41, s.end_time or 0), status))
            out.append(_field(2, body))

    def _step(self, name: str) -> tuple[bytes, bytes]:
        """For a step named `name` that ends without error: the ScopeSpans.spans tag and length of
        its span (`_STEP_FIXED` bytes and its name's), and its name, kind and flags fields."""
        found = self._names.get(name)
        if found is None:
            fields = _field(5, name.encode()) + _KIND_INTERNAL_FLAGS_LOCAL
            found = self._names[name] = (_TAGS[2] + _varint(_STEP_FIXED + len(fields)), fields)
        return found

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        for s in spans:
            resource, scope = s.resource, s.instrumentation_scope
            by_scope = groups.setdefault(id(resource), (resource, {}))[1]
            out = by_scope.setdefault(id(scope), (scope, []))[1]
            out.append(_field(2, _span(s)))
            if isinstance(s, StepsSpan):
                self._steps(s, out)
        resource_spans = []
        for resource, by_scope in groups.values():
            scope_spans = [
                _field(1, self._scope(scope)) + b"".join(encoded)
                + (_field(3, scope.schema_url.encode()) if scope is not None and scope.schema_url else b"")
                for scope, encoded in by_scope.values()
            ]
            body = _field(1, self._resource(resource)) + b"".join(_field(2, x) for x in scope_spans)
            if resource.schema_url:
                body += _field(3, resource.schema_url.encode())
            resource_spans.append(_field(1, body))
        return b"".join(resource_spans)


def env_headers() -> dict[str, str]:
    """Headers for the collector (its API key, say) from `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or
    `OTEL_EXPORTER_OTLP_HEADERS` (`name=value,...`, URL-encoded), as the SDK's exporter reads them:
    from the environment, so a collector's key stays out of the config file."""
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or os.environ.get("OTEL_EXPORTER_OTLP_HEADERS") or ""
    return dict(parse_env_headers(raw, liberal=True))


class OtlpHttpExporter(SpanExporter):
    """POST batches of spans to an OTLP/HTTP collector (`endpoint` ends in /v1/traces)."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint, self.timeout = endpoint, timeout
        self._headers = {**env_headers(), "content-type": "application/x-protobuf"}
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
                r = self._client.post(self.endpoint, content=body, headers=self._headers)
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
