"""Section 2: a store the decision needs fails; writes and payments fail closed with 503
`store_unavailable`, `fail_open` reads pass and the audit says so, and service resumes without a
gateway restart when the store returns.

Fault injection, all real: redis-server is SIGKILLed and started again; the SQLite vault is locked
by another process holding a write transaction, or made read-only with the immutable attribute
(`chattr +i`: root bypasses permission bits, so `chmod` would prove nothing); a full state dir is
a file-size limit (RLIMIT_FSIZE, set on the running gateway with prlimit(2)) at the audit log's
current size, which fails every growing write in the state dir with EFBIG, as ENOSPC would.
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import threading
import time
from collections import Counter

import pytest

from tests.chaos.faults import FaultVendor
from tests.chaos.harness import BALANCE, CHAT, EMAIL, PAY, PHONE, SEARCH, agent, code_of, send
from tests.chaos.report import ChaosReport
from tests.clients import chat, client
from tests.processes import GatewayProcess, RedisServer

PAYMENT = {"amount": "100", "currency": "usd"}


def _load(report: ChaosReport, gw: GatewayProcess, stop: threading.Event, seen: Counter[str]) -> None:
    """Payments in a loop until `stop`, counting each answer's code."""
    with client(gw, agent(gw, "reader", sub="loader")) as c:
        for _ in range(2000):
            if stop.is_set():
                return
            seen[code_of(send(report, c, "POST", PAY, data=PAYMENT))] += 1


def test_redis_rate_limit_store_killed_under_load(chaos_gateway, fault_vendor: FaultVendor, redis: RedisServer, report: ChaosReport) -> None:
    gw = chaos_gateway(fault_vendor, stores={"rate_limits": redis.url})
    stop, seen = threading.Event(), Counter[str]()
    loader = threading.Thread(target=_load, args=(report, gw, stop, seen))
    loader.start()
    try:
        with client(gw, agent(gw, "reader")) as c:
            assert code_of(send(report, c, "POST", PAY, data=PAYMENT)) == "200"
            redis.kill()
            time.sleep(1.0)  # a loader payment charged before the kill may still be on its way out
            before = len(fault_vendor.seen())
            with report.case("redis (rate limits) killed: payment", "503 store_unavailable, not sent") as case:
                r = send(report, c, "POST", PAY, data=PAYMENT)
                case.observed = code_of(r)
                assert case.observed == "503 store_unavailable"
            with report.case("redis (rate limits) killed: non-fail_open read", "503 store_unavailable") as case:
                case.observed = code_of(send(report, c, "GET", BALANCE))
                assert case.observed == "503 store_unavailable"
            with report.case("redis (rate limits) killed: fail_open read", "200, audit says fail_open") as case:
                r = send(report, c, "GET", SEARCH, params={"q": "weather"})
                rec = next(x for x in gw.audit() if x.get("decision_id") == r.headers["x-egress-decision-id"])
                case.observed = f"{code_of(r)}, audit fail_open={bool(rec.get('fail_open'))}"
                assert r.status_code == 200 and rec["fail_open"][0]["rule"].endswith("reader-search")
            # Only the fail_open read went out while the store was down (the loader's payments that
            # raced the kill were charged before it).
            sent_down = [s.path for s in fault_vendor.seen()[before:]]
            assert all(p.startswith("/search") for p in sent_down), sent_down
            redis.start()
            with report.case("redis (rate limits) restarted", "200 again, no gateway restart") as case:
                # The client never retries by itself (a retried script could charge twice), so a call
                # on a connection the restart broke is refused once; service resumes without a restart.
                answers: list[str] = []
                while len(answers) < 3 and "200" not in answers:
                    answers.append(code_of(send(report, c, "POST", PAY, data=PAYMENT)))
                case.observed = ", ".join(answers)
                assert answers[-1] == "200" and set(answers) <= {"200", "503 store_unavailable"}
                assert gw.proc is not None and gw.proc.poll() is None
    finally:
        stop.set()
        loader.join(60)
    with report.case("redis (rate limits) killed under load: every answer", "200 or 503 store_unavailable") as case:
        case.observed = ", ".join(f"{k} x{v}" for k, v in sorted(seen.items()))
        assert set(seen) <= {"200", "503 store_unavailable"} and seen["200"] >= 1


def test_redis_vault_killed(chaos_gateway, fault_vendor: FaultVendor, redis: RedisServer, report: ChaosReport) -> None:
    gw = chaos_gateway(fault_vendor, dlp={"vault": redis.url})
    with client(gw, agent(gw, "chatter")) as c:
        assert send(report, c, "POST", CHAT, json=chat(f"mail {EMAIL}")).status_code == 200
        redis.kill()
        with report.case("redis (DLP vault) killed: call with PII", "503 store_unavailable, not sent") as case:
            sent = len(fault_vendor.seen())
            r = send(report, c, "POST", CHAT, json=chat(f"call {PHONE}"))
            case.observed = f"{code_of(r)}, sent {len(fault_vendor.seen()) - sent}"
            assert case.observed == "503 store_unavailable, sent 0"
        with report.case("redis (DLP vault) killed: call without PII", "200") as case:
            case.observed = code_of(send(report, c, "POST", CHAT, json=chat("no personal data here")))
            assert case.observed == "200"
        redis.start()
        with report.case("redis (DLP vault) restarted", "200, value tokenized") as case:
            r = send(report, c, "POST", CHAT, json=chat(f"call {PHONE}"))
            body = fault_vendor.seen()[-1].body.decode()
            case.observed = f"{code_of(r)}, tokenized={'tok_PHONE_NUMBER_' in body}"
            assert r.status_code == 200 and PHONE not in body and "tok_PHONE_NUMBER_" in body


