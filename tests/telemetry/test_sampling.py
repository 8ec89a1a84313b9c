"""`telemetry.sample_ratio`: the gateway traces a share of its decisions, each one whole or not at
all, chosen by itself: an agent's traceparent (its sampled flag) never decides. An untraced decision
forwards the agent's own traceparent (with `propagate`), as a gateway without tracing does. The same
gateway sends its collector the headers of `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (an API key)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import config
from gateway.errors import ConfigError
from gateway.pipeline.decision import REQUEST_STEPS
from tests.clients import chat, client
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess
from tests.telemetry.conftest import FAST_BATCHES
from tests.telemetry.receivers import OtlpReceiver

CHAT = "https://api.openai.com/v1/chat/completions"
AGENT_TRACE, AGENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
CALLS = 24
# A collector's API key, as an operator gives it: in the environment, URL-encoded
COLLECTOR_HEADERS = "authorization=Bearer%20collector-key-1,x-scope=team%3Dgw"


@pytest.fixture(scope="module")
def half_sampled(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor,
                 otlp: OtlpReceiver) -> Iterator[GatewayProcess]:
    settings = vendor_settings(pki, vendor_server, telemetry={
        "otlp_endpoint": otlp.url, "service_name": "egress-sampled", "propagate": True, "sample_ratio": 0.5,
    })
    env = {**FAST_BATCHES, "OTEL_EXPORTER_OTLP_TRACES_HEADERS": COLLECTOR_HEADERS}
    with GatewayProcess(tmp_path_factory.mktemp("sampled"), settings, env).start() as gw:
        yield gw


def test_a_share_of_decisions_is_traced_whole_whatever_the_agent_asks(half_sampled: GatewayProcess, otlp: OtlpReceiver,
                                                                      vendor: FakeVendor) -> None:
    token = half_sampled.token(sub=f"sampled-{uuid.uuid4().hex[:8]}", role="research", scopes=("openai:*",))
    sent: list[tuple[str, str, str]] = []  # (decision id, the agent's traceparent, what the vendor got)
    with client(half_sampled, token) as c:
        for i in range(CALLS):
            agents = f"00-{AGENT_TRACE}-{AGENT_SPAN}-{'01' if i % 2 else '00'}"
            r = c.post(CHAT, json=chat("hi"), headers={"traceparent": agents})
            assert r.status_code == 200
            sent.append((r.headers["x-egress-decision-id"], agents, vendor.received[-1].headers["traceparent"]))
    half_sampled.stop()  # a gateway that stops exports every span it has queued
    spans = [s for s in otlp.spans if s.service == "egress-sampled"]
    decisions = {s.attributes["egress.decision_id"]: s for s in spans if s.name == "egress.decision"}
    traced = []
    for decision_id, agents, forwarded in sent:
        if forwarded == agents:  # not traced: the vendor got the agent's own header, and no span exists
            assert decision_id not in decisions
            continue
        traced.append(decision_id)
        span = decisions[decision_id]
        assert span.trace_id == AGENT_TRACE and span.parent_span_id == AGENT_SPAN
        assert forwarded == f"00-{AGENT_TRACE}-{span.span_id}-01"
        children = sorted(s.name for s in spans if s.parent_span_id == span.span_id)
        assert children == sorted(["egress.upstream", *(f"egress.step.{s.name}" for s in REQUEST_STEPS)])
    assert sorted(decisions) == sorted(traced) and len(spans) == len(traced) * (2 + len(REQUEST_STEPS))
    # At 0.5 over 24 decisions, all or none traced has a chance of 1 in 8 million: either would
    # mean the ratio was not applied.
    assert 0 < len(traced) < CALLS
    # Every POST of this gateway carried the collector's headers (no other gateway sends them).
    ours = [headers for headers, services in otlp.posts if "egress-sampled" in services]
    assert ours and all(h.get("authorization") == "Bearer collector-key-1" and h.get("x-scope") == "team=gw" for h in ours)
    assert not [h for h, services in otlp.posts if "egress-sampled" not in services and "authorization" in h]


@pytest.mark.parametrize("ratio", [0, -0.5, 1.5, "half"])
def test_a_ratio_outside_0_to_1_is_refused(tmp_path: Path, ratio: object) -> None:
    f = tmp_path / "gateway.yaml"
    f.write_text(f"telemetry: {{otlp_endpoint: 'http://127.0.0.1:4318', sample_ratio: {ratio!r}}}\n")
    with pytest.raises(ConfigError, match="sample_ratio"):
        config.load(f)
