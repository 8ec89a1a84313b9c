"""`run --workers N`: real supervisors and workers, real clients over real TLS, a real redis-server.

One fleet of two workers serves the module; the tests that stop a fleet start their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.audit.log import RESERVED, AuditLog
from gateway.cli.main import main as cli_main
from gateway.identity.tokens import load_or_create_key
from tests.clients import chat, client, stream_decisions
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, RedisServer

PAYMENT = ("https://api.stripe.com/v1/payment_intents", {"amount": "1500", "currency": "usd"})


def fleet_settings(pki: PKI, vendor: FakeVendor, redis: RedisServer, **extra: Any) -> dict[str, Any]:
    return vendor_settings(pki, vendor, workers=2, replica="r1", stores={"rate_limits": redis.url}, **extra)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor,
          redis_server: RedisServer) -> Iterator[GatewayProcess]:
    redis = redis_server if redis_server.running else redis_server.start()
    with GatewayProcess(tmp_path_factory.mktemp("fleet"), fleet_settings(pki, vendor_server, redis)).start() as gw:
        yield gw


def worker_pids(gw: GatewayProcess) -> dict[int, int]:
    """The pid of each worker's latest start, from the supervisor's log."""
    return {int(w): int(p) for w, p in re.findall(r"worker (\d+) \(pid (\d+)\) serves", gw.log_file.read_text())}


def pay(c: httpx.Client) -> httpx.Response:
    url, form = PAYMENT
    return c.post(url, data=form)


def test_two_workers_serve_one_proxy_port_and_one_api_port(fleet: GatewayProcess, vendor: FakeVendor) -> None:
    token = fleet.token(scopes=("stripe:*",))
    served: Counter[int] = Counter()
    revealed: Counter[int] = Counter()
    for _ in range(10):  # batches of new connections at once, until both workers took some
        with client(fleet, token) as c:
            assert pay(c).status_code == 200
        threads = [threading.Thread(target=lambda: _pay_once(fleet, token)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for _ in range(8):  # the API: each call on a new connection, each audited by its worker
            r = httpx.post(f"{fleet.api_url}/v1/detokenize", json={"text": "nothing to restore"},
                           headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
        recs = fleet.audit()
        served = Counter(r["worker"] for r in recs if r.get("phase") == "decision")
        revealed = Counter(r["worker"] for r in recs if r.get("phase") == "reveal")
        if set(served) == set(revealed) == {0, 1}:
            break
    assert set(served) == {0, 1} and set(revealed) == {0, 1}, (served, revealed)
    assert {r["replica"] for r in fleet.audit()} == {"r1"}
    assert [p.name for p in fleet.audit_files] == ["audit.r1.0.jsonl", "audit.r1.1.jsonl"]
    # The decisions feed shows the fleet's decisions whichever worker answers.
    admin = {"Authorization": f"Bearer {fleet.token(sub='ops', role='admin')}"}
    for _ in range(6):
        feed = httpx.get(f"{fleet.api_url}/v1/decisions?limit=1000&phase=decision", headers=admin).json()["decisions"]
        assert Counter(d["worker"] for d in feed) == served


def _pay_once(gw: GatewayProcess, token: str) -> None:
    with client(gw, token) as c:
        assert pay(c).status_code == 200


def test_a_stream_on_one_worker_shows_every_workers_decisions_once(fleet: GatewayProcess) -> None:
    """One worker serves the stream, both serve the calls (the chains say which): every record of
    every call is on the stream exactly once, exactly as its chain holds it less the chain's own
    fields, whichever worker wrote it (the other's read from its chain, not relayed twice)."""
    sub = "live-watched"
    token = fleet.token(sub=sub, scopes=("stripe:*",))
    admin = {"Authorization": f"Bearer {fleet.token(sub='ops', role='admin')}"}
    # Quiet for 1.5 s means done: the other worker's chain is read every 0.25 s.
    with httpx.stream("GET", f"{fleet.api_url}/v1/decisions/stream?sub={sub}", headers=admin,
                      timeout=httpx.Timeout(20, read=1.5)) as stream:
        assert stream.status_code == 200
        calls = 0
        while calls < 80:  # batches of new connections at once, until both workers served some
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: _pay_once(fleet, token), range(8)))
            calls += 8
            if {r["worker"] for r in fleet.audit() if r.get("sub") == sub} == {0, 1}:
                break
        seen = stream_decisions(stream)
    written = [{k: v for k, v in r.items() if k not in RESERVED} for r in fleet.audit() if r.get("sub") == sub]
    assert {r["worker"] for r in written} == {0, 1}
    assert sorted(r["phase"] for r in written) == ["decision"] * calls + ["outcome"] * calls
    assert len({(r["decision_id"], r["phase"]) for r in seen}) == len(seen)  # none twice
    assert sorted(seen, key=_record_key) == sorted(written, key=_record_key)


