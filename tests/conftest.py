"""Fixtures every suite shares: one test PKI, one fake vendor, one gateway routed to it, one
redis-server, and the sample Python tools. A directory's own conftest holds only what is its own.

Tests that need a gateway with other settings (timeouts, breaker, bad certificates) start their
own with `make_gateway`, or, for a whole module, `with GatewayProcess(...).start() as gw`; tests
that change the fake vendor's behaviour use `vendor` (reset after each test). Shared values are
imported from `tests.fakes` and `tests.processes`, never from a conftest.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests judge results, never speed: hypothesis's default 200 ms per-example deadline fails
# examples on a loaded 2-core machine for reasons that are not bugs.
settings.register_profile("egress-gateway", deadline=None)
settings.load_profile("egress-gateway")

from tests.fakes import PKI, VENDOR_HOSTS, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, RedisServer
from tests.python_tools import BuildError, PythonTools, build_python_tools, componentize_py


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
    with GatewayProcess(tmp_path_factory.mktemp("gateway"), settings).start() as gw:
        yield gw


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start extra gateways with their own settings; all stopped at the end of the test."""
    started: list[GatewayProcess] = []

    def make(settings: dict, env: dict[str, str] | None = None, name: str = "gw") -> GatewayProcess:
        gw = GatewayProcess(tmp_path / name, settings, env or {}).start()
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


@pytest.fixture(scope="session")
def python_guest_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The CPython guest compiled once per session (~15 s), in pytest's cache dir when it is enabled
    (reruns load it in milliseconds); None where the python-guest extra is not installed. Gateways
    start with a copy (`tests.processes.seed_python_guest`) instead of compiling their own."""
    try:
        from sandbox.python_guest import PythonGuest
    except ImportError:
        return None
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("sandbox-cwasm") if cache is not None else tmp_path_factory.mktemp("cwasm")
    PythonGuest(cache_dir=cache_dir).close()
    return cache_dir


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (the DLP vault tests and the chaos suite share it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: apt-get install -y redis-server (.ci/run does)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The session's redis-server, running: started again if an earlier test killed it."""
    return redis_server if redis_server.running else redis_server.start()
