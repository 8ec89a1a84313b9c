"""Through the real proxy: what a budget has spent outlives edits of the policy file (a rule inserted
above, the file renamed, the limit raised), and what a refused call took is given back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.clients import client, error_of
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

PAY = "https://api.stripe.com/v1/payment_intents"
BALANCE = "https://api.stripe.com/v1/balance"
BUDGET_RULE = """
  - connector: stripe
    actions: [create_payment_intent]
    budget: {field: amount, limit: LIMIT, per: day}
"""
BALANCE_RULE = """
  - connector: stripe
    actions: [retrieve_balance]
"""


def policy(*rules: str, limit: int = 10000) -> str:
    return "version: 1\nsubjects: {roles: [payer]}\nrules:" + "".join(rules).replace("LIMIT", str(limit))


def wait_until_balance_allowed(c: httpx.Client) -> None:
    """The edit adds a balance rule: the first 200 for the balance says the new set is serving."""
    deadline = time.monotonic() + 10
    while c.get(BALANCE).status_code != 200:
        assert time.monotonic() < deadline, "the edited policy was not loaded"
        time.sleep(0.1)


def test_a_budget_outlives_an_inserted_rule_a_renamed_file_and_a_raised_limit(
    make_gateway: Callable[..., GatewayProcess], pki: PKI, vendor: FakeVendor, tmp_path: Path
) -> None:
    """Keyed `file#index`, the edit below gave the agent a fresh 10000 (20000 spent in all)."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pay.yaml").write_text(policy(BUDGET_RULE))
    gw = make_gateway(vendor_settings(pki, vendor, policies=str(policies)))
    token = gw.token(sub="payer-1", role="payer", scopes=("stripe:*",))
    with client(gw, token) as c:
        before = [c.post(PAY, data={"amount": "2500", "currency": "usd"}).status_code for _ in range(5)]
        assert error_of(c.get(BALANCE))["code"] == "policy_denied"
        (policies / "pay.yaml").unlink()
        (policies / "payments.yaml").write_text(policy(BALANCE_RULE, BUDGET_RULE, limit=12000))
        wait_until_balance_allowed(c)
        refused = c.post(PAY, data={"amount": "2500", "currency": "usd"})
        fits = c.post(PAY, data={"amount": "2000", "currency": "usd"})
        over = c.post(PAY, data={"amount": "1", "currency": "usd"})
    assert before == [200, 200, 200, 200, 429]
    assert (refused.status_code, error_of(refused)["code"]) == (429, "budget_exceeded")
    assert fits.status_code == 200 and error_of(over)["code"] == "budget_exceeded"
    assert [r.path for r in vendor.received].count("/v1/payment_intents") == 5  # 12000 of the raised 12000
