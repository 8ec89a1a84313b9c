"""The gateway's OTLP encoder (`gateway.telemetry.otlp.Encoder`) against the OpenTelemetry SDK's own
(`encode_spans`, what `OTLPSpanExporter` sends): both outputs decoded with the official protobuf
classes must be equal, for generated spans of every shape the SDK can finish (attributes of every
type, events, links, trace state, remote and missing parents, statuses, dropped counts, several
resources and scopes), and for a decision's span whose steps travel as numbers (`StepsSpan`)
against the same steps built as SDK spans one by one."""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from gateway.telemetry.otlp import Encoder, StepsSpan

RESOURCES = [
    Resource.create({"service.name": "egress-gateway"}),
    Resource({"service.name": "other", "host.cores": 2, "ratio": 0.5, "up": True}, schema_url="https://opentelemetry.io/schemas/1.21.0"),
]
SCOPES = [InstrumentationScope("egress-gateway"), InstrumentationScope("lib", "1.2.3", "https://example.test/s", {"k": "v"}), None]

text = st.text(alphabet=string.printable + "éü€\u2028", max_size=40)
scalar: st.SearchStrategy[AttributeValue] = st.one_of(
    text, st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
)
attribute_value = st.one_of(
    scalar, st.lists(text, max_size=4).map(tuple), st.lists(st.integers(-(2**31), 2**31), max_size=4).map(tuple),
    st.lists(st.booleans(), max_size=3), st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3),
)
attributes = st.dictionaries(st.text(alphabet=string.ascii_letters + "._", min_size=1, max_size=20), attribute_value, max_size=6)
ids64 = st.integers(1, 2**64 - 1)
contexts = st.builds(
    lambda t, s, remote, state: SpanContext(t, s, remote, TraceFlags(TraceFlags.SAMPLED), TraceState(state)),
    st.integers(1, 2**128 - 1), ids64, st.booleans(),
    st.lists(st.tuples(st.sampled_from(["a", "vendor", "k1"]), st.sampled_from(["1", "x-y", "z"])), max_size=2, unique_by=lambda kv: kv[0]),
)
statuses = st.one_of(
    st.just(Status(StatusCode.UNSET)), st.just(Status(StatusCode.OK)),
    st.builds(lambda d: Status(StatusCode.ERROR, d), st.one_of(st.none(), text)),
)


@st.composite
def spans(draw: st.DrawFn) -> ReadableSpan:
    ctx = draw(contexts)
    start = draw(st.integers(0, 2**63))
    events = [Event(draw(text), draw(attributes), draw(st.integers(0, 2**63))) for _ in range(draw(st.integers(0, 2)))]
    links = [Link(draw(contexts), draw(attributes)) for _ in range(draw(st.integers(0, 2)))]
    attrs = draw(attributes)
    bounded = draw(st.booleans())  # bounded as the SDK's Span leaves them, some dropped
    return ReadableSpan(
        draw(text), ctx, draw(st.one_of(st.none(), contexts)), draw(st.sampled_from(RESOURCES)),
        BoundedAttributes(2, attrs) if bounded else attrs,
        events=BoundedList.from_seq(1, events) if bounded else events,
        links=BoundedList.from_seq(1, links) if bounded else links, kind=draw(st.sampled_from(list(SpanKind))), status=draw(statuses),
        start_time=start, end_time=start + draw(st.integers(0, 10**9)),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
    )


