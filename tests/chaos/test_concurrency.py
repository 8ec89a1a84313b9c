"""Section 5: 50-way races, each on its own, against Redis-backed limits: never more than allowed."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.chaos import harness
from tests.chaos.faults import FaultVendor
from tests.chaos.harness import BALANCE, CHAT, PAY, RACE_EMAIL, agent, code_of, send
from tests.chaos.report import ChaosReport
from tests.clients import chat, client, error_of
from tests.fakes import PKI
from tests.processes import GatewayProcess, RedisServer

N = 50


def _race(report: ChaosReport, gw: GatewayProcess, token: str, call: Callable[[httpx.Client], httpx.Response]) -> list[str]:
    """N clients, each on its own connection, released together."""

    def one(_: int) -> str:
        with client(gw, token) as c:
            r = call(c)
            report.track(r)
            return code_of(r)

    with ThreadPoolExecutor(max_workers=N) as pool:
        return list(pool.map(one, range(N)))


@pytest.fixture(scope="module")
def races_gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, fault_vendor_server: FaultVendor,
             redis_server: RedisServer) -> Iterator[GatewayProcess]:
    """One gateway for the module's races (a start costs seconds): each race has agents of its own,
    so no race sees another's budget, rate or approvals; it is retired (scraped) like any other."""
    redis = redis_server if redis_server.running else redis_server.start()
    gw = harness.launch(tmp_path_factory.mktemp("races"), pki, fault_vendor_server, stores={"rate_limits": redis.url})
    yield gw
    harness.retire(gw)


@pytest.fixture
def redis_gw(races_gw: GatewayProcess, fault_vendor: FaultVendor, redis: RedisServer) -> GatewayProcess:
    """The module's gateway, the fault vendor reset, and Redis's contents kept for the leak check."""
    return races_gw


def test_budget_race(redis_gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    with report.case(f"{N}-way race on a budget (10000, 3000 each, Redis)", "3 allowed, 47 x 429, vendor saw 3") as case:
        codes = _race(report, redis_gw, agent(redis_gw, "payer", sub="racer"),
                      lambda c: c.post(PAY, data={"amount": "3000", "currency": "usd"}))
        case.observed = f"{codes.count('200')} allowed, {codes.count('429 budget_exceeded')} x 429, vendor saw {len(fault_vendor.seen())}"
        assert codes.count("200") == 3 and codes.count("429 budget_exceeded") == N - 3 and len(fault_vendor.seen()) == 3


def test_rate_limit_race(redis_gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    with report.case(f"{N}-way race on a rate limit (10/minute, Redis)", "10 allowed, 40 x 429") as case:
        codes = _race(report, redis_gw, agent(redis_gw, "limited"), lambda c: c.get(BALANCE))
        case.observed = f"{codes.count('200')} allowed, {codes.count('429 rate_limited')} x 429"
        assert codes.count("200") == 10 and codes.count("429 rate_limited") == N - 10


def test_single_use_approval_race(redis_gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    token = agent(redis_gw, "approvee")
    pay = {"amount": "500", "currency": "usd"}
    with client(redis_gw, token) as c:
        approval_id = error_of(send(report, c, "POST", PAY, data=pay))["approval_id"]
    redis_gw.cli("approvals", "approve", approval_id, "--by", "chaos")
    with report.case(f"{N}-way race on one single-use approval", "1 allowed, 49 x 403 approval_required") as case:
        codes = _race(report, redis_gw, token, lambda c: c.post(PAY, data=pay, headers={"X-Egress-Approval": approval_id}))
        case.observed = f"{codes.count('200')} allowed, {codes.count('403 approval_required')} x 403, vendor saw {len(fault_vendor.seen())}"
        assert codes.count("200") == 1 and codes.count("403 approval_required") == N - 1 and len(fault_vendor.seen()) == 1


# The Redis vault's form runs under `make chaos`: in the default run the gateway's side of the race
# is [sqlite] here, and the Redis vault's own first-use atomicity (50 concurrent first uses, several
# connections) is tests/dlp/test_vault.py::test_fifty_concurrent_first_uses_get_one_token[redis].
@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.chaos_full)])
def test_first_use_token_race(chaos_gateway, request: pytest.FixtureRequest, fault_vendor: FaultVendor, redis: RedisServer,
                              report: ChaosReport, store: str) -> None:
    # The module's gateway keeps its vault in SQLite (its Redis holds only rate limits) and no other
    # race sends RACE_EMAIL, so its first use is a first use here too.
    gw = chaos_gateway(fault_vendor, dlp={"vault": redis.url}) if store == "redis" else request.getfixturevalue("redis_gw")
    with report.case(f"{N}-way first use of one PII value ({store} vault)", "50 sent, 1 distinct token") as case:
        codes = _race(report, gw, agent(gw, "chatter", sub=f"first-use-{store}"), lambda c: c.post(CHAT, json=chat(f"mail {RACE_EMAIL}")))
        bodies = [s.body.decode() for s in fault_vendor.seen()]
        tokens = {t for b in bodies for t in re.findall(r"tok_EMAIL_ADDRESS_[a-z2-7]{20}", b)}
        case.observed = f"{codes.count('200')} sent, {len(tokens)} distinct token(s)"
        assert codes.count("200") == N and len(tokens) == 1
        assert not any(RACE_EMAIL in b for b in bodies)