def _record_key(rec: dict[str, Any]) -> tuple[str, str]:
    return rec["decision_id"], rec["phase"]


def test_a_console_session_is_every_workers_without_a_shared_store(fleet: GatewayProcess) -> None:
    """Sessions live in the state dir's SQLite file, not in a worker's memory: signed in through
    one worker, a session signs out through the other (both audited with their worker), and is
    then refused by both."""
    crossed = []
    for n in range(20):  # until a sign-in and its sign-out were answered by different workers
        token = fleet.token(sub=f"console-{n}", role="admin")
        r = httpx.post(f"{fleet.api_url}/console/session", json={"token": token}, timeout=20)
        assert r.status_code == 200, r.text
        cookie = {"Cookie": f"egress_console={r.cookies['egress_console']}", "X-CSRF-Token": r.json()["csrf"]}
        assert httpx.get(f"{fleet.api_url}/v1/approvals", headers=cookie, timeout=20).status_code == 200
        out = httpx.delete(f"{fleet.api_url}/console/session", headers=cookie, timeout=20)
        assert out.status_code == 200, out.text
        ended = [httpx.get(f"{fleet.api_url}/v1/approvals", headers=cookie, timeout=20) for _ in range(4)]
        assert [(e.status_code, e.json()["error"]["code"]) for e in ended] == [(401, "identity_expired")] * 4
        workers = {r["phase"]: r["worker"] for r in fleet.audit() if r.get("sub") == f"console-{n}"
                   and r.get("phase") in ("console_sign_in", "console_sign_out")}
        if workers["console_sign_in"] != workers["console_sign_out"]:
            crossed.append(n)
            break
    assert crossed, "every sign-out was answered by the worker that signed in; sharing was not exercised"


def test_a_connector_registered_through_one_worker_is_served_by_every_worker(fleet: GatewayProcess) -> None:
    """Registered through whichever worker took the request, kept in the state dir's file: every
    worker claims its host within a second (the name resolves nowhere, so a claimed host's call
    fails upstream, audited by the worker that decided), and after a delete none does (`host_denied`)."""
    admin = {"Authorization": f"Bearer {fleet.token(sub='ops', role='admin')}"}
    doc = {"name": "ping", "hosts": ["ping.workers.test"], "actions": [{"name": "ping", "method": "POST", "path": "/ping"}]}
    assert httpx.post(f"{fleet.api_url}/v1/connectors", json=doc, headers=admin, timeout=20).status_code == 201
    time.sleep(1.0)

    def codes(sub: str) -> tuple[list[str], set[int]]:
        """Calls on new connections, 8 at once, until both workers decided some (or 5 rounds)."""
        token = fleet.token(sub=sub, scopes=("ping:*",))

        def one(_: int) -> str:
            with client(fleet, token) as c:
                return str(c.post("https://ping.workers.test/ping").json()["error"]["code"])

        found: list[str] = []
        deciders: set[int] = set()
        for _ in range(5):
            with ThreadPoolExecutor(8) as pool:
                found += pool.map(one, range(8))
            deciders = {r["worker"] for r in fleet.audit() if r.get("sub") == sub and r.get("phase") == "decision"}
            if deciders == {0, 1}:
                break
        return found, deciders

    before, deciders = codes("ping-before")
    assert len(set(before)) == 1 and before[0] in ("upstream_failed", "address_denied"), before  # as the resolver answers
    assert deciders == {0, 1}, deciders
    assert httpx.delete(f"{fleet.api_url}/v1/connectors/ping", headers=admin, timeout=20).status_code == 200
    time.sleep(1.0)
    after, deciders = codes("ping-after")
    assert set(after) == {"host_denied"} and deciders == {0, 1}, (after, deciders)


