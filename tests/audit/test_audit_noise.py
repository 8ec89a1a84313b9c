"""The aggregation of unauthenticated refusals, over generated traffic: nothing authenticated is
held back or changed, every refusal is accounted for, and what is written stays bounded."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.noise import OVERFLOW, UnauthenticatedNoise

# (seconds since the previous record, source number, authenticated?)
EVENTS = st.lists(st.tuples(st.sampled_from([0.0, 0.001, 0.3, 1.0, 2.5]), st.integers(0, 6), st.booleans()), max_size=300)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(i: int, source: int, authenticated: bool) -> dict:
    if authenticated:
        return {"decision_id": f"d{i}", "decision": "deny", "code": "host_denied", "sub": "agent", "jti": "j", "client": f"10.0.0.{source}"}
    return {"decision_id": f"d{i}", "decision": "deny", "code": "identity_missing", "sub": None, "jti": None, "client": f"10.0.0.{source}"}


@given(EVENTS, st.integers(1, 8))
def test_generated_traffic(events: list[tuple[float, int, bool]], max_sources: int) -> None:
    clock = Clock()
    noise = UnauthenticatedNoise(interval=1.0, max_sources=max_sources, clock=clock, wall=clock)
    written: list[tuple[float, dict]] = []
    sent: list[dict] = []
    for i, (step, source, authenticated) in enumerate(events):
        clock.now += step
        rec = record(i, source, authenticated)
        sent.append(rec)
        written += [(clock.now, r) for r in noise.admit(rec)]
    written += [(clock.now, r) for r in noise.flush()]
    records = [r for _, r in written]
    # authenticated records: every one, unchanged, in order
    assert [r for r in records if r.get("sub")] == [r for r in sent if r["sub"]]
    # every unauthenticated refusal is either written or counted in exactly one summary
    plain = [r for r in records if r.get("phase") != "suppressed" and not r.get("sub")]
    summaries = [r for r in records if r.get("phase") == "suppressed"]
    assert len(plain) + sum(s["suppressed"]["count"] for s in summaries) == sum(1 for r in sent if not r["sub"])
    assert all(r in sent for r in plain)
    # per source and interval: at most one refusal written as it is
    per_window = Counter((r["client"], int(t)) for t, r in written if r.get("phase") != "suppressed" and not r.get("sub"))
    assert all(n <= 2 for n in per_window.values()), per_window  # windows straddle integer seconds
    assert {s["client"] for s in summaries} <= {f"10.0.0.{n}" for n in range(7)} | {OVERFLOW}


def test_many_addresses_share_one_overflow_source() -> None:
    clock = Clock()
    noise = UnauthenticatedNoise(interval=1.0, max_sources=3, clock=clock, wall=clock)
    written = [r for n in range(1000) for r in noise.admit(record(n, n, False) | {"client": f"10.1.{n // 256}.{n % 256}"})]
    assert len(written) == 4  # three tracked sources and the overflow one, each once this second
    clock.now = 1.5
    summaries = noise.admit(record(0, 0, True))[:-1]
    assert [s["client"] for s in summaries] == [OVERFLOW] and summaries[0]["suppressed"]["count"] == 996
