"""Section 1: each upstream fault on its own ends in its documented refusal, or the vendor's answer.

A fault-injecting vendor (tests/chaos/faults.py) stands behind a real gateway process. The gateway
never retries (see gateway/proxy/addon.py): a call reaches the vendor at most once, whatever its method
and whether or not it carries an Idempotency-Key, so the vendor's request count is checked too.
"""

from __future__ import annotations

import httpx
import pytest

from tests.chaos import harness
from tests.chaos.faults import FaultVendor
from tests.chaos.harness import BALANCE, CHAT, PAY, agent, code_of, send
from tests.chaos.report import ChaosReport
from tests.clients import chat, client
from tests.fakes import PKI, VENDOR_HOSTS
from tests.processes import GatewayProcess, free_port


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, fault_vendor_server: FaultVendor):
    g = harness.launch(tmp_path_factory.mktemp("upstream-faults"), pki, fault_vendor_server)
    yield g
    harness.retire(g)


def _one(report: ChaosReport, gw: GatewayProcess, method: str, url: str, **kw: object) -> httpx.Response:
    with client(gw, agent(gw, "chatter")) as c:
        return send(report, c, method, url, **kw)


def _outcome(gw: GatewayProcess, decision_id: str) -> dict:
    return next(r for r in gw.audit() if r.get("decision_id") == decision_id and r.get("phase") == "outcome")


@pytest.mark.parametrize(
    ("mode", "cert", "expected"),
    [
        ("reset_before_headers", "good", "502 upstream_failed"),
        ("reset_mid_body", "good", "502 upstream_failed"),
        ("malformed", "good", "502 upstream_failed"),
        ("slow_headers", "good", "504 upstream_timeout"),
        ("ok", "wrong_host", "502 upstream_tls"),
        ("ok", "expired", "502 upstream_tls"),
    ],
)
def test_fault_ends_in_its_documented_refusal(
    gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport, mode: str, cert: str, expected: str
) -> None:
    fault_vendor.reset(mode)
    fault_vendor.cert = cert
    name = mode if cert == "good" else f"{cert.replace('_', '-')} certificate"
    with report.case(f"upstream: {name.replace('_', ' ')}", expected) as case:
        r = _one(report, gw, "GET", BALANCE)
        case.observed = code_of(r)
        assert case.observed == expected
        assert _outcome(gw, r.headers["x-egress-decision-id"])["code"] == expected.split()[1]
        assert len(fault_vendor.seen()) == (0 if cert != "good" else 1)


# A gateway of its own (~5 s) for what tests/proxy/test_upstream.py::test_refused_connection_is_502_upstream_failed
# checks in the default run (the same fault, the same 502 upstream_failed); this one runs under `make chaos`.
@pytest.mark.chaos_full
def test_connection_refused_is_502(chaos_gateway, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    closed = f"https://127.0.0.1:{free_port()}"
    g = chaos_gateway(fault_vendor, upstreams={h: closed for h in VENDOR_HOSTS})
    with report.case("upstream: connection refused", "502 upstream_failed") as case:
        r = _one(report, g, "GET", BALANCE)
        case.observed = code_of(r)
        assert case.observed == "502 upstream_failed"


@pytest.mark.parametrize("idempotency_key", [None, "idem-chaos-1"])
def test_no_call_is_retried(gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport, idempotency_key: str | None) -> None:
    """A POST the vendor may have acted on is never sent twice; with an Idempotency-Key the agent
    (or its SDK) retries with the same key: the gateway does not add a second retry layer."""
    fault_vendor.reset("reset_before_headers")
    label = "with" if idempotency_key else "without"
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with report.case(f"upstream: reset on a payment POST {label} Idempotency-Key", "502, vendor saw it once") as case:
        r = _one(report, gw, "POST", PAY, data={"amount": "100", "currency": "usd"}, headers=headers)
        seen = fault_vendor.seen()
        case.observed = f"{code_of(r)}, vendor saw it {len(seen)}x"
        assert r.status_code == 502 and len(seen) == 1
        if idempotency_key:  # namespaced per agent (hardening issue, item 13), never dropped
            assert seen[0].headers.get("idempotency-key", "").startswith("egk_")


def test_reset_mid_sse_cuts_the_stream_visibly(gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    """Once the headers are with the agent no error page can follow: the chunked stream ends
    without its last chunk (a client sees a truncated body, never a complete-looking one). If the
    reset overtakes the buffered headers (the kernel drops unread data on RST), it is a plain 502.
    Either way the audit records the failure."""
    fault_vendor.reset("reset_mid_sse")
    expected = "200 then cut, or 502 upstream_failed; audit upstream_failed"
    with report.case("upstream: reset mid-SSE stream", expected) as case:
        with client(gw, agent(gw, "chatter")) as c, c.stream("POST", CHAT, json=chat("a fairly long message to stream", stream=True)) as r:
            decision_id = r.headers["x-egress-decision-id"]
            try:
                body = r.read().decode("utf-8", "replace")  # read, so the 502 branch can parse it
                outcome, cut = code_of(r), False
            except httpx.RemoteProtocolError as e:
                report.track(e)
                outcome, cut = f"{r.status_code} then cut", True
            else:
                report.track(r)
        rec = _outcome(gw, decision_id)
        case.observed = f"{outcome}; audit {rec['code']}"
        assert (cut and r.status_code == 200) or (outcome == "502 upstream_failed" and "[DONE]" not in body)
        assert rec["decision"] == "deny" and rec["code"] == "upstream_failed"


@pytest.mark.parametrize(("trickle_bytes", "expected"), [(5, "200"), (40, "504 upstream_timeout")])
def test_trickled_body_is_bounded_by_the_read_timeout(
    gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport, trickle_bytes: int, expected: str
) -> None:
    """The read timeout (2 s here) covers the whole buffered response, body included."""
    fault_vendor.reset("trickle_body")
    fault_vendor.trickle, fault_vendor.trickle_bytes = 0.2, trickle_bytes
    seconds = trickle_bytes * 0.2
    with report.case(f"upstream: body trickled over {seconds:.0f} s (read timeout 2 s)", expected) as case:
        r = _one(report, gw, "GET", BALANCE)
        case.observed = code_of(r)
        assert case.observed == expected
        if r.status_code == 200:
            assert r.content == b"x" * trickle_bytes


def test_vendor_5xx_passes_through_as_the_vendors_answer(gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    fault_vendor.reset("status_500")
    with report.case("upstream: vendor answers 500", "vendor's 500 passed through, audited") as case:
        r = _one(report, gw, "GET", BALANCE)
        rec = _outcome(gw, r.headers["x-egress-decision-id"])
        case.observed = f"{r.status_code} {r.json()['error']['type']}; audit upstream_status {rec['upstream_status']}"
        assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
        assert rec["upstream_status"] == 500
