"""Hostile agents and tools against `POST /v1/sandbox/run` and `POST /v1/tools` on a real gateway."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.sandbox_service import RUNS_PER_AGENT, RUNS_WAITING_PER_AGENT
from tests.clients import error_of
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[GatewayProcess]:
    g = GatewayProcess(tmp_path_factory.mktemp("sandbox-sweep-gw"), vendor_settings(pki, vendor_server))
    with g.start():
        yield g


def agent(gw: GatewayProcess, sub: str = "sweeper", role: str = "finance") -> str:
    return gw.token(sub=sub, role=role, scopes=("stripe:*",))


def run(gw: GatewayProcess, token: str, body: Any, *, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{gw.api_url}/v1/sandbox/run", content=content, headers=headers, timeout=60)


def printing_tool(name: str, output: bytes) -> dict[str, Any]:
    """A WASI command that prints `output` verbatim, as a `POST /v1/tools` body."""
    data = "".join(f"\\{b:02x}" for b in output)
    module = (
        '(module (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))'
        f' (memory (export "memory") 2) (data (i32.const 64) "{data}")'
        f' (func (export "_start") (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const {len(output)}))'
        ' (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))'
    ).encode()
    manifest = {"name": name, "module": "tool.wat", "sha256": hashlib.sha256(module).hexdigest(), "roles": ["*"],
                "limits": {"max_output_bytes": 1_000_000}}
    return {"manifest": manifest, "module_base64": base64.b64encode(module).decode()}


def register(gw: GatewayProcess, body: dict[str, Any]) -> httpx.Response:
    admin = gw.token(sub="ops", role="admin", scopes=())
    return httpx.post(f"{gw.api_url}/v1/tools", json=body, headers={"Authorization": f"Bearer {admin}"}, timeout=60)


@pytest.mark.parametrize(
    ("name", "printed"),
    [
        ("nan_out", b'{"x": NaN}'),
        ("inf_out", b'{"x": 1e999}'),
        ("surrogate_out", b'{"x": "\\ud800"}'),
        ("deep_out", b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    ],
)
def test_tool_output_json_cannot_carry_is_bad_output(gw: GatewayProcess, name: str, printed: bytes) -> None:
    r = register(gw, printing_tool(name, printed))
    assert r.status_code == 200, r.text
    r = run(gw, agent(gw), {"tool": name, "input": {}})
    assert (r.status_code, error_of(r)["code"]) == (502, "sandbox_bad_output"), r.text


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"tool": "stats", "input": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_000 + b"}", "malformed_body"),
        (b'{"tool": "stats", "input": {"values": ' + b"[" * 20_000 + b"]" * 20_000 + b"}}", "malformed_body"),
        (b'{"tool": "stats", "input": {"values": [1, 2]}, "\xff\xfe": 1}', "malformed_body"),
        (b'{"tool": "st\xc3\x28ats", "input": {}}', "malformed_body"),
        (b'{"tool": "stats", "input": {"x": NaN}}', "malformed_body"),
        (b'{"tool": "stats", "input": {"x": 1e999}}', "malformed_body"),
        (b'{"tool": "stats", "input": {"x": "\\ud800"}}', "malformed_body"),
    ],
)
def test_hostile_run_bodies_are_json_refusals(gw: GatewayProcess, raw: bytes, code: str) -> None:
    r = run(gw, agent(gw), None, raw=raw)
    assert (r.status_code, error_of(r)["code"]) == (400, code), r.text[:300]


@pytest.mark.parametrize("name", ["../stats", "stats/../stats", "\uff53\uff54\uff41\uff54\uff53", "stats\u0000", "STATS",
                                  "stats ", "%2e%2e/stats", "stats\n"])
def test_tool_names_are_exact_and_never_echoed(gw: GatewayProcess, name: str) -> None:
    r = run(gw, agent(gw), {"tool": name, "input": {}})
    err = error_of(r)
    assert (r.status_code, err["code"]) == (404, "sandbox_unknown_tool")
    assert name not in err["message"]
    record = next(x for x in gw.audit() if x.get("decision_id") == err["decision_id"])
    assert (record["action"], record["tool"]) == ("?", "?")  # the agent's string is kept out of the log


def test_trapped_guests_errors_name_no_host_path_or_stack(gw: GatewayProcess) -> None:
    for tool, status in (("spin", 504), ("memory_bomb", 422), ("output_flood", 502)):
        r = run(gw, agent(gw), {"tool": tool, "input": {}})
        assert r.status_code == status
        assert error_of(r)["message"].startswith(f"tool {tool!r} ")
        assert not any(leak in r.text for leak in (str(gw.state_dir), "/work", "Traceback", "site-packages", ".py"))
    escaped = run(gw, agent(gw), {"tool": "escape_attempt", "input": {}}).json()["output"]
    assert escaped["env"] == 0 and all(escaped[k] != 0 for k in ("open_file", "open_dir", "socket_send", "socket_accept"))


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example\\\\@api.stripe.com/v1/balance",  # urlsplit: stripe; WHATWG: evil.example
        "https://api.stripe.com@evil.example/v1/balance",
        "https://evil.example#@api.stripe.com/v1/balance",
        "https://api.stripe.com.evil.example/v1/balance",
        "https://127.0.0.1/v1/balance",
        "https://api.stripe.com/v1/balance/../refunds",
        "https://api.stripe.com/v1/%72efunds",
        "https://api.stripe.com:8443/v1/balance",
        "https://api.openai.com/v1/balance",
    ],
)
def test_url_parser_differentials_do_not_widen_the_ceiling(gw: GatewayProcess, vendor: FakeVendor, url: str) -> None:
    """fetch_any's manifest allows only stripe:retrieve_balance; the agent's token reaches stripe:*.
    Whatever a URL parser makes of the string, only that action may reach the vendor (with userinfo
    in the URL, httpx sends it to api.stripe.com, and the gateway's credential replaces its auth)."""
    r = run(gw, agent(gw), {"tool": "fetch_any", "input": {"url": url}})
    assert r.status_code == 200
    status = r.json()["output"]["status"]
    sent = [(x.method, x.host, x.path, x.headers["authorization"]) for x in vendor.received]
    assert sent == ([] if status != 200 else [("GET", "api.stripe.com", "/v1/balance", "Bearer sk_test_fake_stripe_key_0001")])
    assert status in (200, 403)


def test_registering_over_an_existing_name_is_refused_and_audited(gw: GatewayProcess) -> None:
    assert register(gw, printing_tool("pinned", b'{"v": 1}')).status_code == 200
    r = register(gw, printing_tool("pinned", b'{"v": 2}'))
    assert (r.status_code, error_of(r)["code"]) == (409, "conflict")
    r2 = register(gw, printing_tool("stats", b'{"v": 2}'))
    assert (r2.status_code, error_of(r2)["code"]) == (409, "conflict")
    assert run(gw, agent(gw), {"tool": "pinned", "input": {}}).json()["output"] == {"v": 1}
    recs = [x for x in gw.audit() if x.get("decision_id") in (r.headers["x-egress-decision-id"], r2.headers["x-egress-decision-id"])]
    assert [x["code"] for x in recs] == ["conflict", "conflict"]


def slow_runs(gw: GatewayProcess, vendor: FakeVendor, sub: str, count: int) -> tuple[list[threading.Thread], list[httpx.Response]]:
    """`count` fetch_any runs of agent `sub` against a vendor that answers after 3 s (each holds a
    worker until fetch_any's 2 s deadline), started at once; returns when RUNS_PER_AGENT of them
    have reached the vendor. The threads, and the list their answers land in."""
    vendor.delay = 3.0
    hog = agent(gw, sub=sub)
    finished: list[httpx.Response] = []

    def hold() -> None:
        finished.append(run(gw, hog, {"tool": "fetch_any", "input": {"url": "https://api.stripe.com/v1/balance"}}))

    threads = [threading.Thread(target=hold) for _ in range(count)]
    for t in threads:
        t.start()
    for _ in range(400):
        if len(vendor.received) >= RUNS_PER_AGENT:
            break
        time.sleep(0.02)
    return threads, finished


def outcome(r: httpx.Response) -> str:
    """A fetch_any run's error code ("" when the host call was answered), or the run's refusal."""
    return str(r.json()["output"]["error"]) if r.status_code == 200 else str(error_of(r)["code"])


def test_one_agents_slow_runs_leave_the_workers_to_others(gw: GatewayProcess, vendor: FakeVendor) -> None:
    """Each of the hog's runs holds a worker ~2 s (fetch_any's timeout; the vendor answers after 3 s).
    Without a per-agent bound, 20 such runs took every worker and a bystander's 2 ms run waited
    for them (measured: 2.3 s behind 30 of them)."""
    threads, finished = slow_runs(gw, vendor, "hog", RUNS_PER_AGENT + 2)
    bystander = run(gw, agent(gw, sub="bystander"), {"tool": "stats", "input": {"values": [1, 2]}})
    assert bystander.status_code == 200 and bystander.json()["output"]["sum"] == 3
    assert finished == []  # the bystander ran while every one of the hog's runs was still out
    assert len(vendor.received) == RUNS_PER_AGENT  # the hog's other runs wait for its own slots
    for t in threads:
        t.join()
    # Each ended at fetch_any's 2 s deadline: the host call's own timeout, or the deadline first.
    ends = [outcome(r) for r in finished]
    assert len(ends) == RUNS_PER_AGENT + 2 and set(ends) <= {"upstream_timeout", "sandbox_timeout"}, ends
    assert len(vendor.received) == RUNS_PER_AGENT + 2


def test_one_agent_cannot_queue_runs_without_bound(gw: GatewayProcess, vendor: FakeVendor) -> None:
    """Each waiting run holds its request body (up to max_body): past RUNS_PER_AGENT running and
    RUNS_WAITING_PER_AGENT waiting, the agent's next run is refused at once (429, Retry-After),
    audited, and never reaches a worker; another agent is not affected, and once the flood has
    drained the agent runs again."""
    admitted = RUNS_PER_AGENT + RUNS_WAITING_PER_AGENT
    threads, finished = slow_runs(gw, vendor, "queue-hog", admitted)
    # The waiting ones reach their queue meanwhile; well before the first four end (fetch_any's 2 s
    # deadline), which would let the probe in.
    time.sleep(0.8)
    refused = run(gw, agent(gw, sub="queue-hog"), {"tool": "stats", "input": {"values": [1]}})
    assert (refused.status_code, error_of(refused)["code"]) == (429, "rate_limited"), refused.text
    assert refused.headers["retry-after"] == "1" and finished == []
    (rec,) = [x for x in gw.audit() if x.get("decision_id") == refused.headers["x-egress-decision-id"]]
    assert (rec["decision"], rec["code"], rec["sub"]) == ("deny", "rate_limited", "queue-hog")
    other = run(gw, agent(gw, sub="queue-bystander"), {"tool": "stats", "input": {"values": [1, 2]}})
    assert other.status_code == 200 and other.json()["output"]["sum"] == 3
    vendor.delay = 0.0  # the waiting runs' host calls are answered at once: the queue drains fast
    for t in threads:
        t.join()
    assert len(finished) == admitted and len(vendor.received) == admitted
    # The first four met fetch_any's deadline against the slow vendor (its host call's timeout or
    # the run's, whichever first); every waiting one ran and got the vendor's answer.
    ends = [outcome(r) for r in finished]
    assert sorted(ends) == [""] * (admitted - RUNS_PER_AGENT) + sorted(e for e in ends if e), ends
    assert len([e for e in ends if e]) == RUNS_PER_AGENT and {e for e in ends if e} <= {"upstream_timeout", "sandbox_timeout"}
    again = run(gw, agent(gw, sub="queue-hog"), {"tool": "stats", "input": {"values": [2]}})
    assert again.status_code == 200 and again.json()["output"]["sum"] == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "../escape"), ("name", "tools/x"), ("name", "\uff58tool"), ("name", "x" * 65), ("name", "ok\n"),
        ("module", "../tool.wat"), ("module", "a\u0000.wat"), ("module", "a/../../tool.wat"), ("module", ".tool.wat"),
        ("module", "tool.wat\n"), ("allowed", ["stripe:*", "../x"]), ("roles", "finance"), ("limits", {"fuel": "1000"}),
        ("limits", {"memory_pages": 65537}), ("kind", "python"),
    ],
)
def test_hostile_manifests_are_refused_before_anything_is_written(gw: GatewayProcess, field: str, value: Any) -> None:
    body = printing_tool("hostile_manifest", b"{}")
    body["manifest"][field] = value
    r = register(gw, body)
    assert (r.status_code, error_of(r)["code"]) == (400, "schema_violation"), r.text
    assert str(value) not in error_of(r)["message"] or field in ("limits", "kind")
    assert not any(p.name != ".staging" for p in (gw.state_dir / "tools").glob("*hostile*"))
    assert not (gw.state_dir / "escape").exists()
