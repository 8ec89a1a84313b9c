"""The console in a real browser (headless Chromium from Debian, via Selenium and chromedriver),
against a real gateway, a real fake vendor and real agent calls through the proxy: sign in, watch an
approval arrive, approve it with a reason, the agent's retry passes; the feed, agents and policies
pages; hostile agent strings stay text; a tenant admin sees only its tenant; phone widths.

One browser and one gateway for the module; tests run in file order and share the signed-in page.
Screenshots of every page are written to tests/artifacts/console/ (printed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients import client, error_of
from tests.console.browser import artifacts_dir, start_browser
from tests.console.setup import BIG, GOOD, HOSTILE_SUB, HOSTILE_TENANT, PAY, agent_token, ask_approval, policy_dir
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

TITLE = "egress-gateway console"
HOSTILE_ROLE = "<svg onload=\"document.title='pwned-role'\"></svg>"
PAGES = ("approvals", "decisions", "agents", "policies")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("console-browser")
    with GatewayProcess(root, vendor_settings(pki, vendor_server, policies=str(policy_dir(root)))).start() as g:
        yield g


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = start_browser(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(30)
    print(f"\nconsole screenshots: {artifacts_dir()}")
    yield driver
    driver.quit()


def by() -> Any:
    from selenium.webdriver.common.by import By

    return By


def wait_for(driver: Any, condition: Any, timeout: float = 20) -> Any:
    """Selenium's wait: polls `condition(driver)` until it is truthy (a failing test's bound only).
    Pages re-render their tables when data arrives, so an element found a moment ago may be gone:
    the condition is then simply tried again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(condition)


def shot(driver: Any, name: str) -> Path:
    path = artifacts_dir() / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    return path


def cells(row: Any) -> dict[str, str]:
    """A table row's cells by their column label."""
    return {td.get_attribute("data-label"): td.text for td in row.find_elements(by().TAG_NAME, "td")}


def no_markup_ran(driver: Any) -> None:
    """Nothing an agent sent became an element or ran: no img/svg/script inside the page's content,
    and the title the hostile strings would rewrite is the page's own."""
    assert driver.find_elements(by().CSS_SELECTOR, "main img, main svg, main script, header img, header script") == []
    assert driver.title == TITLE


def go(driver: Any, page: str) -> None:
    driver.find_element(by().CSS_SELECTOR, f'#nav a[data-page="{page}"]').click()
    wait_for(driver, lambda d: d.find_element(by().ID, f"page-{page}").is_displayed())


def sign_in(driver: Any, gw: GatewayProcess, token: str) -> None:
    """As a person would: open /console, paste the token, press Enter (keyboard only)."""
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{gw.api_url}/console")
    field = wait_for(driver, lambda d: d.find_element(by().ID, "token") if d.find_element(by().ID, "sign-in").is_displayed() else None)
    field.send_keys(token + Keys.ENTER)
    wait_for(driver, lambda d: d.find_element(by().ID, "nav").is_displayed())


def test_sign_in_keeps_the_token_out_of_the_page_and_the_cookie_is_strict(browser: Any, gw: GatewayProcess) -> None:
    token = gw.token(sub="ops", role="admin", tenant="*")
    sign_in(browser, gw, token)
    assert browser.find_element(by().ID, "who-text").text == "ops (tenant *)"
    cookie = next(c for c in browser.get_cookies() if c["name"] == "egress_console")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"], cookie["path"]) == (True, "Strict", False, "/")
    assert 0 < cookie["expiry"] - time.time() <= 600
    assert "egress_console" not in browser.execute_script("return document.cookie")  # HttpOnly: script cannot read it
    assert browser.execute_script("return window.localStorage.length + window.sessionStorage.length") == 0
    assert token not in browser.current_url and token not in browser.page_source
    assert browser.find_element(by().ID, "token").get_attribute("value") == ""
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select')]"
        ".filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.id)")
    assert unlabelled == []


def test_a_pending_approval_appears_live_is_approved_with_a_reason_and_the_retry_passes(
    browser: Any, gw: GatewayProcess, vendor: FakeVendor
) -> None:
    go(browser, "approvals")
    token = agent_token(gw, HOSTILE_SUB, HOSTILE_TENANT)
    approval_id = ask_approval(gw, token)  # a real call through the proxy, held for approval
    row = wait_for(browser, lambda d: d.find_element(by().CSS_SELECTOR, f'#pending tr[data-id="{approval_id}"]'))
    shown = cells(row)
    assert shown["Agent"] == HOSTILE_SUB and shown["Tenant"] == HOSTILE_TENANT
    assert shown["Connector / action"].split() == ["stripe", "create_payment_intent"]
    assert "amount" in shown["Parameters"] and "150000" in shown["Parameters"]
    assert "courier-payments" in shown["Rule"] and shown["Expires"].endswith("Z")
    no_markup_ran(browser)
    shot(browser, "approvals")
    reason = browser.find_element(by().ID, f"reason-{approval_id}")
    reason.send_keys("checked with finance <b>ok</b>")
    row.find_element(by().CSS_SELECTOR, "button.approve").click()
    wait_for(browser, lambda d: not d.find_elements(by().CSS_SELECTOR, f'#pending tr[data-id="{approval_id}"]'))
    done = wait_for(browser, lambda d: cells(d.find_element(by().CSS_SELECTOR, f'#history tr[data-id="{approval_id}"]')))
    assert (done["State"], done["By"], done["Reason"]) == ("approved", "ops", "checked with finance <b>ok</b>")
    assert not vendor.received
    with client(gw, token) as c:
        r = c.post(PAY, data=BIG, headers={"X-Egress-Approval": approval_id})
    assert r.status_code == 200, r.text
    assert len(vendor.received) == 1
    shot(browser, "approvals-history")


