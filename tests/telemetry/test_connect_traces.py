"""Refused CONNECTs are traced like refused requests (issue 16, item 1): a decision taken at
CONNECT time has an audit record, so it is one `egress.decision` span from that record, with no
step spans, continuing the agent's traceparent, and never the proxy credential; a tunnel that opens
has no record and no span of its own (the requests inside are traced as before)."""

from __future__ import annotations

import uuid

import httpx

from tests.clients import basic, chat, client, raw_connect
from tests.processes import GatewayProcess
from tests.telemetry.receivers import OtlpReceiver, Span, wait_for
from tests.telemetry.test_traces import AGENT_SPAN, AGENT_TRACE, CHAT, STEPS

TRACEPARENT = {"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"}


def _spans_of(otlp: OtlpReceiver, decision_id: str) -> list[Span]:
    """Every span naming this decision (its own, an upstream call's) and every child of its decision
    span, once that has arrived."""
    def named() -> list[Span]:
        return [s for s in list(otlp.spans) if s.attributes.get("egress.decision_id") == decision_id]

    (root,) = [s for s in wait_for(named, f"the span of {decision_id}") if s.name == "egress.decision"]
    children = [s for s in list(otlp.spans) if s.trace_id == root.trace_id and s.parent_span_id == root.span_id]
    return named() + [s for s in children if "egress.decision_id" not in s.attributes]


def _leaked(otlp: OtlpReceiver, *secrets: str) -> list[tuple[str, str]]:
    return [(s.name, str(v)) for s in list(otlp.spans) for v in s.attributes.values() for x in secrets if x in str(v)]


def test_a_connect_to_a_host_nobody_claims_is_one_span(observed: GatewayProcess, otlp: OtlpReceiver) -> None:
    sub = f"wanderer-{uuid.uuid4().hex[:8]}"
    token = observed.token(sub=sub, role="research", tenant="acme", scopes=("*",))
    host = "exfil.jane-doe.example"
    sock, refusal = raw_connect(observed, host, basic(token), headers=TRACEPARENT)
    sock.close()
    err = refusal.error()
    assert err["code"] == "host_denied"
    (span,) = _spans_of(otlp, err["decision_id"])
    assert (span.name, span.trace_id, span.parent_span_id) == ("egress.decision", AGENT_TRACE, AGENT_SPAN)
    assert (span.status_code, span.status_message, span.events) == (2, "host_denied", 0)
    assert span.attributes == {
        "egress.decision_id": err["decision_id"], "egress.agent.sub": sub, "egress.agent.role": "research",
        "egress.agent.tenant": "acme", "egress.decision": "deny", "egress.code": "host_denied",
        "server.address": "_",  # the audit's "…": a host nobody claims is the agent's text, never written
        "http.request.method": "CONNECT",
    }
    assert not _leaked(otlp, host, "jane-doe", token)


def test_a_connect_with_a_bad_token_is_one_span_without_the_token(observed: GatewayProcess, otlp: OtlpReceiver) -> None:
    forged = observed.token(sub=f"forger-{uuid.uuid4().hex[:8]}", scopes=("*",))[:-6] + "AAAAAA"  # signature broken
    sock, refusal = raw_connect(observed, "api.openai.com", basic(forged, user="jane.doe@example.com"), headers=TRACEPARENT,
                                source="127.0.0.2")  # a source of its own: refusals without a token are aggregated per source
    sock.close()
    err = refusal.error()
    assert err["code"] == "identity_invalid"
    (span,) = _spans_of(otlp, err["decision_id"])
    assert (span.trace_id, span.parent_span_id, span.status_message) == (AGENT_TRACE, AGENT_SPAN, "identity_invalid")
    assert span.attributes == {  # no agent: the token did not verify, so nothing it claims is believed
        "egress.decision_id": err["decision_id"], "egress.decision": "deny", "egress.code": "identity_invalid",
        "server.address": "api.openai.com", "http.request.method": "CONNECT",
    }
    assert not _leaked(otlp, forged, forged[:40], "jane.doe")


