"""The console's server side through real HTTP: the page and its CSP, sign-in and the session
cookie, CSRF, what the cookie may and may not reach, tenant scoping, the decisions stream, the
agents and policies views. The browser itself is driven in test_console_browser.py."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.live_decisions import LiveDecisions
from tests.clients import client, error_of, sse_events
from tests.console.setup import BIG, GOOD, PAY, agent_token, ask_approval, policy_dir, sign_in
from tests.fakes import PKI, VENDOR_ENV, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

GLOBEX_ONLY = """
version: 1
tenant: globex
subjects: {roles: [globex-ops]}
rules:
  - name: globex-balance
    connector: stripe
    actions: [retrieve_balance]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("console-api")
    policies = policy_dir(root)
    (policies / "globex.yaml").write_text(GLOBEX_ONLY)
    with GatewayProcess(root, vendor_settings(pki, vendor_server, policies=str(policies))).start() as g:
        yield g


def admin_token(gw: GatewayProcess, tenant: str, sub: str = "ops") -> str:
    return gw.token(sub=sub, role="admin", tenant=tenant)


def csrf(session: dict[str, Any]) -> dict[str, str]:
    return {"X-CSRF-Token": session["csrf"]}


def test_the_page_is_plain_files_under_a_strict_csp(gw: GatewayProcess) -> None:
    page = httpx.get(f"{gw.api_url}/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-store"
    html = page.text
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []  # no inline script
    assert re.findall(r"<style|\sstyle=|\son[a-z]+=", html) == []  # no inline style or handler
    js = httpx.get(f"{gw.api_url}/console/static/console.js")
    css = httpx.get(f"{gw.api_url}/console/static/console.css")
    assert (js.status_code, css.status_code) == (200, 200)
    assert js.headers["content-type"].startswith("text/javascript") and css.headers["content-type"].startswith("text/css")
    for text in (html, js.text, css.text):  # nothing loaded from elsewhere at run time
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert re.findall(r"\.(?:inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function", js.text) == []
    assert "localStorage" not in js.text and "sessionStorage" not in js.text
    missing = httpx.get(f"{gw.api_url}/console/static/../app.py")
    assert missing.status_code == 404


def test_sign_in_sets_a_strict_cookie_and_the_token_is_kept_nowhere(gw: GatewayProcess) -> None:
    token = admin_token(gw, "acme")
    r = httpx.post(f"{gw.api_url}/console/session", json={"token": token})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"sub", "tenant", "csrf", "expires_at"} and (body["sub"], body["tenant"]) == ("ops", "acme")
    cookie = r.headers["set-cookie"]
    parts = [p.strip().lower() for p in cookie.split(";")]
    assert parts[0].startswith("egress_console=")
    assert {"httponly", "samesite=strict", "path=/"} <= set(parts)
    assert "secure" not in parts  # plain http here; see test_bounds_and_the_secure_flag
    max_age = int(next(p for p in parts if p.startswith("max-age=")).split("=")[1])
    assert 0 < max_age <= 600  # the session ends with the token behind it (a 600 s token)
    assert r.headers["cache-control"] == "no-store"
    session_id = parts[0].split("=", 1)[1]
    kept = gw.audit_file.read_text() + gw.log_file.read_text()
    assert token not in kept and session_id.lower() not in kept.lower() and body["csrf"] not in kept
    assert any(rec.get("phase") == "console_sign_in" and rec["sub"] == "ops" for rec in gw.audit())


@pytest.mark.parametrize(
    ("make", "content_type", "status", "code"),
    [
        (lambda gw: gw.token(sub="a", role="finance", tenant="acme"), "application/json", 403, "admin_required"),
        (lambda gw: gw.token(sub="m", role="metrics", tenant="acme"), "application/json", 403, "admin_required"),
        (lambda gw: "forged.token.value", "application/json", 401, "identity_invalid"),
        (lambda gw: gw.token(sub="ops", role="admin", tenant="acme"), "application/x-www-form-urlencoded", 400, "bad_request"),
    ],
)
def test_sign_in_takes_admin_tokens_only_as_json(gw: GatewayProcess, make: Any, content_type: str, status: int, code: str) -> None:
    token = make(gw)
    content = json.dumps({"token": token}) if content_type == "application/json" else f"token={token}"
    r = httpx.post(f"{gw.api_url}/console/session", content=content, headers={"Content-Type": content_type})
    assert (r.status_code, error_of(r)["code"]) == (status, code)
    assert "set-cookie" not in r.headers


