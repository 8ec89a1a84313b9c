"""Section 7 and the suite's totals, checked last (this file sorts after every other chaos file).

Leak check: every byte every chaos gateway wrote (its log, audit log, state dir including the
sealed vault, its metrics scrape), every error body the suite collected and Redis's contents are
searched for the raw PII values and vendor secrets the suite used; what the fault vendor received
is searched for the raw PII values and for agent tokens (the vendor must get its own credential,
and nothing else secret). Lost audit records: every call the fault vendor saw carries its decision
id, and each must have an `allow` decision record in some gateway's audit log.
"""

from __future__ import annotations

from pathlib import Path

from tests.chaos.faults import FaultVendor
from tests.chaos.harness import PII, SECRETS
from tests.chaos.report import ChaosReport


def _needles(values: tuple[str, ...]) -> set[bytes]:
    """Each value as sent, and without its spaces (a card or phone number reformatted)."""
    return {v.encode() for v in values} | {v.replace(" ", "").encode() for v in values}


def _written(report: ChaosReport) -> list[tuple[str, bytes]]:
    blobs: list[tuple[str, bytes]] = []
    for gw in report.gateways:
        for path in sorted(Path(gw.root).rglob("*")):
            if path.is_file() and path.name != "gateway.yaml":
                blobs.append((str(path.relative_to(gw.root.parent)), path.read_bytes()))
    blobs += [("metrics scrape", s.encode()) for s in report.scrapes]
    blobs += [("error body", b) for b in report.error_bodies]
    blobs += [("redis", b) for b in report.redis_dumps]
    return blobs


def test_nothing_leaked_and_nothing_unaudited(report: ChaosReport, fault_vendor_server: FaultVendor) -> None:
    if not report.gateways:
        return  # run on its own: nothing to check
    written = _written(report)
    gateway_hits = [(where, n) for where, blob in written for n in _needles(PII + SECRETS) if n in blob]
    vendor = fault_vendor_server.history
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