@pytest.mark.chaos_full  # waits out SQLite's 10 s busy timeout
def test_sqlite_vault_locked_by_another_process(chaos_gateway, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    """A write transaction held elsewhere (a backup, a migration): new values wait for SQLite's
    busy timeout (10 s) and are refused; values that already have a token still go out."""
    gw = chaos_gateway(fault_vendor)
    with client(gw, agent(gw, "chatter")) as c:
        assert send(report, c, "POST", CHAT, json=chat(f"mail {EMAIL}")).status_code == 200
        holder = sqlite3.connect(gw.state_dir / "vault.sqlite3", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with report.case("SQLite vault locked: new PII value", "503 store_unavailable, not sent") as case:
                sent = len(fault_vendor.seen())
                r = send(report, c, "POST", CHAT, json=chat(f"call {PHONE}"))
                case.observed = f"{code_of(r)}, sent {len(fault_vendor.seen()) - sent}"
                assert case.observed == "503 store_unavailable, sent 0"
            with report.case("SQLite vault locked: known PII value", "200 (token read, not written)") as case:
                case.observed = code_of(send(report, c, "POST", CHAT, json=chat(f"mail {EMAIL}")))
                assert case.observed == "200"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with report.case("SQLite vault unlocked", "200") as case:
            case.observed = code_of(send(report, c, "POST", CHAT, json=chat(f"call {PHONE}")))
            assert case.observed == "200"


def _chattr(flag: str, *paths: os.PathLike[str]) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def test_sqlite_vault_read_only(chaos_gateway, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr to make the vault immutable (permission bits do not stop root)")
    gw = chaos_gateway(fault_vendor)
    with client(gw, agent(gw, "chatter")) as c:
        assert send(report, c, "POST", CHAT, json=chat(f"mail {EMAIL}")).status_code == 200
        # The -shm file stays writable: SQLite maps it, and an immutable mapping is a SIGBUS, not
        # a read-only disk.
        files = [gw.state_dir / "vault.sqlite3", gw.state_dir / "vault.sqlite3-wal"]
        try:
            _chattr("+i", *files)
        except subprocess.CalledProcessError:
            pytest.skip("this file system does not support the immutable attribute")
        try:
            with report.case("SQLite vault read-only: new PII value", "503 store_unavailable, not sent") as case:
                sent = len(fault_vendor.seen())
                r = send(report, c, "POST", CHAT, json=chat(f"call {PHONE}"))
                case.observed = f"{code_of(r)}, sent {len(fault_vendor.seen()) - sent}"
                assert case.observed == "503 store_unavailable, sent 0"
        finally:
            _chattr("-i", *files)
        with report.case("SQLite vault writable again", "200") as case:
            case.observed = code_of(send(report, c, "POST", CHAT, json=chat(f"call {PHONE}")))
            assert case.observed == "200"


def test_state_dir_full(chaos_gateway, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    gw = chaos_gateway(fault_vendor)
    assert gw.proc is not None
    with client(gw, agent(gw, "reader")) as c:
        assert send(report, c, "POST", PAY, data=PAYMENT).status_code == 200
        # The file size limit binds every file the process writes, its log too: grow the audit log
        # past the log (an audit record is larger than its log lines) so the log keeps room to say why.
        while gw.audit_file.stat().st_size < gw.log_file.stat().st_size + 16384:
            assert c.get(BALANCE).status_code == 200
        size = gw.audit_file.stat().st_size
        resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
        try:
            with report.case("state dir full (audit log cannot grow)", "503 store_unavailable, not sent") as case:
                sent = len(fault_vendor.seen())
                results = [code_of(send(report, c, m, u, **kw)) for m, u, kw in (
                    ("POST", PAY, {"data": PAYMENT}), ("GET", BALANCE, {}), ("GET", SEARCH, {"params": {"q": "x"}}))]
                case.observed = f"{', '.join(sorted(set(results)))}; sent {len(fault_vendor.seen()) - sent}"
                assert results == ["503 store_unavailable"] * 3 and len(fault_vendor.seen()) == sent
        finally:
            resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        with report.case("state dir has room again", "200, audit verify ok") as case:
            r = send(report, c, "POST", PAY, data=PAYMENT)
            verify = gw.cli("audit", "verify", check=False)
            case.observed = f"{code_of(r)}, audit verify exit {verify.returncode}"
            assert r.status_code == 200 and verify.returncode == 0, verify.stdout + verify.stderr
    assert "audit log write failed" in gw.log_file.read_text()
