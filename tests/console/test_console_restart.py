"""The console in Chromium across a gateway restart: the live feed's stream ends at shutdown, and
the page must not sign its admin out for it ("A restart signs no one out"); only a session that
really ended does. Its own gateway, as the test restarts it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.clients import client
from tests.console.setup import GOOD, PAY, agent_token
from tests.console.test_console_browser import browser, by, cells, go, gw, sign_in, wait_for
from tests.processes import GatewayProcess

__all__ = ["browser", "gw"]  # the module-scoped fixtures, this module's own instances


def feed_subs(driver: Any) -> list[str]:
    return [cells(row)["Agent"] for row in driver.find_elements(by().CSS_SELECTOR, "#feed tbody tr")]


@pytest.mark.chaos_full  # restarts the gateway under Chromium (~9 s)
def test_a_restart_keeps_the_page_signed_in_and_the_feed_comes_back(browser: Any, gw: GatewayProcess) -> None:
    sign_in(browser, gw, gw.token(sub="ops", role="admin", tenant="*"))
    go(browser, "decisions")
    wait_for(browser, lambda d: d.find_element(by().ID, "feed-state").text == "Live.")
    gw.stop()  # SIGTERM: the stream gets `event: end` ("the gateway is shutting down")
    wait_for(browser, lambda d: d.find_element(by().ID, "feed-state").text != "Live.")
    gw.start()
    wait_for(browser, lambda d: d.find_element(by().ID, "feed-state").text == "Live.", timeout=30)
    assert browser.find_element(by().ID, "nav").is_displayed()
    assert not browser.find_element(by().ID, "sign-in").is_displayed()
    with client(gw, agent_token(gw, "after-restart", "acme")) as c:
        assert c.post(PAY, data=GOOD).status_code == 200
    wait_for(browser, lambda d: "after-restart" in feed_subs(d))


def test_a_session_ended_elsewhere_still_signs_the_page_out(browser: Any, gw: GatewayProcess) -> None:
    """The other reason a stream ends: signing out (here through the API, as another tab would).
    It signs in itself unless the restart case above (in `make chaos` only) left it signed in."""
    if not any(c["name"] == "egress_console" for c in browser.get_cookies()):
        sign_in(browser, gw, gw.token(sub="ops", role="admin", tenant="*"))
    go(browser, "decisions")
    wait_for(browser, lambda d: d.find_element(by().ID, "feed-state").text == "Live.")
    cookie = next(c for c in browser.get_cookies() if c["name"] == "egress_console")["value"]
    csrf = browser.execute_script(
        "return fetch('/console/session', {credentials: 'same-origin'}).then(r => r.json()).then(s => s.csrf)")
    r = httpx.delete(f"{gw.api_url}/console/session", headers={"Cookie": f"egress_console={cookie}", "X-CSRF-Token": csrf})
    assert r.json() == {"signed_out": True}
    wait_for(browser, lambda d: d.find_element(by().ID, "sign-in").is_displayed())
    assert "Sign in again" in browser.find_element(by().ID, "status").text