def test_decisions_feed_is_live_filtered_and_shows_a_full_record(browser: Any, gw: GatewayProcess) -> None:
    go(browser, "decisions")
    browser.find_element(by().ID, "f-sub").send_keys(HOSTILE_SUB)
    browser.find_element(by().ID, "f-decision").send_keys("deny")
    browser.find_element(by().CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_for(browser, lambda d: d.find_element(by().ID, "feed-state").text == "Live.")
    before = len(browser.find_elements(by().CSS_SELECTOR, "#feed tbody tr"))
    with client(gw, agent_token(gw, "bystander", "acme")) as c:
        assert c.post(PAY, data=GOOD).status_code == 200  # another agent, allowed: filtered out
    hostile = gw.token(sub=HOSTILE_SUB, role=HOSTILE_ROLE, tenant=HOSTILE_TENANT, scopes=("stripe:*",))
    with client(gw, hostile) as c:
        refused = c.post(PAY, data=GOOD)
    assert error_of(refused)["code"] == "policy_denied"
    decision_id = refused.headers["x-egress-decision-id"]
    wait_for(browser, lambda d: len(d.find_elements(by().CSS_SELECTOR, "#feed tbody tr")) == before + 1)
    rows = [cells(r) for r in browser.find_elements(by().CSS_SELECTOR, "#feed tbody tr")]
    assert {(r["Agent"], r["Decision"]) for r in rows} == {(HOSTILE_SUB, "deny")}
    assert rows[0]["Code"] == "policy_denied" and rows[0]["Tenant"] == HOSTILE_TENANT
    browser.find_element(by().CSS_SELECTOR, "#feed tbody tr button").click()
    detail = wait_for(browser, lambda d: d.find_element(by().ID, "detail-body") if d.find_element(by().ID, "detail").is_displayed() else None)
    assert browser.find_element(by().ID, "detail-id").text == decision_id
    records = json.loads(detail.text)
    assert [(r["decision_id"], r["sub"], r["role"], r["tenant"]) for r in records] == [
        (decision_id, HOSTILE_SUB, HOSTILE_ROLE, HOSTILE_TENANT)]
    no_markup_ran(browser)
    shot(browser, "decisions")


def test_agents_page_lists_recent_agents_and_revokes_one(browser: Any, gw: GatewayProcess) -> None:
    token = agent_token(gw, "revoke-me", "acme")
    with client(gw, token) as c:
        assert c.post(PAY, data=GOOD).status_code == 200
    go(browser, "agents")

    def rows() -> list[dict[str, str]]:
        return [cells(r) for r in browser.find_elements(by().CSS_SELECTOR, "#agents tbody tr")]

    row = wait_for(browser, lambda d: next((r for r in rows() if r.get("Agent") == "revoke-me"), None))
    assert (row["Tenant"], row["Role"], row["Calls"], row["Denials"]) == ("acme", "courier", "1", "0")
    headers = wait_for(browser, lambda d: [th.text for th in d.find_elements(by().CSS_SELECTOR, "#agents thead th")])
    # Baseline and anomaly score columns appear only when the API provides them (no `anomaly:` here);
    # quarantine always.
    assert headers == ["Agent", "Tenant", "Role", "Last seen", "Calls", "Denials", "Quarantined", "Actions"]
    hostile = wait_for(browser, lambda d: next(r for r in rows() if r.get("Role") == HOSTILE_ROLE))
    assert (hostile["Agent"], hostile["Tenant"]) == (HOSTILE_SUB, HOSTILE_TENANT)
    no_markup_ran(browser)
    shot(browser, "agents")
    wait_for(browser, lambda d: d.find_element(by().CSS_SELECTOR, 'button[aria-label="Revoke revoke-me"]')).click()
    wait_for(browser, lambda d: d.switch_to.alert).accept()
    wait_for(browser, lambda d: d.find_element(by().ID, "status").text == "Revoked revoke-me.")
    time.sleep(0.5)  # the proxy reloads revocations every 0.25 s
    with client(gw, token) as c:
        r = c.post(PAY, data=GOOD)
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_revoked")


def test_agents_page_quarantines_then_releases_an_agent(browser: Any, gw: GatewayProcess) -> None:
    token = agent_token(gw, "quarantine-me", "acme")
    with client(gw, token) as c:
        assert c.post(PAY, data=GOOD).status_code == 200
    go(browser, "agents")

    def row() -> dict[str, str] | None:
        found = [cells(r) for r in browser.find_elements(by().CSS_SELECTOR, "#agents tbody tr")]
        return next((r for r in found if r.get("Agent") == "quarantine-me"), None)

    assert wait_for(browser, lambda d: row())["Quarantined"] == "no"
    for verb, status, code in (("Quarantine", 403, "quarantined"), ("Release", 200, None)):
        button = f'button[aria-label="{verb} quarantine-me"]'
        wait_for(browser, lambda d, button=button: d.find_element(by().CSS_SELECTOR, button)).click()
        prompt = wait_for(browser, lambda d: d.switch_to.alert)
        prompt.send_keys(f"{verb.lower()} from the console test")
        prompt.accept()
        done = f"{verb}d quarantine-me."
        wait_for(browser, lambda d, done=done: d.find_element(by().ID, "status").text == done)
        assert wait_for(browser, lambda d: row())["Quarantined"] == ("yes" if code else "no")
        time.sleep(0.5)  # every gateway process reads quarantines every 0.25 s
        with client(gw, token) as c:
            r = c.post(PAY, data=GOOD)
        assert r.status_code == status and (code is None or error_of(r)["code"] == code), r.text
    changes = [r for r in gw.audit() if r.get("phase") == "quarantine" and r.get("value") == "quarantine-me"]
    assert [(c["decision"], c["reason"]) for c in changes] == [
        ("quarantine", "quarantine from the console test"), ("release", "release from the console test")]


def test_policies_page_shows_version_rules_and_shadow_counts(browser: Any, gw: GatewayProcess) -> None:
    support = gw.token(sub="shadow-support", role="support", tenant="acme", scopes=("stripe:*",))
    with client(gw, support) as c:
        assert c.post("https://api.stripe.com/v1/customers", data={"description": "d" * 600}).status_code == 200
    go(browser, "policies")
    version = wait_for(browser, lambda d: d.find_element(by().ID, "policy-version").text or None)
    assert version.startswith("Version ") and "rules" in version
    files = [h.text for h in browser.find_elements(by().CSS_SELECTOR, "#policy-files h2")]
    assert {"finance.yaml", "support.yaml", "courier.yaml", "research.yaml"} <= set(files)
    shadow = wait_for(browser, lambda d: [cells(r) for r in d.find_elements(by().CSS_SELECTOR, "#shadow tbody tr")])
    assert [(r["Agent"], r["Rule"], r["Count"]) for r in shadow] == [("shadow-support", "support-customers", "1")]
    assert not browser.find_element(by().ID, "reload-error").is_displayed()
    shot(browser, "policies")


def test_every_page_fits_a_phone_and_a_laptop(browser: Any, gw: GatewayProcess) -> None:
    for width, height, label in ((390, 844, "phone"), (1280, 900, "laptop")):
        browser.set_window_size(width, height)
        for page in PAGES:
            go(browser, page)
            overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            wide = browser.execute_script(
                "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth)"
                ".slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)")
            assert overflow <= 0, f"{page} is {overflow}px wider than a {label} screen: {wide}"
            assert browser.find_element(by().ID, "sign-out").is_displayed()
            shot(browser, f"{page}-{label}")


def test_a_tenant_admin_sees_only_its_tenant_and_signing_out_ends_the_session(browser: Any, gw: GatewayProcess) -> None:
    acme_id = ask_approval(gw, agent_token(gw, "tenant-acme", "acme"))
    globex_id = ask_approval(gw, agent_token(gw, "tenant-globex", "globex"))
    browser.find_element(by().ID, "sign-out").click()
    wait_for(browser, lambda d: d.find_element(by().ID, "sign-in").is_displayed())
    assert [c for c in browser.get_cookies() if c["name"] == "egress_console"] == []
    sign_in(browser, gw, gw.token(sub="acme-ops", role="admin", tenant="acme"))
    go(browser, "approvals")
    wait_for(browser, lambda d: d.find_element(by().CSS_SELECTOR, f'#pending tr[data-id="{acme_id}"]'))
    pending = wait_for(browser, lambda d: [(r.get_attribute("data-id"), cells(r)["Tenant"])
                                            for r in d.find_elements(by().CSS_SELECTOR, "#pending tbody tr")])
    assert globex_id not in {approval for approval, _ in pending} and {tenant for _, tenant in pending} == {"acme"}
    assert HOSTILE_TENANT not in browser.find_element(by().ID, "history").text
    go(browser, "agents")
    tenants = wait_for(browser, lambda d: {cells(r)["Tenant"] for r in d.find_elements(by().CSS_SELECTOR, "#agents tbody tr")})
    assert tenants == {"acme"}
    shot(browser, "agents-tenant-admin")


def test_the_page_breaks_no_csp_rule(browser: Any) -> None:
    """Every script and style of the console comes from its own files: the browser reported no
    Content-Security-Policy violation on any page the tests above opened."""
    violations = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert violations == []