def test_csrf_missing_or_wrong_is_403_and_changes_nothing(gw: GatewayProcess) -> None:
    approval_id = ask_approval(gw, agent_token(gw, "csrf-agent", "acme"))
    c, session = sign_in(gw, admin_token(gw, "acme"))
    with closing(c):
        for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": session["csrf"][:-1]}):
            r = c.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "looks fine"}, headers=headers)
            assert (r.status_code, error_of(r)["code"]) == (403, "csrf_failed")
            r = c.get("/v1/approvals", headers=headers)  # reads too: the cookie is for the console's requests only
            assert (r.status_code, error_of(r)["code"]) == (403, "csrf_failed")
            r = c.delete("/console/session", headers=headers)
            assert (r.status_code, error_of(r)["code"]) == (403, "csrf_failed")
        pending = c.get("/v1/approvals", headers=csrf(session)).json()["approvals"]
        assert [a["state"] for a in pending if a["id"] == approval_id] == ["pending"]
        r = c.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "looks fine"}, headers=csrf(session))
        assert r.status_code == 200 and r.json()["state"] == "approved" and r.json()["decision_reason"] == "looks fine"
        old_cookie = c.cookies["egress_console"]
        assert c.delete("/console/session", headers=csrf(session)).json() == {"signed_out": True}
        assert "egress_console" not in c.cookies  # the browser is told to drop it
        r = httpx.get(f"{gw.api_url}/v1/approvals", headers={"Cookie": f"egress_console={old_cookie}", **csrf(session)})
        assert (r.status_code, error_of(r)["code"]) == (401, "identity_expired")  # and the server forgot it


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/connectors"), ("GET", "/metrics"), ("POST", "/v1/tools"), ("POST", "/v1/detokenize"),
     ("GET", "/v1/tools"), ("POST", "/v1/sandbox/run"), ("GET", "/v1/approvals/apr_0123456789abcdef")],
)
def test_the_cookie_reaches_no_endpoint_the_console_does_not_use(gw: GatewayProcess, method: str, path: str) -> None:
    c, session = sign_in(gw, admin_token(gw, "*"))
    with closing(c):
        r = c.request(method, path, headers=csrf(session), json={} if method == "POST" else None)
    assert (r.status_code, error_of(r)["code"]) == (401, "identity_missing")


def test_a_bearer_token_wins_over_the_cookie_and_keeps_working_alone(gw: GatewayProcess) -> None:
    c, session = sign_in(gw, admin_token(gw, "*"))
    with closing(c):
        agent = {"Authorization": f"Bearer {agent_token(gw, 'a', 'acme')}", **csrf(session)}
        r = c.get("/v1/approvals", headers=agent)
        assert (r.status_code, error_of(r)["code"]) == (403, "admin_required")
    r = httpx.get(f"{gw.api_url}/v1/agents", headers={"Authorization": f"Bearer {admin_token(gw, '*')}"})
    assert r.status_code == 200 and "agents" in r.json()