def test_an_allowed_connect_adds_no_span_to_its_requests(observed: GatewayProcess, otlp: OtlpReceiver) -> None:
    sub = f"tunneller-{uuid.uuid4().hex[:8]}"
    with client(observed, observed.token(sub=sub, role="research", scopes=("openai:*",))) as c:
        r = c.post(CHAT, json=chat("hi"), headers=TRACEPARENT)
    assert r.status_code == 200
    decision_id = r.headers["x-egress-decision-id"]
    wait_for(lambda: len(_spans_of(otlp, decision_id)) == 2 + len(STEPS), "the request's spans")
    spans = _spans_of(otlp, decision_id)
    assert sorted(s.name for s in spans) == sorted(["egress.decision", "egress.upstream", *STEPS])
    # Every span that names this agent is the request's: its decision and its upstream call.
    mine = [s for s in list(otlp.spans) if s.attributes.get("egress.agent.sub") == sub]
    assert sorted((s.name, s.attributes.get("http.request.method")) for s in mine) == [
        ("egress.decision", "POST"), ("egress.upstream", "POST")]


def test_a_quarantined_agents_connect_is_one_span_with_its_agent(observed: GatewayProcess, otlp: OtlpReceiver) -> None:
    sub = f"stopped-{uuid.uuid4().hex[:8]}"
    admin = {"authorization": f"Bearer {observed.token(role='admin')}"}
    url = f"{observed.api_url}/v1/quarantine"
    assert httpx.post(url, json={"sub": sub, "reason": "connect trace"}, headers=admin).status_code == 200
    try:
        token = observed.token(sub=sub, role="research", scopes=("openai:*",))
        sock, refusal = raw_connect(observed, "api.openai.com", basic(token))
        sock.close()
    finally:
        assert httpx.post(url, json={"sub": sub, "reason": "over", "release": True}, headers=admin).status_code == 200
    err = refusal.error()
    assert err["code"] == "quarantined"
    (span,) = _spans_of(otlp, err["decision_id"])
    assert span.parent_span_id == "" and (span.status_code, span.status_message) == (2, "quarantined")
    assert span.attributes == {
        "egress.decision_id": err["decision_id"], "egress.agent.sub": sub, "egress.agent.role": "research",
        "egress.decision": "deny", "egress.code": "quarantined", "server.address": "api.openai.com",
        "http.request.method": "CONNECT",
    }


def test_a_hostile_traceparent_on_a_connect_parents_nothing_and_leaks_nothing(observed: GatewayProcess,
                                                                             otlp: OtlpReceiver) -> None:
    hostile = {"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01;jane.doe@example.com", "tracestate": "a=jane.doe"}
    sock, refusal = raw_connect(observed, "api.openai.com", None, headers=hostile, source="127.0.0.3")
    sock.close()
    err = refusal.error()
    assert err["code"] == "identity_missing"
    (span,) = _spans_of(otlp, err["decision_id"])
    assert span.parent_span_id == "" and span.trace_id != AGENT_TRACE and span.status_message == "identity_missing"
    assert not _leaked(otlp, "jane.doe")


def test_a_flood_without_a_token_is_traced_as_the_audit_log_holds_it(observed: GatewayProcess, otlp: OtlpReceiver) -> None:
    """The audit log writes the first refusal without a token of a source's second and counts the
    rest; the traces follow it, so a flood cannot fill the span queue and push out agents' spans."""
    flood = []
    for _ in range(12):
        sock, refusal = raw_connect(observed, "api.openai.com", None, source="127.0.0.4")
        sock.close()
        flood.append(refusal.error()["decision_id"])
    # A refusal after the flood: once its span is in, everything queued before it was exported.
    token = observed.token(sub=f"sentinel-{uuid.uuid4().hex[:8]}", role="research", tenant="acme", scopes=("*",))
    sock, refusal = raw_connect(observed, "unclaimed.example", basic(token))
    sock.close()
    _spans_of(otlp, refusal.error()["decision_id"])
    traced = {s.attributes.get("egress.decision_id") for s in list(otlp.spans)}
    kept = {r["decision_id"] for r in observed.audit() if r.get("decision_id") in flood}
    assert flood[0] in kept and len(kept) < len(flood)  # the first written, the rest held back
    assert [d for d in flood if d in traced] == [d for d in flood if d in kept]

