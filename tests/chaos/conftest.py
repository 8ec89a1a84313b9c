"""Chaos fixtures: one fault vendor per session, gateways that stay on record, Redis dumps kept.

Every gateway a chaos test starts is kept on the report (its state dir, log and a final metrics
scrape) so that `test_zz_invariants.py`, run last, can check across the whole suite that nothing
leaked and that every call a vendor saw was audited. The table is printed at the end of the run
(`pytest_terminal_summary`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import harness
from tests.chaos.faults import FaultVendor
from tests.chaos.harness import REPORT
from tests.chaos.report import ChaosReport
from tests.fakes import PKI
from tests.processes import GatewayProcess, RedisServer


@pytest.fixture(scope="session")
def report() -> ChaosReport:
    return REPORT


@pytest.fixture(scope="session")
def fault_vendor_server(pki: PKI) -> Iterator[FaultVendor]:
    v = FaultVendor(pki)
    yield v
    v.close()


@pytest.fixture
def fault_vendor(fault_vendor_server: FaultVendor) -> Iterator[FaultVendor]:
    """The session's fault vendor, reset to `ok` before and after the test."""
    fault_vendor_server.reset()
    yield fault_vendor_server
    fault_vendor_server.reset()


@pytest.fixture
def redis(redis: RedisServer) -> Iterator[RedisServer]:
    """The shared redis-server (root conftest), whose contents join the leak check after the test."""
    yield redis
    if redis.running:
        REPORT.redis_dumps.extend(redis.dump())


@pytest.fixture
def chaos_gateway(tmp_path: Path, pki: PKI) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways routed to the fault vendor; stopped (after a metrics scrape) at the end of the test."""
    started: list[GatewayProcess] = []

    def make(vendor: FaultVendor, name: str = "gw", env: dict[str, str] | None = None, **extra: Any) -> GatewayProcess:
        gw = harness.launch(tmp_path / name, pki, vendor, env, **extra)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        harness.retire(gw)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT.cases:
        terminalreporter.section("chaos table")
        terminalreporter.write_line(REPORT.table())
