"""Section 4: SIGKILL of the gateway with 100 calls in flight (streams among them), then a restart.

The vendor holds every call it receives, so all 100 are provably in flight when the gateway dies.
The gateway sends each call's decision id upstream (`X-Egress-Decision-Id`), so "every call that
reached the vendor has an audit record" is an exact join of the vendor's log with the audit log.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.chaos.faults import FaultVendor
from tests.chaos.harness import CHAT, EMAIL, PAY, agent, code_of, send
from tests.chaos.report import ChaosReport
from tests.clients import chat, client
from tests.processes import GatewayProcess, RedisServer

IN_FLIGHT, STREAMS = 100, 30


def _call(report: ChaosReport, gw: GatewayProcess, n: int) -> str:
    try:
        if n < STREAMS:
            with client(gw, agent(gw, "chatter", sub=f"streamer-{n}")) as c, c.stream(
                "POST", CHAT, json=chat(f"stream number {n}", stream=True)
            ) as r:
                for _ in r.iter_lines():
                    pass
            report.track(r)
        else:
            with client(gw, agent(gw, "payer", sub=f"payer-{n}")) as c:
                send(report, c, "POST", PAY, data={"amount": "100", "currency": "usd"})
        return "answered"
    except httpx.HTTPError as e:
        if n < STREAMS:
            report.track(e)
        return "cut"


@pytest.mark.chaos_full  # ~10 s; a worker SIGKILLed under load is in the default run (tests/fleet/test_workers.py)
def test_sigkill_with_100_calls_in_flight(chaos_gateway, fault_vendor: FaultVendor, redis: RedisServer, report: ChaosReport) -> None:
    gw = chaos_gateway(fault_vendor, stores={"rate_limits": redis.url})
    with client(gw, agent(gw, "payer", sub="budget-keeper")) as c:
        spent = [code_of(send(report, c, "POST", PAY, data={"amount": "3000", "currency": "usd"})) for _ in range(3)]
    assert spent == ["200"] * 3  # 9000 of the 10000 daily budget
    with client(gw, agent(gw, "chatter", sub="revealer")) as c:
        assert send(report, c, "POST", CHAT, json=chat(f"write to {EMAIL}")).status_code == 200
    token = next(w for w in fault_vendor.seen()[-1].json()["messages"][0]["content"].split() if w.startswith("tok_"))

    fault_vendor.mode = "hold"
    held_from = len(fault_vendor.seen())
    pool = ThreadPoolExecutor(max_workers=IN_FLIGHT)
    futures = [pool.submit(_call, report, gw, n) for n in range(IN_FLIGHT)]
    deadline = time.monotonic() + 60
    while len(fault_vendor.seen()) - held_from < IN_FLIGHT and time.monotonic() < deadline:
        time.sleep(0.05)
    in_flight = len(fault_vendor.seen()) - held_from
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    fault_vendor.release.set()
    fates = [f.result(timeout=60) for f in futures]
    pool.shutdown()

    with report.case(f"SIGKILL with {IN_FLIGHT} calls in flight ({STREAMS} streams)", "all cut, none answered") as case:
        case.observed = f"{in_flight} held at the vendor; {fates.count('cut')} cut, {fates.count('answered')} answered"
        assert in_flight == IN_FLIGHT and fates.count("cut") == IN_FLIGHT

    gw.start()
    with report.case("restart after SIGKILL: audit verify", "exit 0") as case:
        verify = gw.cli("audit", "verify", check=False)
        case.observed = f"exit {verify.returncode}: {verify.stdout.strip()[:60]}"
        assert verify.returncode == 0, verify.stdout + verify.stderr
    with report.case("restart after SIGKILL: every vendor call audited", "0 missing decision records") as case:
        allowed = {r["decision_id"] for r in gw.audit() if r.get("phase") == "decision" and r.get("decision") == "allow"}
        vendor_ids = [s.decision_id for s in fault_vendor.seen()]
        missing = [d for d in vendor_ids if d not in allowed]
        case.observed = f"{len(vendor_ids)} vendor calls, {len(missing)} missing"
        assert vendor_ids and None not in vendor_ids and not missing
    with report.case("restart after SIGKILL: earlier token detokenizes", "value restored") as case:
        r = httpx.post(f"{gw.api_url}/v1/detokenize", json={"text": f"to {token}"}, timeout=10,
                       headers={"Authorization": f"Bearer {agent(gw, 'chatter', sub='revealer')}"})
        restored = r.json().get("text") == f"to {EMAIL}"
        case.observed = f"{r.status_code}, restored={restored}"
        assert r.status_code == 200 and restored
    with report.case("restart after SIGKILL: Redis budget kept", "429 budget_exceeded (9000 of 10000 spent)") as case:
        with client(gw, agent(gw, "payer", sub="budget-keeper")) as c:
            case.observed = code_of(send(report, c, "POST", PAY, data={"amount": "3000", "currency": "usd"}))
        assert case.observed == "429 budget_exceeded"


def test_budget_race_survives_restart_midway(chaos_gateway, fault_vendor: FaultVendor, redis: RedisServer, report: ChaosReport) -> None:
    """Half a budget spent, a clean SIGKILL between calls, the other half spent: never more."""
    gw = chaos_gateway(fault_vendor, stores={"rate_limits": redis.url})
    with client(gw, agent(gw, "payer", sub="halves")) as c:
        first = [code_of(send(report, c, "POST", PAY, data={"amount": "1000", "currency": "usd"})) for _ in range(5)]
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    gw.start()
    with client(gw, agent(gw, "payer", sub="halves")) as c:
        second = [code_of(send(report, c, "POST", PAY, data={"amount": "1000", "currency": "usd"})) for _ in range(7)]
    with report.case("budget across a SIGKILL (Redis)", "exactly 10 x 1000 of 10000 allowed") as case:
        allowed = (first + second).count("200")
        case.observed = f"{allowed} allowed, then {second[-1]}"
        assert allowed == 10 and second[-2:] == ["429 budget_exceeded"] * 2

