"""One agent must not open the circuit for everyone (hardening issue, item 6).

An agent can provoke failures by what it sends (calls past the read timeout, inputs the vendor
chokes on); its own streak opens a circuit for it alone. The circuit shared by every agent opens
only on a streak that spans several agents (`breaker.agents`, default 2)."""

from __future__ import annotations

from tests.chaos.faults import FaultVendor
from tests.chaos.harness import BALANCE, agent, code_of, send
from tests.chaos.report import ChaosReport
from tests.clients import client
from tests.processes import GatewayProcess

FAILURES = 3


def _codes(report: ChaosReport, gw: GatewayProcess, sub: str, n: int) -> list[str]:
    with client(gw, agent(gw, "chatter", sub=sub)) as c:
        return [code_of(send(report, c, "GET", BALANCE)) for _ in range(n)]


def test_one_agents_failures_throttle_that_agent_only(chaos_gateway, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    gw = chaos_gateway(fault_vendor, breaker={"failures": FAILURES, "reset": "60s"})
    fault_vendor.reset("status_500")
    with report.case("breaker: one agent's 3 x 500", "that agent 503 circuit_open; another agent still reaches the vendor") as case:
        own = _codes(report, gw, "noisy", FAILURES + 1)
        fault_vendor.reset("ok")
        other = _codes(report, gw, "bystander", 1)  # a 200 only the vendor gives
        case.observed = f"noisy {own}, bystander {other}"
        assert own == ["500"] * FAILURES + ["503 circuit_open"]
        assert other == ["200"]


def test_failures_across_agents_open_the_shared_circuit(chaos_gateway, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    gw = chaos_gateway(fault_vendor, breaker={"failures": FAILURES, "reset": "60s", "agents": 2})
    fault_vendor.reset("status_500")
    with report.case("breaker: 500s from 2 agents", "a third agent 503 circuit_open without dialing") as case:
        first = _codes(report, gw, "first", 2)
        second = _codes(report, gw, "second", 1)
        dialed = fault_vendor.connections
        third = _codes(report, gw, "third", 1)
        case.observed = f"{first + second}, then third {third}, dials +{fault_vendor.connections - dialed}"
        assert first + second == ["500"] * 3
        assert third == ["503 circuit_open"] and fault_vendor.connections == dialed