def _decoded(data: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(data)


@settings(max_examples=150, deadline=None)
@given(st.lists(spans(), min_size=1, max_size=8))
def test_any_sdk_span_encodes_as_the_sdk_encoder_does(batch: list[ReadableSpan]) -> None:
    assert _decoded(Encoder().encode(batch)) == encode_spans(batch)


def _step_ids() -> Iterator[int]:
    return itertools.count(0x1000)


def _steps_as_sdk_spans(decision: StepsSpan, ids: Iterator[int]) -> list[ReadableSpan]:
    """What a StepsSpan stands for, as the SDK's spans: the decision, then one child per step."""
    ctx = decision.get_span_context()
    assert ctx is not None and decision.start_time is not None
    out: list[ReadableSpan] = [ReadableSpan(
        decision.name, ctx, decision.parent, decision.resource, decision.attributes, kind=decision.kind,
        status=decision.status, start_time=decision.start_time, end_time=decision.end_time,
        instrumentation_scope=decision.instrumentation_scope,
    )]
    ran: list[tuple[str, int, Status]] = [(n, e, Status(StatusCode.UNSET)) for n, e in zip(decision.step_names, decision.step_ends)]
    if decision.step_error is not None and len(decision.step_ends) < len(decision.step_names):
        assert decision.end_time is not None
        ran.append((decision.step_names[len(decision.step_ends)], decision.end_time, Status(StatusCode.ERROR, decision.step_error)))
    start = decision.start_time
    for name, end, status in ran:
        child = SpanContext(ctx.trace_id, next(ids), False, TraceFlags(TraceFlags.SAMPLED))
        out.append(ReadableSpan(name, child, ctx, decision.resource, kind=SpanKind.INTERNAL, status=status, start_time=start,
                                end_time=end, instrumentation_scope=decision.instrumentation_scope))
        start = end
    return out


def _decision(steps: int, ran: int, error: str | None, parent: SpanContext | None, names: list[str]) -> StepsSpan:
    start = 1_765_000_000_000_000_000
    attrs: dict[str, Any] = {"egress.decision_id": "dec_1", "egress.decision": "deny" if error else "allow"}
    return StepsSpan(
        "egress.decision", SpanContext(0xABC, 0xDEF, False, TraceFlags(TraceFlags.SAMPLED)), parent, RESOURCES[0], attrs,
        kind=SpanKind.SERVER, status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
        start_time=start, end_time=start + 1000 * (ran + 1), instrumentation_scope=SCOPES[0],
        step_names=tuple(names[:steps]), step_ends=[start + 1000 * (i + 1) for i in range(ran)], step_error=error,
    )


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 14).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
    st.one_of(st.none(), st.sampled_from(["scope_denied", "internal_error", "a" * 128])),
    st.one_of(st.none(), contexts),
    st.lists(st.text(alphabet=string.ascii_lowercase + "._é", min_size=1, max_size=200), min_size=14, max_size=14),
)
def test_a_decisions_steps_encode_as_the_sdk_spans_they_stand_for(
    shape: tuple[int, int], error: str | None, parent: SpanContext | None, names: list[str],
) -> None:
    steps, ran = shape
    decision = _decision(steps, ran, error, parent, [f"egress.step.{n}" for n in names])
    upstream = ReadableSpan("egress.upstream", SpanContext(0xABC, 0x99, False, TraceFlags(TraceFlags.SAMPLED)),
                            decision.get_span_context(), RESOURCES[0], {"http.response.status_code": 200},
                            kind=SpanKind.CLIENT, start_time=5, end_time=6, instrumentation_scope=SCOPES[0])
    ours = Encoder(span_ids=_step_ids().__next__).encode([decision, upstream])
    expected = encode_spans([*_steps_as_sdk_spans(decision, _step_ids()), upstream])
    # The SDK's encoder lists a batch's spans in order; the steps follow their decision here too.
    assert _decoded(ours) == expected


def test_every_step_gets_its_own_random_span_id() -> None:
    names = [f"egress.step.s{i}" for i in range(14)]
    request = _decoded(Encoder().encode([_decision(14, 14, None, None, names) for _ in range(50)]))
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    children = [s for s in scope_spans.spans if s.name.startswith("egress.step.")]
    assert len(children) == 50 * 14
    assert len({s.span_id for s in children}) == 50 * 14 and all(len(s.span_id) == 8 and any(s.span_id) for s in children)
