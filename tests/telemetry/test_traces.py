"""Traces (issue 16, item 1): one span per decision, a child per pipeline step and for the upstream
call, sent over OTLP/HTTP to a real receiver; the agent's traceparent continued; never a raw PII
value or secret in an attribute; off by default with nothing loaded."""

from __future__ import annotations

import subprocess
import sys
import uuid

from gateway.pipeline.decision import REQUEST_STEPS
from tests.clients import chat, client
from tests.fakes import REPO, VENDOR_ENV, FakeVendor
from tests.processes import GatewayProcess
from tests.telemetry.receivers import OtlpReceiver, Span, wait_for

CHAT = "https://api.openai.com/v1/chat/completions"
EMAIL, PHONE = "jane.doe@example.com", "+1 415 555 0199"
AGENT_TRACE, AGENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
STEPS = [f"egress.step.{s.name}" for s in REQUEST_STEPS]


def _trace(otlp: OtlpReceiver, decision_id: str, spans: int) -> dict[str, list[Span]]:
    found = wait_for(lambda: (t := otlp.trace_of(decision_id)) and len(t) >= spans and t, f"{spans} spans of {decision_id}")
    by_name: dict[str, list[Span]] = {}
    for span in found:
        by_name.setdefault(span.name, []).append(span)
    return by_name


def _values(span: Span) -> list[str]:
    return [str(x) for v in span.attributes.values() for x in (v if isinstance(v, list) else [v])]


def _assert_nothing_secret(otlp: OtlpReceiver) -> None:
    """Every attribute value of every span received so far: no PII of these tests, no vendor key."""
    secrets = [EMAIL, PHONE, "jane.doe", *VENDOR_ENV.values()]
    leaked = [(s.name, value) for s in otlp.spans for value in _values(s) for secret in secrets if secret in value]
    assert otlp.spans and not leaked, leaked


def test_an_allowed_call_is_one_trace_continuing_the_agents(observed: GatewayProcess, otlp: OtlpReceiver,
                                                            vendor: FakeVendor) -> None:
    sub = f"traced-{uuid.uuid4().hex[:8]}"
    headers = {"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01", "tracestate": f"vendor=mail-{EMAIL}", "x-note": PHONE}
    with client(observed, observed.token(sub=sub, role="research", tenant="acme", scopes=("openai:*",))) as c:
        r = c.post(CHAT, json=chat(f"write to {EMAIL} or call {PHONE}"), headers=headers)
    assert r.status_code == 200
    decision_id = r.headers["x-egress-decision-id"]
    by_name = _trace(otlp, decision_id, 2 + len(STEPS))

    (decision,) = by_name["egress.decision"]
    assert (decision.trace_id, decision.parent_span_id) == (AGENT_TRACE, AGENT_SPAN)
    assert decision.service == "egress-under-test" and decision.status_code == 0
    assert {k: v for k, v in decision.attributes.items() if k != "egress.decision_id"} == {
        "egress.agent.sub": sub, "egress.agent.role": "research", "egress.agent.tenant": "acme",
        "egress.connector": "openai", "egress.action": "chat_completions", "egress.decision": "allow",
        "server.address": "api.openai.com", "http.request.method": "POST",
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
    }
    assert sorted(n for n in by_name if n.startswith("egress.step.")) == sorted(STEPS)
    assert all(len(by_name[n]) == 1 and by_name[n][0].parent_span_id == decision.span_id for n in STEPS)
    (upstream,) = by_name["egress.upstream"]
    assert upstream.parent_span_id == decision.span_id and upstream.attributes["http.response.status_code"] == 200
    assert {k: v for k, v in upstream.attributes.items() if k != "http.response.status_code"} == decision.attributes
    # propagate: true -> the vendor gets the decision's span as its parent, and no agent tracestate.
    sent = vendor.received[-1].headers
    assert sent["traceparent"] == f"00-{AGENT_TRACE}-{decision.span_id}-01" and "tracestate" not in sent
    _assert_nothing_secret(otlp)


def test_a_refused_call_ends_at_its_step_with_its_code(observed: GatewayProcess, otlp: OtlpReceiver,
                                                       vendor: FakeVendor) -> None:
    sub = f"refused-{uuid.uuid4().hex[:8]}"
    with client(observed, observed.token(sub=sub, role="finance", scopes=("stripe:*",))) as c:
        r = c.post(f"{CHAT}?email={EMAIL}", json=chat(f"mail {EMAIL}"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "scope_denied"
    steps_run = STEPS[: STEPS.index("egress.step.scopes") + 1]
    by_name = _trace(otlp, r.headers["x-egress-decision-id"], 1 + len(steps_run))
    (decision,) = by_name["egress.decision"]
    assert decision.parent_span_id == "" and decision.status_code == 2 and decision.status_message == "scope_denied"
    assert decision.attributes["egress.decision"] == "deny" and decision.attributes["egress.code"] == "scope_denied"
    assert sorted(n for n in by_name if n != "egress.decision") == sorted(steps_run)
    assert [by_name[n][0].status_message for n in steps_run if by_name[n][0].status_code == 2] == ["scope_denied"]
    assert all(by_name[n][0].events == 0 for n in steps_run)  # no exception event (message, stack) recorded
    assert not vendor.received
    _assert_nothing_secret(otlp)


def test_a_hostile_traceparent_neither_parents_nor_hides_the_call(observed: GatewayProcess, otlp: OtlpReceiver) -> None:
    token = observed.token(sub=f"hostile-{uuid.uuid4().hex[:8]}", role="research", scopes=("openai:*",))
    bad = [
        f"00-{'0' * 32}-{AGENT_SPAN}-01",  # an all-zero trace id
        f"ff-{AGENT_TRACE}-{AGENT_SPAN}-01",  # an unknown version
        f"00-{AGENT_TRACE}-{AGENT_SPAN}-01" + f";{EMAIL}" * 50,  # a valid start, a long tail
        f"00-{AGENT_TRACE.upper()}-{AGENT_SPAN}-01",
    ]
    with client(observed, token) as c:
        ids = [c.post(CHAT, json=chat("hi"), headers={"traceparent": tp}).headers["x-egress-decision-id"] for tp in bad]
        # Not sampled (flags 00) by the agent: the gateway records the decision all the same.
        unsampled = c.post(CHAT, json=chat("hi"), headers={"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-00"})
    for decision_id in ids:
        (decision,) = _trace(otlp, decision_id, 2 + len(STEPS))["egress.decision"]
        assert decision.parent_span_id == "" and decision.trace_id != AGENT_TRACE
    (decision,) = _trace(otlp, unsampled.headers["x-egress-decision-id"], 2 + len(STEPS))["egress.decision"]
    assert decision.parent_span_id == AGENT_SPAN
    _assert_nothing_secret(otlp)


def test_off_by_default_strips_trace_headers_and_loads_no_sdk(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    with client(gateway, gateway.token(scopes=("openai:*",))) as c:
        r = c.post(CHAT, json=chat("hi"), headers={"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01", "tracestate": "a=b"})
    assert r.status_code == 200
    assert not {"traceparent", "tracestate"} & set(vendor.received[-1].headers)
    # What `egress-gateway run` imports and builds on the default config: no OpenTelemetry module.
    probe = (
        "import sys; from gateway import config, runtime; from gateway.proxy import server; "
        "rt = runtime.build(config.load(None, {'state_dir': sys.argv[1]})); "
        "assert rt.tracing is None and rt.siem is None and rt.baselines is None; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(gateway.root / "probe-state")], capture_output=True, text=True,
                         cwd=REPO, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
