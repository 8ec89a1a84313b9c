"""The console's server side as an attacker and a demanding operator see it: what a browser may keep
of its data answers."""

from __future__ import annotations

from contextlib import closing

import pytest

from tests.console.setup import sign_in
from tests.processes import GatewayProcess

CONSOLE_READS = ("/v1/decisions", "/v1/approvals", "/v1/approvals?state=all", "/v1/agents", "/v1/policies", "/v1/quarantine")


@pytest.mark.parametrize("path", CONSOLE_READS)
def test_data_the_console_reads_is_never_cached_nor_sniffed(gateway: GatewayProcess, path: str) -> None:
    """The page itself was no-store; the JSON it fills in (subs, tenants, parameters) was cacheable."""
    browser, session = sign_in(gateway, gateway.token(sub="ops", role="admin", tenant="*"))
    with closing(browser):
        r = browser.get(path, headers={"X-CSRF-Token": session["csrf"]})
    assert r.status_code == 200, r.text
    assert (r.headers["cache-control"], r.headers["x-content-type-options"]) == ("no-store", "nosniff")

