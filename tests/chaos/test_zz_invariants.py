"""Section 7 and the suite's totals, checked last (this file sorts after every other chaos file).

Leak check: every byte every chaos gateway wrote (its log, audit log, state dir including the
sealed vault, its metrics scrape), every error body the suite collected and Redis's contents are
searched for the raw PII values and vendor secrets the suite used; what the fault vendor received
is searched for the raw PII values and for agent tokens (the vendor must get its own credential,
and nothing else secret). Lost audit records: every call the fault vendor saw carries its decision
id, and each must have an `allow` decision record in some gateway's audit log.

The check never depends on what ran before it: it first sends traffic of its own through a gateway
of its own (every PII value, every vendor's key injected), so run alone, or after a `-k` selection,
it still has calls to check, and it fails if that traffic did not happen as intended.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.chaos import harness
from tests.chaos.faults import FaultVendor
from tests.chaos.harness import CHAT, PII, SEARCH, SECRETS, agent, code_of, send
from tests.chaos.report import ChaosReport
from tests.clients import chat, client
from tests.processes import GatewayProcess

CUSTOMERS = "https://api.stripe.com/v1/customers"


def _needles(values: tuple[str, ...]) -> set[bytes]:
    """Each value as sent, and without its spaces (a card or phone number reformatted)."""
    return {v.encode() for v in values} | {v.replace(" ", "").encode() for v in values}


def _written(report: ChaosReport) -> list[tuple[str, bytes]]:
    """Everything the chaos gateways wrote, each read once it has exited (retired gateways are
    stopped without waiting)."""
    blobs: list[tuple[str, bytes]] = []
    for gw in report.gateways:
        gw.stop()
        for path in sorted(Path(gw.root).rglob("*")):
            if path.is_file() and path.name != "gateway.yaml":
                blobs.append((str(path.relative_to(gw.root.parent)), path.read_bytes()))
    blobs += [("metrics scrape", s.encode()) for s in report.scrapes]
    blobs += [("error body", b) for b in report.error_bodies]
    blobs += [("redis", b) for b in report.redis_dumps]
    return blobs


def _own_traffic(report: ChaosReport, chaos_gateway: Callable[..., GatewayProcess], vendor: FaultVendor) -> None:
    """Every PII value the suite names, sent to each vendor by an agent whose policy tokenizes it;
    the gateway is stopped (after its metrics scrape) so everything it wrote is on disk."""
    gw = chaos_gateway(vendor, name="invariants")
    with client(gw, agent(gw, "chatter", sub="invariants")) as c:
        codes = [
            code_of(send(report, c, "POST", CHAT, json=chat(" and ".join(PII)))),
            code_of(send(report, c, "GET", SEARCH, params={"q": f"who is {PII[0]}"})),
            code_of(send(report, c, "POST", CUSTOMERS, data={"email": PII[3], "phone": PII[1]})),
        ]
    harness.retire(gw)
    sent = b"".join(s.raw for s in vendor.seen())
    tokens = set(re.findall(rb"tok_([A-Z_]+?)_[a-z2-7]{20}", sent))
    assert codes == ["200"] * 3, codes
    assert tokens == {b"EMAIL_ADDRESS", b"PHONE_NUMBER", b"CREDIT_CARD"}, tokens  # the PII did pass through


def test_nothing_leaked_and_nothing_unaudited(
    report: ChaosReport, fault_vendor: FaultVendor, chaos_gateway: Callable[..., GatewayProcess]
) -> None:
    _own_traffic(report, chaos_gateway, fault_vendor)
    written = _written(report)
    gateway_hits = [(where, n) for where, blob in written for n in _needles(PII + SECRETS) if n in blob]
    vendor = fault_vendor.history
    vendor_hits = [(s.decision_id, n) for s in vendor for n in _needles(PII) | {b"eyJ"} if n in s.raw]
    report.leaked = len(gateway_hits) + len(vendor_hits)
    allowed: set[str] = set()
    for gw in report.gateways:
        allowed |= {r["decision_id"] for r in gw.audit() if r.get("phase") == "decision" and r.get("decision") == "allow"}
    lost = [s for s in vendor if s.decision_id not in allowed]
    report.lost_audit = len(lost)
    with report.case(f"leak check: {len(written)} gateway files/scrapes/bodies, {len(vendor)} vendor requests", "0 hits") as case:
        case.observed = f"{report.leaked} hits" + (f" in {sorted({w for w, _ in gateway_hits})[:3]}" if gateway_hits else "")
        assert report.leaked == 0  # the hit list names places, never the values
    with report.case(f"audit completeness: {len(vendor)} calls the vendor saw", "0 without a decision record") as case:
        case.observed = f"{len(lost)} without a record"
        assert not lost
