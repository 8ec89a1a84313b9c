"""Section 1, the circuit breaker: each failure kind opens it on its own; open means no dialing;
one half-open probe closes it (or re-opens it if the vendor is still down)."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator

import pytest

from tests.chaos import harness
from tests.chaos.faults import FaultVendor
from tests.chaos.harness import BALANCE, agent, code_of, send
from tests.chaos.report import ChaosReport
from tests.clients import client
from tests.fakes import PKI
from tests.processes import GatewayProcess

FAILURES = 3
RESET = 1.0


def _trip(report: ChaosReport, gw: GatewayProcess) -> list[str]:
    with client(gw, agent(gw, "chatter")) as c:
        return [code_of(send(report, c, "GET", BALANCE)) for _ in range(FAILURES)]


def _after_reset(report: ChaosReport, gw: GatewayProcess) -> str:
    """The first answer once the circuit may probe again (polled, bounded: no timing assertion)."""
    deadline = time.monotonic() + RESET + 10
    with client(gw, agent(gw, "chatter")) as c:
        while True:
            seen = code_of(send(report, c, "GET", BALANCE))
            if seen != "503 circuit_open" or time.monotonic() > deadline:
                return seen
            time.sleep(0.2)


@pytest.fixture(scope="module")
def breaker_gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, fault_vendor_server: FaultVendor) -> Iterator[GatewayProcess]:
    """One gateway for every failure kind (a start costs seconds): each case ends with a probe that
    succeeds, and a success clears the host's and the agent's breaker state, so the next kind meets
    a closed circuit with no failures counted, as on a fresh gateway."""
    gw = harness.launch(tmp_path_factory.mktemp("breaker"), pki, fault_vendor_server,
                        breaker={"failures": FAILURES, "reset": f"{RESET}s"}, timeouts={"connect": "2s", "read": "1s"})
    yield gw
    harness.retire(gw)


@pytest.mark.parametrize(
    ("mode", "cert", "first"),
    [
        ("status_500", "good", "500"),
        ("reset_before_headers", "good", "502 upstream_failed"),
        ("ok", "wrong_host", "502 upstream_tls"),
        pytest.param("slow_headers", "good", "504 upstream_timeout", marks=pytest.mark.chaos_full),
    ],
)
def test_breaker_opens_fast_without_dialing_and_a_probe_closes_it(
    breaker_gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport, mode: str, cert: str, first: str
) -> None:
    gw = breaker_gw
    fault_vendor.reset(mode)
    fault_vendor.cert = cert
    kind = mode.replace("_", " ") if cert == "good" else f"{cert.replace('_', '-')} cert"
    with report.case(f"breaker: {FAILURES} x {kind}", f"{first} x{FAILURES}, then 503 circuit_open, no dial") as case:
        codes = _trip(report, gw)
        dialed = fault_vendor.connections
        with client(gw, agent(gw, "chatter")) as c:
            r = send(report, c, "GET", BALANCE)
        case.observed = f"{codes[0]} x{codes.count(codes[0])}, then {code_of(r)}, dials +{fault_vendor.connections - dialed}"
        assert codes == [first] * FAILURES
        assert code_of(r) == "503 circuit_open" and int(r.headers["retry-after"]) >= 1
        assert fault_vendor.connections == dialed  # refused without dialing
    with report.case(f"breaker after {kind}: half-open probe, vendor still down", f"{first}, then 503 circuit_open") as case:
        probe = _after_reset(report, gw)
        with client(gw, agent(gw, "chatter")) as c:
            again = code_of(send(report, c, "GET", BALANCE))
        case.observed = f"{probe}, then {again}"
        assert (probe, again) == (first, "503 circuit_open")
    fault_vendor.reset("ok")
    with report.case(f"breaker after {kind}: half-open probe, vendor back", "200, then 200 (closed)") as case:
        probe = _after_reset(report, gw)
        with client(gw, agent(gw, "chatter")) as c:
            after = code_of(send(report, c, "GET", BALANCE))
        case.observed = f"{probe}, then {after}"
        assert (probe, after) == ("200", "200")


def test_a_lost_probe_does_not_hold_the_circuit_open(chaos_gateway, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    """The half-open probe is let through, then refused by a later fault (here its audit record
    cannot be written: the state dir is full), so it never reports back to the breaker."""
    gw = chaos_gateway(fault_vendor, breaker={"failures": 1, "reset": f"{RESET}s"})
    assert gw.proc is not None
    fault_vendor.reset("reset_before_headers")
    with client(gw, agent(gw, "chatter")) as c:
        assert code_of(send(report, c, "GET", BALANCE)) == "502 upstream_failed"
    fault_vendor.reset("ok")
    size = gw.audit_file.stat().st_size
    resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
    try:
        lost = _after_reset(report, gw)
    finally:
        resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    with report.case("breaker: half-open probe lost (refused after the breaker let it go)", "a new probe later: 200") as case:
        probe = _after_reset(report, gw)
        case.observed = f"lost probe {lost}, next probe {probe}"
        assert (lost, probe) == ("503 store_unavailable", "200")