def test_memory_rate_limits_with_workers_are_refused_naming_the_fix(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw", {})
    for how in (("--workers", "2"),):
        out = gw.cli("run", *how, check=False)
        assert out.returncode == 2
        assert "stores.rate_limits: redis://HOST:PORT" in out.stderr and "2x the limits" in out.stderr
        assert "Traceback" not in out.stderr
    gw.config_file.write_text(gw.config_file.read_text() + "workers: 3\n")
    out = gw.cli("run", check=False)
    assert out.returncode == 2 and "workers: 3 with stores.rate_limits memory://" in out.stderr


def test_a_worker_killed_under_load_is_restarted_and_no_record_is_lost(fleet: GatewayProcess, vendor: FakeVendor) -> None:
    token = fleet.token(scopes=("stripe:*",))
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def agent() -> None:
        while not stop.is_set():
            try:
                with client(fleet, token, timeout=10) as c:
                    for _ in range(5):
                        r = pay(c)
                        seen.append((r.status_code, r.headers["x-egress-decision-id"]))
            except httpx.TransportError:
                pass  # a call cut by the kill: the agent saw no decision

    victim = worker_pids(fleet)[0]
    agents = [threading.Thread(target=agent) for _ in range(8)]
    for t in agents:
        t.start()
    try:
        _wait(lambda: len(seen) >= 40)
        os.kill(victim, signal.SIGKILL)
        log = fleet.wait_log(" serves", count=fleet.log_file.read_text().count(" serves") + 1)
        assert f"worker 0 (pid {victim}) died (signal SIGKILL); restarting in 0.5s (1 in a row)" in log
        restarted = worker_pids(fleet)[0]
        assert restarted != victim
        at_restart = len(seen)
        _wait(lambda: len(seen) >= at_restart + 60)
    finally:
        stop.set()
        for t in agents:
            t.join()
    assert {status for status, _ in seen} == {200}
    recs = fleet.audit()
    decided = {r["decision_id"] for r in recs if r.get("phase") == "decision"}
    answered = {r["decision_id"] for r in recs if r.get("phase") == "outcome"}
    ids = {d for _, d in seen}
    assert len(ids) == len(seen)
    assert ids - decided == set() and ids - answered == set()
    # The restarted worker continued its own chain; every chain verifies.
    verify = fleet.cli("audit", "verify", str(fleet.state_dir), check=False)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.count(": ok: ") == 2


def test_sigterm_lets_an_open_stream_finish_then_exits_0(tmp_path: Path, pki: PKI, vendor: FakeVendor,
                                                         redis: RedisServer) -> None:
    gw = GatewayProcess(tmp_path / "gw", fleet_settings(pki, vendor, redis, drain_timeout="20s")).start()
    assert gw.proc is not None
    token = gw.token(sub="streamer", scopes=("openai:*",))
    said = "drain " * 24
    vendor.stream_interval = 0.15  # ~21 events: about three seconds of stream
    try:
        with client(gw, token) as c, c.stream("POST", "https://api.openai.com/v1/chat/completions",
                                              json=chat(said, stream=True)) as r:
            assert r.status_code == 200
            events = r.iter_lines()
            first = next(e for e in events if e.startswith("data: "))
            gw.proc.send_signal(signal.SIGTERM)
            gw.wait_log("draining 2 workers")
            # The ports refuse new connections while the stream is still being answered.
            _wait(lambda: _refused(gw.port) and _refused(gw.api_port), timeout=5)
            rest = [e for e in events if e.startswith("data: ")]
        assert gw.proc.wait(timeout=30) == 0
    finally:
        gw.stop()
    assert rest[-1] == "data: [DONE]"
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in [first, *rest[:-1]])
    assert text == f"You said: {said}"
    log = gw.log_file.read_text()
    assert "calls in flight are cut" not in log and log.count("stopped; the audit log is sealed") == 2
    strict = gw.cli("audit", "verify", "--strict", check=False)
    assert strict.returncode == 0, strict.stderr
    assert strict.stdout.count("closed at shutdown") == 2
    outcome = [r for r in gw.audit() if r.get("sub") == "streamer" and r.get("phase") == "outcome"]
    assert len(outcome) == 1 and outcome[0]["upstream_status"] == 200


