"""Session fixtures: one test PKI, one fake vendor, one gateway routed to it.

Tests that need a gateway with other settings (timeouts, breaker, bad certificates) start their
own with `running_gateway`; tests that change the fake vendor's behaviour use `vendor` (reset after
each test).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests judge results, never speed: hypothesis's default 200 ms per-example deadline fails
# examples on a loaded 2-core machine for reasons that are not bugs.
settings.register_profile("egress-gateway", deadline=None)
settings.load_profile("egress-gateway")

from tests.fakes import VENDOR_ENV, VENDOR_HOSTS, FakeVendor, GatewayProcess, PKI, vendor_settings
from tests.python_tools import BuildError, PythonTools, build_python_tools, componentize_py

EXTRA_ENV = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def vendor_server(pki: PKI) -> Iterator[FakeVendor]:
    v = FakeVendor(pki.leaf("vendor", VENDOR_HOSTS))
    yield v
    v.close()


@pytest.fixture
def vendor(vendor_server: FakeVendor) -> Iterator[FakeVendor]:
    vendor_server.reset()
    yield vendor_server
    vendor_server.reset()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[GatewayProcess]:
    settings = vendor_settings(
        pki,
        vendor_server,
        timeouts={"connect": "2s", "read": "3s"},
        max_body="64KiB",
        egress={"allow": ["localhost", "169.254.169.254"]},
    )
    gw = GatewayProcess(tmp_path_factory.mktemp("gateway"), settings, {**VENDOR_ENV, **EXTRA_ENV}).start()
    yield gw
    gw.stop()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[object]:
    """Start extra gateways with their own settings; all stopped at the end of the test."""
    started: list[GatewayProcess] = []

    def make(settings: dict, env: dict[str, str] | None = None, name: str = "gw") -> GatewayProcess:
        gw = GatewayProcess(tmp_path / name, settings, {**VENDOR_ENV, **EXTRA_ENV, **(env or {})}).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session")
def python_tools(tmp_path_factory: pytest.TempPathFactory) -> PythonTools:
    """The sample Python tools built with componentize-py and compiled, once per session (~20 s).
    Skipped only where componentize-py is not installed (the `test` extra installs it)."""
    try:
        componentize_py()
    except BuildError as e:
        pytest.skip(str(e))
    return build_python_tools(tmp_path_factory.mktemp("python-tools"))
