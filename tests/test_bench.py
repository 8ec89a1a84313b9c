"""`make bench`'s own parts work: a benchmark that crashes, or measures refusals as fast
successes, reports nothing true. The figures themselves are the benchmark's, never asserted here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import decision, loadgen, static_vendor
from bench.fleet_bench import STRIPE
from tests.fakes import PKI, VENDOR_HOSTS, FakeVendor


def test_the_in_process_decision_bench_times_allowed_calls(tmp_path: Path) -> None:
    # measure() asserts every timed decision is an allow: it failed when the bench built its
    # decision context without the policy set, and `make bench` crashed.
    steps, totals, audit = decision.measure(tmp_path, 120)
    assert [t.name for t in steps] == [s.name for s in decision.REQUEST_STEPS if s.name != decision.NOT_SUMMED]
    assert all(t.p50_us > 0 for t in [*steps, *totals, audit])


def _direct(port: int, ca: Path, clients: int, requests: int) -> loadgen.Load:
    return loadgen.Load(port, False, None, str(ca), STRIPE, clients, requests, 2)


def test_a_paced_load_sends_every_request_on_its_schedule(pki: PKI, vendor: FakeVendor) -> None:
    result = loadgen.run_paced(_direct(vendor.port, pki.ca_file, 4, 10), rate=200.0)
    assert len(result.latencies) == 40
    # 10 requests per connection, one every 4/200 s: the last is due 0.18 s after the first.
    assert result.wall >= 0.18


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (.ci/run installs it)")
def test_the_static_vendor_answers_keep_alive_requests(tmp_path: Path, pki: PKI) -> None:
    vendor = static_vendor.StaticVendor(tmp_path, pki.leaf("vendor", VENDOR_HOSTS))
    try:
        # loadgen fails the run on anything but a 200 with a body on the same connection.
        result = loadgen.run(_direct(vendor.port, pki.ca_file, 3, 20))
    finally:
        vendor.close()
    assert len(result.latencies) == 60
