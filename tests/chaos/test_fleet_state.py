"""Issue 14: two gateway replicas sharing all state on one real redis-server form one gateway.

The fleet is two real `egress-gateway run` processes with the same config and keys (`keys:`) and
`stores: {state, rate_limits}` plus `dlp.vault` on one redis-server that persists every write before
answering (a state store must). Every test talks to the fleet through its `doors` only (a proxy
port and an API port each), so the same tests run against N workers of one replica by giving
the same door twice. Long cases are `chaos_full` (`make chaos`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mitmproxy.certs import CertStore
from redis import Redis

from gateway.stores import redis_state
from gateway.stores.redis_state import STALE_SECONDS
from tests.api.test_sandbox_tools_api import wat_tool
from tests.chaos import harness
from tests.chaos.faults import FaultVendor, ReplyDropper
from tests.chaos.harness import BALANCE, CHAT, PAY, agent, code_of
from tests.chaos.report import ChaosReport
from tests.clients import chat, client, error_of
from tests.fakes import PKI
from tests.processes import GatewayProcess, RedisServer, start_all

BUDGET, AMOUNT = 10_000, 1000  # the chaos `payer` budget per day, and one payment: 10 fit
ALLOWED = BUDGET // AMOUNT
REVOCATION_BOUND = 1.0  # the contract: a revocation is effective everywhere within a second
EMAIL = "fleet.person@example.org"


@dataclass
class Fleet:
    doors: list[GatewayProcess]  # where agents and admins connect: replicas now, workers later
    redis: RedisServer

    @property
    def a(self) -> GatewayProcess:
        return self.doors[0]

    @property
    def b(self) -> GatewayProcess:
        return self.doors[-1]

    def wait_ready(self) -> None:
        """Until every door's `/readyz` says ready (it reads the revocation list): what a load
        balancer's health check waits for after a Redis outage."""
        deadline = time.monotonic() + 30
        for door in self.doors:
            while httpx.get(f"{door.api_url}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, f"{door} never became ready"
                time.sleep(0.1)


def shared_keys(root: Path) -> dict[str, object]:
    """One signing key, one CA and one DLP key for the whole fleet, as files."""
    root.mkdir(parents=True, exist_ok=True)
    signing = root / "signing.pem"
    signing.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    CertStore.create_store(root / "ca", "mitmproxy", 2048, organization="fleet", cn="fleet CA")
    dlp_key = root / "dlp.key"
    dlp_key.write_text(base64.b64encode(os.urandom(32)).decode())
    return {"keys": {"signing": f"file:{signing}", "ca": f"file:{root / 'ca' / 'mitmproxy-ca.pem'}"},
            "dlp_key": f"file:{dlp_key}"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pki: PKI, fault_vendor_server: FaultVendor) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    store = RedisServer(root / "redis", persistent=True)
    (root / "redis").mkdir()
    store.start()
    keys = shared_keys(root / "keys")
    extra = {
        "stores": {"state": store.url, "rate_limits": store.url},
        "dlp": {"vault": store.url, "key": keys["dlp_key"]},
        "keys": keys["keys"],
    }
    doors = start_all(*(harness.gateway(root / name, pki, fault_vendor_server, None, **extra) for name in ("a", "b")))
    fleet = Fleet(doors, store)
    fleet.wait_ready()
    yield fleet
    for gw in doors:
        harness.retire(gw)
    if store.running:
        harness.REPORT.redis_dumps.extend(store.dump())
        store.kill()


@pytest.fixture
def vendor(fault_vendor_server: FaultVendor, fleet: Fleet) -> Iterator[FaultVendor]:
    """The session's fault vendor, reset, with Redis running again if a test killed it."""
    if not fleet.redis.running:
        fleet.redis.start()
    fleet.wait_ready()
    fault_vendor_server.reset()
    yield fault_vendor_server
    fault_vendor_server.reset()


def admin_post(gw: GatewayProcess, path: str, **kw: object) -> httpx.Response:
    admin = gw.token(sub="fleet-ops", role="admin")
    return httpx.post(f"{gw.api_url}{path}", headers={"Authorization": f"Bearer {admin}"}, timeout=20, **kw)  # type: ignore[arg-type]


def admin_get(gw: GatewayProcess, path: str) -> httpx.Response:
    admin = gw.token(sub="fleet-ops", role="admin")
    return httpx.get(f"{gw.api_url}{path}", headers={"Authorization": f"Bearer {admin}"}, timeout=20)


def pay(c: httpx.Client, amount: int = AMOUNT) -> httpx.Response:
    return c.post(PAY, data={"amount": str(amount), "currency": "usd"})


# --- revocation ----------------------------------------------------------------------------------


def test_revoke_on_a_refuses_inside_an_open_tunnel_on_b(fleet: Fleet, vendor: FaultVendor, report: ChaosReport) -> None:
    token = agent(fleet.b, "payer", sub="revokee")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    with report.case("fleet: revoke on A, tunnel open on B", "407 identity_revoked on B within 1 s"), client(fleet.b, token) as c:
        assert code_of(c.get(BALANCE)) == "200"  # the tunnel to the vendor is open now
        fleet.a.cli("token", "revoke", "--jti", jti)
        time.sleep(REVOCATION_BOUND)
        refused = c.get(BALANCE)  # the same keep-alive connection: inside the open tunnel
        assert code_of(refused) == "407 identity_revoked"
    with client(fleet.a, token) as fresh:
        assert code_of(fresh.get(BALANCE)) == "407 identity_revoked"
    assert len(vendor.seen()) == 1


def test_entries_no_gateway_wrote_refuse_closed_and_service_resumes_once_gone(fleet: Fleet, vendor: FaultVendor) -> None:
    """Another program writes the shared lists: a foreign revocation entry used to end every
    replica's revocation watcher (each then refused every identity until restarted), and a foreign
    quarantine entry ended the quarantine watcher, so a quarantine made after it was never applied.
    (And `egress-gateway quarantine` wrote the state dir's SQLite file, which no replica on Redis
    reads: it said "quarantined" and stopped nothing.)"""
    victim = agent(fleet.a, "payer", sub="quarantined-later")
    bystander = agent(fleet.a, "payer", sub="bystander")
    store = Redis(host="127.0.0.1", port=fleet.redis.port, socket_timeout=5)
    with client(fleet.b, victim) as c_victim, client(fleet.b, bystander) as c_bystander:
        assert code_of(c_bystander.get(BALANCE)) == "200"
        for key in (redis_state.REVOCATIONS, redis_state.QUARANTINES):
            store.rpush(key, b"{not json")
            try:
                if key == redis_state.QUARANTINES:  # written, and the CLI says the list cannot be read back
                    sub = jwt.decode(victim, options={"verify_signature": False})["sub"]
                    made = fleet.a.cli("quarantine", "--sub", sub, "--reason", "sweep", check=False)
                    assert made.returncode == 2 and "holds an entry no gateway wrote (position" in made.stderr
                time.sleep(STALE_SECONDS + 0.5)
                assert [code_of(c.get(BALANCE)) for c in (c_victim, c_bystander)] == ["503 store_unavailable"] * 2
            finally:
                store.execute_command("LREM", key, 0, b"{not json")
            fleet.wait_ready()
            time.sleep(0.5)  # a poll of the quarantine list
            assert code_of(c_bystander.get(BALANCE)) == "200"
        assert code_of(c_victim.get(BALANCE)) == "403 quarantined"
    with client(fleet.a, victim) as on_a:
        assert code_of(on_a.get(BALANCE)) == "403 quarantined"
    assert len(vendor.seen()) == 3
    assert "holds an entry no gateway wrote (position" in fleet.b.log_file.read_text()


def test_values_no_gateway_wrote_are_store_unavailable_not_internal_error(fleet: Fleet, vendor: FaultVendor) -> None:
    """An approval, a decision or an MCP pin that does not decode (another program wrote the key)
    answered 500 `internal_error` with a traceback in the log; the store cannot be used, which is
    503 `store_unavailable` (README: what the API answers for a store it cannot use), and nothing is sent."""
    token = agent(fleet.a, "approvee", sub="foreign-approval")
    store = Redis(host="127.0.0.1", port=fleet.redis.port, socket_timeout=5)
    planted = {"approval": redis_state.PREFIX + "apr:apr_foreign", "decision": redis_state.DECISIONS,
               "pin": redis_state.MCP_PINS}
    store.hset(planted["approval"], mapping={"state": "approved", "summary": "{not json"})
    store.zadd(redis_state.PREFIX + "apr:index", {"apr_foreign": time.time()})
    store.lpush(planted["decision"], b"[1, 2]")
    store.hset(planted["pin"], '["server", "tool"]', "{not json")
    try:
        with client(fleet.b, token) as c:
            used = c.post(PAY, data={"amount": "500", "currency": "usd"}, headers={"X-Egress-Approval": "apr_foreign"})
        answers = [
            code_of(used),
            code_of(httpx.get(f"{fleet.a.api_url}/v1/approvals/apr_foreign", headers={"Authorization": f"Bearer {token}"},
                              timeout=20)),
            code_of(admin_get(fleet.b, "/v1/approvals?state=all")),
            code_of(admin_get(fleet.a, "/v1/decisions")),
            code_of(admin_get(fleet.b, "/v1/mcp/pins")),
        ]
    finally:
        store.delete(planted["approval"], planted["pin"])
        store.zrem(redis_state.PREFIX + "apr:index", "apr_foreign")
        store.execute_command("LREM", planted["decision"], 0, b"[1, 2]")
    assert answers == ["503 store_unavailable"] * 5
    assert len(vendor.seen()) == 0
    assert code_of(admin_get(fleet.a, "/v1/decisions")) == "200"
    assert "Traceback" not in fleet.a.log_file.read_text() + fleet.b.log_file.read_text()


# --- approvals -----------------------------------------------------------------------------------


def test_approval_made_on_a_approved_on_b_used_once(fleet: Fleet, vendor: FaultVendor, report: ChaosReport) -> None:
    token = agent(fleet.a, "approvee")
    with client(fleet.a, token) as on_a:
        held = on_a.post(PAY, data={"amount": "500", "currency": "usd"})
    assert code_of(held) == "403 approval_required"
    approval_id = error_of(held)["approval_id"]
    decided = admin_post(fleet.b, f"/v1/approvals/{approval_id}/approve")
    assert decided.status_code == 200 and decided.json()["state"] == "approved"
    with report.case("fleet: approval used on A, then on B", "200 once, then 403 approval_required"):
        with client(fleet.a, token) as on_a:
            first = on_a.post(PAY, data={"amount": "500", "currency": "usd"}, headers={"X-Egress-Approval": approval_id})
        with client(fleet.b, token) as on_b:
            again = on_b.post(PAY, data={"amount": "500", "currency": "usd"}, headers={"X-Egress-Approval": approval_id})
        assert code_of(first) == "200" and code_of(again) == "403 approval_required"
    assert len(vendor.seen()) == 1
    used = httpx.get(f"{fleet.b.api_url}/v1/approvals/{approval_id}", headers={"Authorization": f"Bearer {token}"}, timeout=20)
    assert used.json()["state"] == "used"
    # The decisions feed is the fleet's: B lists the call A let out.
    feed = admin_get(fleet.b, "/v1/decisions?limit=1000").json()["decisions"]
    assert first.headers["X-Egress-Decision-Id"] in {rec["decision_id"] for rec in feed}


def test_a_second_approval_request_from_b_names_the_same_pending_one(fleet: Fleet, vendor: FaultVendor) -> None:
    token = agent(fleet.a, "approvee", sub="repeat")
    body = {"amount": "700", "currency": "usd"}
    with client(fleet.a, token) as on_a, client(fleet.b, token) as on_b:
        ids = {error_of(c.post(PAY, data=body))["approval_id"] for c in (on_a, on_b, on_a)}
    assert len(ids) == 1
    (pending,) = ids
    listed = fleet.a.cli("approvals", "list", "--json").stdout.splitlines()  # the CLI reads the fleet's store
    assert pending in {json.loads(line)["id"] for line in listed}
    denied = admin_post(fleet.a, f"/v1/approvals/{pending}/deny")
    assert denied.json()["state"] == "denied"
    assert admin_post(fleet.b, f"/v1/approvals/{denied.json()['id']}/approve").status_code == 409
    assert vendor.seen() == []


# --- budgets -------------------------------------------------------------------------------------


def race(fleet: Fleet, token: str, n: int, report: ChaosReport) -> list[tuple[str, str | None]]:
    """`n` payments, each on its own connection, alternating between the doors, released together."""
    start = threading.Barrier(n)

    def one(i: int) -> tuple[str, str | None]:
        with client(fleet.doors[i % len(fleet.doors)], token) as c:
            start.wait()
            r = pay(c)
            report.track(r)
            return code_of(r), r.headers.get("X-Egress-Decision-Id")

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def charged(redis_port: int, sub: str) -> tuple[int, set[str]]:
    """What Redis holds for an agent's budget: the sum charged, and the call ids charged."""
    store = Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
    try:
        total, ids = 0, set()
        for key in store.scan_iter(match=f"LIMITS:{{*{sub}*budget*", count=1000):
            name = key.decode()
            if "/charge/" in name:
                if store.get(key) == b"1":
                    ids.add(name.rsplit("/", 1)[1])
            elif not name.endswith("/-1"):
                total += int(store.get(key) or 0)
        return total, ids
    finally:
        store.close()


def settled(redis_port: int, sub: str, served: set[str]) -> tuple[int, set[str]]:
    """The agent's charges once the gateways have given back those of calls refused while their
    charge was unanswered (they retry in the background until Redis answers)."""
    deadline = time.monotonic() + 60
    total, ids = charged(redis_port, sub)
    while ids != served and time.monotonic() < deadline:
        time.sleep(0.5)
        total, ids = charged(redis_port, sub)
    return total, ids


def test_budget_raced_by_50_clients_over_both_replicas(fleet: Fleet, vendor: FaultVendor, report: ChaosReport) -> None:
    """Exactly the budget goes out, each payment charged once. On a starved machine some calls
    can meet the quota store's 0.5 s timeout: they are refused (503) and their charge given back,
    so the others still get exactly the budget."""
    token = agent(fleet.a, "payer", sub="fleet-racer")
    sub = jwt.decode(token, options={"verify_signature": False})["sub"]
    with report.case("fleet: 50-way budget race over 2 replicas", f"{ALLOWED} x 200, the rest 429, charged once each") as case:
        answers = race(fleet, token, 50, report)
        codes = Counter(code for code, _ in answers)
        served = {dec for code, dec in answers if code == "200" and dec}
        total, ids = settled(fleet.redis.port, sub, served)
        case.observed = f"{dict(codes)}, charged {total}"
        assert codes["200"] == ALLOWED and codes["429 budget_exceeded"] == 50 - ALLOWED - codes["503 store_unavailable"]
    assert len(vendor.seen()) == ALLOWED
    assert total == BUDGET and ids == served


def test_a_charge_whose_reply_is_lost_is_applied_exactly_once(chaos_gateway, fault_vendor: FaultVendor,  # type: ignore[no-untyped-def]
                                                             redis: RedisServer, report: ChaosReport) -> None:
    """The issue's double charge: Redis runs the budget script, the connection drops before its
    answer arrives. The charge is re-run under the same decision id and answered from its record."""
    dropper = ReplyDropper(redis.port)
    try:
        gw = chaos_gateway(fault_vendor, stores={"rate_limits": dropper.url})
        token = agent(gw, "payer", sub="lost-reply")
        sub = jwt.decode(token, options={"verify_signature": False})["sub"]
        with report.case("budget charge, its reply lost (connection dropped)", "200, charged once") as case, \
                client(gw, token) as c:
            assert code_of(pay(c)) == "200"
            dropper.arm(b"/charge/")
            lost = pay(c)
            total, ids = charged(redis.port, sub)
            case.observed = f"{code_of(lost)}, replies dropped {dropper.dropped}, charged {total}"
        assert dropper.dropped == 1 and code_of(lost) == "200"
        assert total == 2 * AMOUNT and ids == {d.decision_id for d in fault_vendor.seen()}
    finally:
        dropper.close()


# --- DLP -----------------------------------------------------------------------------------------


def test_a_token_minted_on_a_is_detokenized_on_b(fleet: Fleet, vendor: FaultVendor) -> None:
    token = agent(fleet.a, "chatter", sub="fleet-chatter")
    with client(fleet.a, token) as on_a:
        assert code_of(on_a.post(CHAT, json=chat(f"write to {EMAIL}"))) == "200"
    sent = vendor.seen()[0].body.decode()
    assert EMAIL not in sent
    (minted,) = set(re.findall(r"tok_EMAIL_ADDRESS_[a-z2-7]{20}", sent))
    restored = httpx.post(f"{fleet.b.api_url}/v1/detokenize", json={"text": f"reply to {minted}"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=20)
    assert restored.status_code == 200 and restored.json()["text"] == f"reply to {EMAIL}"
    other = agent(fleet.b, "chatter", sub="fleet-other")  # another agent cannot read it on any replica
    theirs = httpx.post(f"{fleet.b.api_url}/v1/detokenize", json={"text": minted},
                        headers={"Authorization": f"Bearer {other}"}, timeout=20)
    assert theirs.json()["text"] == minted


# --- registered tools ----------------------------------------------------------------------------


def test_a_tool_registered_on_a_runs_on_b_and_its_name_is_taken_fleet_wide(fleet: Fleet, vendor: FaultVendor) -> None:
    body = wat_tool(f"fleet_tool_{harness._RUN}", harness._RUN)
    name = body["manifest"]["name"]
    assert admin_post(fleet.a, "/v1/tools", json=body).status_code == 200
    again = admin_post(fleet.b, "/v1/tools", json=wat_tool(name, "other bytes"))
    assert (again.status_code, error_of(again)["code"]) == (409, "conflict")
    token = agent(fleet.b, "payer", sub="tool-user")
    ran = httpx.post(f"{fleet.b.api_url}/v1/sandbox/run", json={"tool": name, "input": {}},
                     headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert ran.status_code == 200 and ran.json()["output"] == {}
    assert (fleet.b.state_dir / "tools" / name).is_dir()  # compiled and kept on B too


# --- Redis down and back -------------------------------------------------------------------------


def test_redis_killed_refuses_closed_then_serves_with_exact_budget(fleet: Fleet, vendor: FaultVendor, report: ChaosReport) -> None:
    token = agent(fleet.a, "payer", sub="fleet-outage")
    sub = jwt.decode(token, options={"verify_signature": False})["sub"]
    with client(fleet.a, token) as on_a, client(fleet.b, token) as on_b:
        assert [code_of(pay(c)) for c in (on_a, on_b, on_a)] == ["200"] * 3
        fleet.redis.kill()
        with report.case("fleet: Redis killed, payments on both replicas", "503 store_unavailable, none sent"):
            down = [code_of(pay(c)) for c in (on_a, on_b, on_a, on_b)]
            assert down == ["503 store_unavailable"] * 4
        assert [code_of(admin_get(gw, path)) for gw, path in ((fleet.a, "/v1/approvals"), (fleet.b, "/v1/decisions"))] \
            == ["503 store_unavailable"] * 2
        with report.case("fleet: revocations unreadable past their bound", "503 store_unavailable for any identity"):
            time.sleep(STALE_SECONDS + 0.5)
            tools = httpx.get(f"{fleet.b.api_url}/v1/tools", headers={"Authorization": f"Bearer {token}"}, timeout=20)
            assert code_of(tools) == "503 store_unavailable"
        assert len(vendor.seen()) == 3
        fleet.redis.start()
        fleet.wait_ready()
        with report.case("fleet: Redis back, no restart", f"{ALLOWED - 3} more x 200, then 429"):
            after = [code_of(pay(c)) for c in (on_a, on_b) * 5]
            assert after == ["200"] * (ALLOWED - 3) + ["429 budget_exceeded"] * 3
    assert len(vendor.seen()) == ALLOWED
    total, ids = charged(fleet.redis.port, sub)
    assert total == BUDGET and len(ids) == ALLOWED


@pytest.mark.chaos_full
def test_redis_killed_and_restarted_under_load_never_charges_twice(fleet: Fleet, vendor: FaultVendor, report: ChaosReport) -> None:
    """Eight clients' payments flow over both replicas while Redis is killed and restarted twice;
    afterwards the budget holds exactly one charge per payment the vendor saw and none for a
    refused call, and nothing was ever answered but 200, 429 or 503 store_unavailable."""
    token = agent(fleet.a, "payer", sub="fleet-load")
    sub = jwt.decode(token, options={"verify_signature": False})["sub"]
    stop = threading.Event()
    answers: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def load(i: int) -> None:
        with client(fleet.doors[i % len(fleet.doors)], token) as c:
            while not stop.is_set():
                r = c.post(PAY, data={"amount": "100", "currency": "usd"})
                with lock:
                    answers.append((code_of(r), r.headers.get("X-Egress-Decision-Id")))

    with report.case("fleet: Redis killed twice under load", "200/429/503 only; one charge per call") as case, \
            ThreadPoolExecutor(max_workers=8) as pool:
        workers = [pool.submit(load, i) for i in range(8)]
        for _ in range(2):
            time.sleep(1.0)
            fleet.redis.kill()
            time.sleep(1.0)
            fleet.redis.start()
        time.sleep(3.0)
        stop.set()
        for w in workers:
            w.result()
        case.observed = ", ".join(f"{n} x {c}" for c, n in sorted(Counter(code for code, _ in answers).items()))
    codes = {code for code, _ in answers}
    assert codes <= {"200", "429 budget_exceeded", "503 store_unavailable"}, codes
    assert "503 store_unavailable" in codes and "200" in codes
    served = {dec for code, dec in answers if code == "200" and dec}
    total, ids = settled(fleet.redis.port, sub, served)
    assert len(vendor.seen()) == len(served)
    assert ids == served  # the payments that went out were charged, and only they, ...
    assert total == 100 * len(served) <= BUDGET  # ... each exactly once, never over the budget
