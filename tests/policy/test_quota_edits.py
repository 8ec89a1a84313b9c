"""Through the real proxy: what a budget has spent outlives edits of the policy file (a rule inserted
above, the file renamed, the limit raised), and what a refused call took is given back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

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


APPROVED_PAY = """version: 1
subjects: {roles: [approver]}
rules:
  - name: approved-pay
    connector: stripe
    actions: [create_payment_intent]
    approval: "amount > 1000"
    budget: {field: amount, limit: LIMIT, per: day}
dlp: {block: [EMAIL_ADDRESS]}
"""


@pytest.fixture(scope="module")
def spend_gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("spend-gw")
    policies = root / "policies"
    policies.mkdir()
    (policies / "approver.yaml").write_text(APPROVED_PAY.replace("LIMIT", "3000"))
    with GatewayProcess(root, vendor_settings(pki, vendor_server, policies=str(policies))).start() as gw:
        yield gw


def approver(gw: GatewayProcess, sub: str) -> str:
    return gw.token(sub=sub, role="approver", scopes=("stripe:*",))


def approved(gw: GatewayProcess, c: httpx.Client, data: dict[str, str]) -> str:
    """An approval for exactly this call, asked for and granted through the admin API."""
    held = error_of(c.post(PAY, data=data))
    assert held["code"] == "approval_required", held
    admin = {"Authorization": f"Bearer {gw.token(sub='ops', role='admin')}"}
    granted = httpx.post(f"{gw.api_url}/v1/approvals/{held['approval_id']}/approve", headers=admin)
    assert granted.status_code == 200, granted.text
    return str(held["approval_id"])


def test_a_payment_dlp_blocks_gives_its_budget_back(spend_gw: GatewayProcess, vendor: FakeVendor) -> None:
    """The budget is charged before DLP reads the body: three blocked payments of 1000 used to
    spend the whole 3000 with nothing paid."""
    with client(spend_gw, approver(spend_gw, "payer-dlp")) as c:
        blocked = [c.post(PAY, data={"amount": "1000", "currency": "usd", "description": f"for jane{i}@example.com"})
                   for i in range(3)]
        paid = [c.post(PAY, data={"amount": "1000", "currency": "usd"}).status_code for _ in range(3)]
        over = c.post(PAY, data={"amount": "1", "currency": "usd"})
    assert [(r.status_code, error_of(r)["code"]) for r in blocked] == [(403, "pii_blocked")] * 3
    assert paid == [200, 200, 200] and error_of(over)["code"] == "budget_exceeded"
    assert len(vendor.received) == 3


def test_twenty_concurrent_calls_with_one_approval_let_exactly_one_out(spend_gw: GatewayProcess, vendor: FakeVendor) -> None:
    token = approver(spend_gw, "payer-race")
    call = {"amount": "1500", "currency": "usd"}
    with client(spend_gw, token) as c:
        approval_id = approved(spend_gw, c, call)
    start = threading.Barrier(20)

    def one(_: int) -> str:
        with client(spend_gw, token) as c:
            start.wait()
            r = c.post(PAY, data=call, headers={"X-Egress-Approval": approval_id})
            return "ok" if r.status_code == 200 else str(error_of(r)["code"])

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(one, range(20)))
    assert sorted(outcomes) == ["approval_required"] * 19 + ["ok"]
    assert len(vendor.received) == 1
    admin = {"Authorization": f"Bearer {spend_gw.token(sub='ops', role='admin')}"}
    assert httpx.get(f"{spend_gw.api_url}/v1/approvals/{approval_id}", headers=admin).json()["state"] == "used"


def test_an_approval_a_budget_refuses_is_kept_for_the_next_try(
    make_gateway: Callable[..., GatewayProcess], pki: PKI, vendor: FakeVendor, tmp_path: Path
) -> None:
    """The approved call meets a spent budget (429): the approval used to be gone with it, so the
    agent had to ask a person again once the budget allowed the call. The budget is then raised by
    an edit (what was spent stays spent) and the same approval lets the call out, once."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "approver.yaml").write_text(APPROVED_PAY.replace("LIMIT", "3000"))
    gw = make_gateway(vendor_settings(pki, vendor, policies=str(policies)))
    call = {"amount": "1500", "currency": "usd"}
    admin = {"Authorization": f"Bearer {gw.token(sub='ops', role='admin')}"}
    with client(gw, approver(gw, "payer-kept")) as c:
        spent = [c.post(PAY, data={"amount": "1000", "currency": "usd"}).status_code for _ in range(2)]
        approval_id = approved(gw, c, call)
        refused = c.post(PAY, data=call, headers={"X-Egress-Approval": approval_id})
        state = httpx.get(f"{gw.api_url}/v1/approvals/{approval_id}", headers=admin).json()["state"]
        (policies / "approver.yaml").write_text(APPROVED_PAY.replace("LIMIT", "4000"))
        # Written second, so the set that first allows the balance holds the raised limit too.
        (policies / "balance.yaml").write_text(policy(BALANCE_RULE).replace("payer", "approver"))
        wait_until_balance_allowed(c)
        done = c.post(PAY, data=call, headers={"X-Egress-Approval": approval_id})
        again = c.post(PAY, data=call, headers={"X-Egress-Approval": approval_id})
    assert spent == [200, 200]
    assert (refused.status_code, error_of(refused)["code"]) == (429, "budget_exceeded")
    assert state == "approved"
    assert done.status_code == 200, done.text
    assert error_of(again)["code"] == "approval_required" and error_of(again)["approval_id"] != approval_id
    assert [r.path for r in vendor.received].count("/v1/payment_intents") == 3
