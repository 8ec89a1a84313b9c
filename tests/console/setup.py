"""What both console suites start: a gateway with the shipped policies plus a tenant-less
`courier` policy (so agents of any tenant, hostile-named ones included, can ask for approvals), and
the calls and sign-in they make."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx

from tests.clients import client, error_of
from tests.fakes import REPO
from tests.processes import GatewayProcess

PAY = "https://api.stripe.com/v1/payment_intents"
GOOD = {"amount": "1500", "currency": "usd", "metadata[account]": "1234567890"}
BIG = {**GOOD, "amount": "150000"}  # above finance-payments' and courier-payments' approval threshold
COURIER = """
version: 1
subjects: {roles: [courier]}
rules:
  - name: courier-payments
    connector: stripe
    actions: [create_payment_intent]
    approval: "amount > 100000"
"""
# Strings an agent controls (its sub and tenant are its token's; a path is its own), each of which
# would run script if any page parsed it as HTML.
HOSTILE_SUB = "<img src=x onerror=\"document.title='pwned-sub'\">"
HOSTILE_TENANT = "<script>document.title='pwned-tenant'</script>"


def policy_dir(root: Path) -> Path:
    d = root / "policies"
    shutil.copytree(REPO / "policies", d)
    (d / "courier.yaml").write_text(COURIER)
    return d


def agent_token(gw: GatewayProcess, sub: str, tenant: str, role: str = "courier") -> str:
    return gw.token(sub=sub, role=role, tenant=tenant, scopes=("stripe:*",))


def ask_approval(gw: GatewayProcess, token: str, data: dict[str, str] = BIG) -> str:
    """An agent's real call through the proxy that the policy holds for approval; its id."""
    with client(gw, token) as c:
        r = c.post(PAY, data=data)
    err = error_of(r)
    assert (r.status_code, err["code"]) == (403, "approval_required"), err
    return str(err["approval_id"])


def sign_in(gw: GatewayProcess, admin_token: str) -> tuple[httpx.Client, dict[str, Any]]:
    """A console session the way the page makes one: the token posted once; the cookie kept."""
    c = httpx.Client(base_url=gw.api_url, timeout=20)
    r = c.post("/console/session", json={"token": admin_token})
    assert r.status_code == 200, r.text
    return c, r.json()
