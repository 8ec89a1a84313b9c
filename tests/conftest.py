"""Fixtures every suite shares: one test PKI, one fake vendor, one gateway routed to it, one
redis-server, and the sample Python tools. A directory's own conftest holds only what is its own.

Tests that need a gateway with other settings (timeouts, breaker, bad certificates) start their
own with `make_gateway`, or, for a whole module, `with GatewayProcess(...).start() as gw`; tests
that change the fake vendor's behaviour use `vendor` (reset after each test). Shared values are
imported from `tests.fakes` and `tests.processes`, never from a conftest.
"""

from __future__ import annotations

import compileall
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests judge results, never speed: hypothesis's default 200 ms per-example deadline fails
# examples on a loaded 2-core machine for reasons that are not bugs.
settings.register_profile("egress-gateway", deadline=None)
settings.load_profile("egress-gateway")

from tests.fakes import PKI, REPO, VENDOR_HOSTS, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, RedisServer
from tests.python_tools import BuildError, Prebuild, PythonTools, componentize_py


def pytest_sessionstart(session: pytest.Session) -> None:
    """The project's modules byte-compiled once, as a first import would leave them. The suite starts
    hundreds of gateways and CLI runs; where PYTHONDONTWRITEBYTECODE is set (some CI images and
    sandboxes set it) each of them would compile the project's ~20 K lines again (~0.3 s of CPU)."""
    for package in ("gateway", "dlp", "sandbox", "connectors", "tests"):
        compileall.compile_dir(REPO / package, quiet=2, rx=re.compile(r"sandbox/tools/"))


# Fixtures whose artifacts `prebuild` makes in the background: their tests' modules run last.
PREBUILT = frozenset({"python_tools", "python_guest_cache"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that need a prebuilt artifact run after the others (the chaos invariants, which
    check the whole chaos run, stay last), giving the background build the rest of the run."""
    late = {item.path for item in items if PREBUILT & set(getattr(item, "fixturenames", ()))}
    items.sort(key=lambda item: 2 if item.path.name == "test_zz_invariants.py" else int(item.path in late))


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
        gw.stop_soon()


def _guest_cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """Where the compiled CPython guest lives: pytest's cache dir when it is enabled (reruns load it in
    milliseconds); None where the python-guest extra is not installed."""
    try:
        import sandbox.python_guest  # noqa: F401
    except ImportError:
        return None
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("sandbox-cwasm") if cache is not None else tmp_path_factory.mktemp("cwasm")


@pytest.fixture(scope="session", autouse=True)
def prebuild(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prebuild]:
    """Starts, at the session's first test, the background build of what the selected tests need."""
    wanted = set().union(*(getattr(item, "fixturenames", ()) for item in request.session.items)) & PREBUILT
    tools_root = None
    if "python_tools" in wanted:
        try:
            componentize_py()
            tools_root = tmp_path_factory.mktemp("python-tools")
        except BuildError:
            pass  # `python_tools` skips, saying why
    guest = _guest_cache_dir(request, tmp_path_factory) if "python_guest_cache" in wanted else None
    build = Prebuild(tmp_path_factory.mktemp("prebuild") / "build.log", tools_root, guest)
    yield build
    build.stop()


@pytest.fixture(scope="session")
def python_tools(prebuild: Prebuild) -> PythonTools:
    """The sample Python tools built with componentize-py and compiled, once per session (~20 s,
    in the background: `prebuild`). Skipped only where componentize-py is not installed (the `test`
    extra installs it)."""
    try:
        componentize_py()
    except BuildError as e:
        pytest.skip(str(e))
    return prebuild.tools()


@pytest.fixture(scope="session")
def python_guest_cache(prebuild: Prebuild) -> Path | None:
    """The CPython guest compiled once per session (~15 s, in the background: `prebuild`); None where
    the python-guest extra is not installed. Gateways start with a copy
    (`tests.processes.seed_python_guest`) instead of compiling their own."""
    prebuild.wait()
    return prebuild.guest_cache


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