def test_audit_verify_names_the_tampered_chain_among_several(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = load_or_create_key(state / "signing-key.pem")
    for worker in (0, 1, 2):
        log = AuditLog(state / f"audit.r1.{worker}.jsonl", key.private, origin={"replica": "r1", "worker": worker})
        for i in range(5):
            log.write({"phase": "decision", "decision_id": f"dec_{worker}_{i}", "sub": "a"})
        log.close()

    def verify(*args: str) -> tuple[int, str, str]:
        code = cli_main(["audit", "verify", "--state-dir", str(state), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = verify()
    assert code == 0 and out.count("ok: 5 records, signed up to seq 5; closed at shutdown") == 3
    bad = state / "audit.r1.1.jsonl"
    bad.write_bytes(bad.read_bytes().replace(b'"dec_1_3"', b'"dec_1_9"'))
    for args in ((), (str(state),), (str(state / "audit.r1.0.jsonl"), str(bad), str(state / "audit.r1.2.jsonl"))):
        code, out, err = verify(*args)
        assert code == 1
        assert out == f"{state / 'audit.r1.0.jsonl'}: ok: 5 records, signed up to seq 5; closed at shutdown\n"
        assert err == f"{bad}: FAILED at line 4: record seq 4 (line 4) was changed: its hash does not match its content\n"
    assert verify(str(state / "audit.r1.2.jsonl"), "--strict") == (
        0, "ok: 5 records, signed up to seq 5; closed at shutdown\n", "")
    code, _, err = verify(str(tmp_path / "elsewhere"))
    assert code == 2 and err == f"{tmp_path / 'elsewhere'}: No such file or directory\n"
    (tmp_path / "empty").mkdir()
    assert verify(str(tmp_path / "empty")) == (2, "", f"no audit log in {tmp_path / 'empty'}\n")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


def _wait(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


@pytest.mark.chaos_full
def test_a_worker_dying_again_and_again_backs_off_and_an_orphaned_fleet_stops(
    tmp_path: Path, pki: PKI, vendor: FakeVendor, redis: RedisServer
) -> None:
    gw = GatewayProcess(tmp_path / "gw", fleet_settings(pki, vendor, redis, drain_timeout="5s")).start()
    assert gw.proc is not None
    token = gw.token(scopes=("stripe:*",))
    try:
        for attempt, delay in enumerate(("0.5", "1.0", "2.0"), 1):
            victim = worker_pids(gw)[1]
            os.kill(victim, signal.SIGKILL)
            gw.wait_log(f"worker 1 (pid {victim}) died (signal SIGKILL); restarting in {delay}s ({attempt} in a row)")
            gw.wait_log(" serves", count=2 + attempt)
            with client(gw, token) as c:  # the other worker served throughout; the port never closed
                assert pay(c).status_code == 200
        survivors = sorted(worker_pids(gw).values())
        gw.proc.kill()  # the supervisor dies: its workers drain and exit rather than serve unsupervised
        gw.proc.wait()
        for pid in survivors:
            _wait(lambda pid=pid: not _alive(pid), timeout=30)
        assert gw.log_file.read_text().count("is gone; draining") == 2
        _wait(lambda: _refused(gw.port) and _refused(gw.api_port), timeout=5)
    finally:
        gw.stop()
    verify = gw.cli("audit", "verify", "--strict", check=False)  # each SIGKILLed chain was resumed and sealed
    assert verify.returncode == 0, verify.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is not serving
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_policy_report_counts_the_shadow_denials_of_every_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = load_or_create_key(state / "signing-key.pem")
    finding = {"code": "param_violation", "rule": "finance/pay#0", "message": "amount over max"}
    for worker, calls in ((0, 2), (1, 3)):
        log = AuditLog(state / f"audit.r1.{worker}.jsonl", key.private, origin={"replica": "r1", "worker": worker})
        for i in range(calls):
            log.write({"phase": "decision", "decision_id": f"dec_{worker}_{i}", "sub": "a", "would_deny": [finding]})
        log.close()
    assert cli_main(["policy", "report", "--state-dir", str(state)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:4] == ["a", "finance/pay#0", "param_violation", "5"]
    assert len(table) == 2