def test_a_tenant_admin_sees_only_its_tenant(gw: GatewayProcess) -> None:
    acme_id = ask_approval(gw, agent_token(gw, "scope-acme", "acme"))
    globex_id = ask_approval(gw, agent_token(gw, "scope-globex", "globex"))
    c, session = sign_in(gw, admin_token(gw, "acme"))
    with closing(c):
        h = csrf(session)
        ids = {a["id"] for a in c.get("/v1/approvals", headers=h).json()["approvals"]}
        assert acme_id in ids and globex_id not in ids
        history = c.get("/v1/approvals?state=all", headers=h).json()["approvals"]
        assert {a["tenant"] for a in history} == {"acme"}
        latest = c.get("/v1/approvals?state=all&limit=1", headers=h).json()["approvals"]
        assert latest == history[-1:] and latest[0]["id"] == acme_id
        r = c.post(f"/v1/approvals/{globex_id}/deny", headers=h)
        assert (r.status_code, error_of(r)["code"]) == (404, "not_found")
        decisions = c.get("/v1/decisions?limit=1000", headers=h).json()["decisions"]
        assert decisions and {d["tenant"] for d in decisions} == {"acme"}
        agents = c.get("/v1/agents", headers=h).json()["agents"]
        assert "scope-acme" in {a["sub"] for a in agents} and {a["tenant"] for a in agents} == {"acme"}
        globex_decision = next(rec["decision_id"] for rec in gw.audit() if rec.get("sub") == "scope-globex")
        r = c.get(f"/v1/decisions/{globex_decision}", headers=h)
        assert (r.status_code, error_of(r)["code"]) == (404, "not_found")
        r = c.post("/v1/agents/scope-globex/revoke", headers=h)
        assert (r.status_code, error_of(r)["code"]) == (404, "not_found")
        policies = c.get("/v1/policies", headers=h).json()
        assert "globex.yaml" not in {f["file"] for f in policies["files"]}
        assert {"finance.yaml", "courier.yaml"} <= {f["file"] for f in policies["files"]}
        # The stream too: a globex call made first never shows; the acme call after it does.
        with c.stream("GET", "/v1/decisions/stream", headers=h) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            with client(gw, agent_token(gw, "scope-globex", "globex")) as g:
                assert g.post(PAY, data=GOOD).status_code == 200
            with client(gw, agent_token(gw, "scope-acme", "acme")) as a:
                wanted = a.post(PAY, data=GOOD).headers["x-egress-decision-id"]
            seen = []
            for name, data in sse_events(stream.iter_lines()):
                assert name == "decision"
                seen.append(data)
                if data["decision_id"] == wanted and data["phase"] == "outcome":
                    break
        assert {rec["tenant"] for rec in seen} == {"acme"}
        assert [rec["phase"] for rec in seen if rec["decision_id"] == wanted] == ["decision", "outcome"]


def test_the_stream_filters_and_ends_when_the_authority_behind_it_ends(gw: GatewayProcess) -> None:
    c, session = sign_in(gw, admin_token(gw, "*"))
    with closing(c), c.stream("GET", "/v1/decisions/stream?sub=filtered-agent&decision=deny", headers=csrf(session)) as stream:
        with client(gw, agent_token(gw, "other-agent", "acme")) as other:
            assert other.post(PAY, data=BIG).status_code == 403
        with client(gw, agent_token(gw, "filtered-agent", "acme")) as a:
            assert a.post(PAY, data=GOOD).status_code == 200  # an allow: filtered out
            denied = a.post(PAY, data=BIG).headers["x-egress-decision-id"]
        events = sse_events(stream.iter_lines())
        name, data = next(events)
        assert (name, data["decision_id"], data["sub"], data["code"]) == ("decision", denied, "filtered-agent", "approval_required")
        signed_out = httpx.delete(f"{gw.api_url}/console/session", cookies=c.cookies, headers=csrf(session))
        assert signed_out.status_code == 200
        assert next(events) == ("end", {"reason": "the console session has ended"})
    # A Bearer stream ends when its token is revoked; so does a session made from that token.
    bearer = admin_token(gw, "*", sub="ops-to-revoke")
    c2, session2 = sign_in(gw, bearer)
    with closing(c2), httpx.stream("GET", f"{gw.api_url}/v1/decisions/stream", headers={"Authorization": f"Bearer {bearer}"},
                          timeout=20) as stream:
        gw.cli("token", "revoke", "--sub", "ops-to-revoke")
        name, data = next(sse_events(stream.iter_lines()))
        assert (name, data) == ("end", {"reason": "the agent token has been revoked"})
        r = c2.get("/v1/approvals", headers=csrf(session2))
        assert (r.status_code, error_of(r)["code"]) == (401, "identity_revoked")


