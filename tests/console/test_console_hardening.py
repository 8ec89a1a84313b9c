"""The console's server side as an attacker and a demanding operator see it: what a browser may keep
of its data answers, and agents whose subject the console's URLs must carry intact."""

from __future__ import annotations

import time
from contextlib import closing
from urllib.parse import quote

import httpx
import pytest

from tests.clients import client, error_of
from tests.console.setup import sign_in
from tests.processes import GatewayProcess

BALANCE = "https://api.stripe.com/v1/balance"
CONSOLE_READS = ("/v1/decisions", "/v1/approvals", "/v1/approvals?state=all", "/v1/agents", "/v1/policies", "/v1/quarantine")


@pytest.mark.parametrize("path", CONSOLE_READS)
def test_data_the_console_reads_is_never_cached_nor_sniffed(gateway: GatewayProcess, path: str) -> None:
    """The page itself was no-store; the JSON it fills in (subs, tenants, parameters) was cacheable."""
    browser, session = sign_in(gateway, gateway.token(sub="ops", role="admin", tenant="*"))
    with closing(browser):
        r = browser.get(path, headers={"X-CSRF-Token": session["csrf"]})
    assert r.status_code == 200, r.text
    assert (r.headers["cache-control"], r.headers["x-content-type-options"]) == ("no-store", "nosniff")


def wait_revoked(gw: GatewayProcess, token: str) -> httpx.Response:
    """The agent's next calls until the proxy has reloaded its revocations (a failing test's bound)."""
    deadline = time.monotonic() + 10
    while True:
        with client(gw, token) as c:
            r = c.get(BALANCE)
        if r.status_code != 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


@pytest.mark.parametrize("sub", ["repo:acme/payments:ref:refs/heads/main", "spire:ns/finance/01", "50%/off", "q?x=1#frag"])
def test_the_console_revokes_an_agent_whose_sub_holds_url_syntax(gateway: GatewayProcess, sub: str) -> None:
    """An OIDC subject holds "/"; the console's revoke (encodeURIComponent) was a 404 for it, so such
    an agent could not be stopped from the Agents page."""
    token = gateway.token(sub=sub, scopes=("stripe:*",))
    with client(gateway, token) as c:
        assert c.get(BALANCE).status_code == 200
    browser, session = sign_in(gateway, gateway.token(sub="ops", role="admin", tenant="*"))
    with closing(browser):
        r = browser.post(f"/v1/agents/{quote(sub, safe='')}/revoke", headers={"X-CSRF-Token": session["csrf"]})
    assert (r.status_code, r.json()) == (200, {"revoked": {"sub": sub}})
    refused = wait_revoked(gateway, token)
    assert (refused.status_code, error_of(refused)["code"]) == (407, "identity_revoked")
    assert any(rec.get("phase") == "revoke" and rec.get("revoked_sub") == sub for rec in gateway.audit())


STATE_CHANGES = [
    ("POST", "/v1/approvals/apr_0123456789abcdef/deny", {"reason": "no"}),
    ("POST", "/v1/quarantine", {"all": True, "reason": "forged"}),
    ("POST", "/v1/agents/victim/revoke", None),
    ("POST", "/v1/agents/victim/baseline/reset", None),
    ("POST", "/v1/agents/victim/baseline/ratify", None),
    ("DELETE", "/console/session", None),
]


@pytest.mark.parametrize(("method", "path", "body"), STATE_CHANGES, ids=[f"{m} {p}" for m, p, _ in STATE_CHANGES])
def test_every_state_change_with_the_cookie_needs_this_sessions_csrf_token(
    gateway: GatewayProcess, method: str, path: str, body: dict[str, object] | None
) -> None:
    """No token, an empty one, and another live session's token (a CSRF token is bound to its session)."""
    admin = gateway.token(sub="ops", role="admin", tenant="*")
    browser, session = sign_in(gateway, admin)
    other, other_session = sign_in(gateway, admin)
    with closing(browser), closing(other):
        for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": other_session["csrf"]}):
            r = browser.request(method, path, json=body, headers=headers)
            assert (r.status_code, error_of(r)["code"]) == (403, "csrf_failed")
        quarantines = browser.get("/v1/quarantine", headers={"X-CSRF-Token": session["csrf"]}).json()["quarantines"]
        # the forged kill switch stopped nothing (the session gateway is shared: only this test's reason)
        assert [q for q in quarantines if q["reason"] == "forged"] == []


FILTERED_READS = [
    (path, query)
    for path in ("/v1/decisions", "/v1/approvals")
    for query in ("?sub=a&sub=b", "?limit=1&limit=2", "?tenant=acme&tenant=globex", "?since=nan", "?since=inf", "?since=x")
] + [("/v1/agents", query) for query in ("?since=1&since=2", "?since=nan", "?since=-inf")]


@pytest.mark.parametrize(("path", "query"), FILTERED_READS)
def test_a_repeated_or_non_finite_filter_is_refused_not_half_read(gateway: GatewayProcess, path: str, query: str) -> None:
    """An unknown filter was already a 400; a repeated one kept its last value and `since=nan`
    matched nothing, both silently, as if the filter had been applied."""
    admin = {"Authorization": f"Bearer {gateway.token(sub='ops', role='admin', tenant='*')}"}
    r = httpx.get(gateway.api_url + path + query, headers=admin)
    assert (r.status_code, error_of(r)["code"]) == (400, "bad_request")
    assert httpx.get(gateway.api_url + path + "?since=1", headers=admin).status_code == 200