def test_one_decision_by_id(gw: GatewayProcess) -> None:
    with client(gw, agent_token(gw, "by-id", "acme")) as a:
        decision_id = a.post(PAY, data=GOOD).headers["x-egress-decision-id"]
    admin = {"Authorization": f"Bearer {admin_token(gw, 'acme')}"}
    found = httpx.get(f"{gw.api_url}/v1/decisions/{decision_id}", headers=admin).json()
    assert found["decision_id"] == decision_id
    assert [(r["phase"], r["decision"], r["sub"]) for r in found["records"]] == [("decision", "allow", "by-id"), ("outcome", "allow", "by-id")]
    missing = httpx.get(f"{gw.api_url}/v1/decisions/dec_nope", headers=admin)
    assert (missing.status_code, error_of(missing)["code"]) == (404, "not_found")


def test_agents_view_counts_calls_and_a_tenant_admin_revokes_only_in_its_tenant(gw: GatewayProcess) -> None:
    acme_token, globex_token = agent_token(gw, "twin", "acme"), agent_token(gw, "twin", "globex")
    with client(gw, acme_token) as a:
        assert a.post(PAY, data=GOOD).status_code == 200
        assert a.post(PAY, data=BIG).status_code == 403
    with client(gw, globex_token) as g:
        assert g.post(PAY, data=GOOD).status_code == 200
    acme = {"Authorization": f"Bearer {admin_token(gw, 'acme')}"}
    rows = [r for r in httpx.get(f"{gw.api_url}/v1/agents", headers=acme).json()["agents"] if r["sub"] == "twin"]
    assert [(r["tenant"], r["role"], r["calls"], r["denials"], r["tokens"]) for r in rows] == [("acme", "courier", 2, 1, 1)]
    assert rows[0]["last_seen"] > time.time() - 60
    r = httpx.post(f"{gw.api_url}/v1/agents/twin/revoke", headers=acme)
    assert r.json() == {"revoked": {"sub": "twin", "tokens": 1}}
    time.sleep(0.5)  # the proxy reloads revocations every 0.25 s
    with client(gw, acme_token) as a:
        r = a.post(PAY, data=GOOD)
        assert (r.status_code, error_of(r)["code"]) == (407, "identity_revoked")
    with client(gw, globex_token) as g:  # the namesake in another tenant is not the acme admin's to revoke
        assert g.post(PAY, data=GOOD).status_code == 200
    everyone = {"Authorization": f"Bearer {admin_token(gw, '*')}"}
    assert httpx.post(f"{gw.api_url}/v1/agents/twin/revoke", headers=everyone).json() == {"revoked": {"sub": "twin"}}
    time.sleep(0.5)
    with client(gw, globex_token) as g:
        assert error_of(g.post(PAY, data=GOOD))["code"] == "identity_revoked"
    assert any(rec.get("phase") == "revoke" and rec.get("revoked_sub") == "twin" for rec in gw.audit())


def test_policies_view_version_rules_shadow_counts_and_reload_errors(gw: GatewayProcess) -> None:
    admin = {"Authorization": f"Bearer {admin_token(gw, '*')}"}

    def view() -> dict[str, Any]:
        return httpx.get(f"{gw.api_url}/v1/policies", headers=admin).json()

    before = view()
    assert before["loaded"] and len(before["version"]) >= 12 and before["reload_error"] is None
    finance = next(f for f in before["files"] if f["file"] == "finance.yaml")
    payments = next(r for r in finance["rules"] if r["id"] == "finance-payments")
    assert payments["approval"] == "amount > 100000" and payments["params"]["amount"] == {"max": 500000}
    assert next(r for f in before["files"] for r in f["rules"] if r["id"] == "support-customers")["mode"] == "shadow"

    def shadow_count() -> int:
        rows = [r for r in view()["shadow_report"]["rows"] if (r["sub"], r["rule"]) == ("shadow-support", "support-customers")]
        return rows[0]["count"] if rows else 0

    assert shadow_count() == 0
    support = gw.token(sub="shadow-support", role="support", tenant="acme", scopes=("stripe:*",))
    with client(gw, support) as s:
        assert s.post("https://api.stripe.com/v1/customers", data={"description": "d" * 600}).status_code == 200
    assert shadow_count() == 1  # the decision and outcome records of one call count once
    with client(gw, support) as s:
        assert s.post("https://api.stripe.com/v1/customers", data={"description": "e" * 700}).status_code == 200
    assert shadow_count() == 2  # what was appended since is read, once
    broken = Path(gw.config_file.parent / "policies" / "zz-broken.yaml")
    broken.write_text("version: 1\nsubjects: {roles: [x]}\nrules:\n  - connector: nope\n    actions: [x]\n")
    try:
        deadline = time.monotonic() + 10
        while (error := view()["reload_error"]) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert error is not None and "zz-broken.yaml" in error
        assert view()["version"] == before["version"]  # the last good set keeps serving
    finally:
        broken.unlink()
    deadline = time.monotonic() + 10
    while view()["reload_error"] is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert view()["reload_error"] is None


def test_bounds_and_the_secure_flag(make_gateway: Any, pki: PKI, vendor: FakeVendor) -> None:
    gw = make_gateway(vendor_settings(pki, vendor, console={"secure_cookie": "always", "max_sessions": 3,
                                                             "sessions_per_admin": 2, "max_streams": 1}))
    cookies = []
    for _ in range(3):
        r = httpx.post(f"{gw.api_url}/console/session", json={"token": admin_token(gw, "acme", sub="one")})
        parts = [p.strip() for p in r.headers["set-cookie"].split(";")]
        assert "secure" in [p.lower() for p in parts]
        cookies.append((parts[0].split("=", 1)[1], r.json()["csrf"]))

    def approvals(session: tuple[str, str]) -> httpx.Response:
        return httpx.get(f"{gw.api_url}/v1/approvals", headers={"Cookie": f"egress_console={session[0]}", "X-CSRF-Token": session[1]})

    # One admin keeps its two newest sessions: the oldest ended.
    assert [approvals(s).status_code for s in cookies] == [401, 200, 200]
    assert httpx.post(f"{gw.api_url}/console/session", json={"token": admin_token(gw, "acme", sub="two")}).status_code == 200
    full = httpx.post(f"{gw.api_url}/console/session", json={"token": admin_token(gw, "acme", sub="three")})
    assert (full.status_code, error_of(full)["code"]) == (429, "rate_limited")
    admin = {"Authorization": f"Bearer {admin_token(gw, '*')}"}
    with httpx.stream("GET", f"{gw.api_url}/v1/decisions/stream", headers=admin, timeout=20) as first:
        assert first.status_code == 200
        second = httpx.get(f"{gw.api_url}/v1/decisions/stream", headers=admin)
        assert (second.status_code, error_of(second)["code"]) == (429, "rate_limited")
        # An open stream does not hold the gateway up at shutdown: it ends, and the process exits
        # by itself (a gateway still running 15 s after SIGTERM is killed, exit -9).
        with ThreadPoolExecutor(1) as pool:
            stopped = pool.submit(gw.stop)
            ended = next(data for name, data in sse_events(first.iter_lines()) if name == "end")
            assert ended == {"reason": "the gateway is shutting down"}
            assert stopped.result() == 0


def test_a_slow_reader_costs_a_bounded_queue_and_learns_what_it_lost() -> None:
    async def run() -> tuple[int, int, int, bool]:
        live = LiveDecisions(limit=2, capacity=3)
        slow, other = live.subscribe(), live.subscribe()
        assert slow is not None and other is not None and live.subscribe() is None
        for i in range(10):
            live.publish({"n": i})
        held, lost = slow.queue.qsize(), slow.take_lost()
        live.unsubscribe(other)
        return held, lost, slow.take_lost(), live.subscribe() is not None

    assert asyncio.run(run()) == (3, 7, 0, True)


def test_no_secret_reaches_the_console_views(gw: GatewayProcess) -> None:
    admin = {"Authorization": f"Bearer {admin_token(gw, '*')}"}
    seen = "".join(httpx.get(f"{gw.api_url}{path}", headers=admin).text
                   for path in ("/v1/agents", "/v1/policies", "/v1/decisions?limit=1000", "/v1/approvals?state=all"))
    for secret in VENDOR_ENV.values():
        assert secret not in seen
