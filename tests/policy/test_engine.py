"""Decisions: every constraint kind allowed and refused, default deny, combination, shadow, approval."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.pipeline.call import Call
from gateway.policy.engine import Decision, DlpPolicy, PolicySet, RequestContext, Subject

FIN = Subject("fin-01", "finance", "acme")
NOON = RequestContext(now=datetime(2025, 3, 5, 12, 0, tzinfo=UTC), confidence=0.9)

BASE = """
version: 1
tenant: acme
subjects: {roles: [finance]}
rules:
  - connector: pay
    actions: [create]
    params:
      amount: {min: 100, max: 500000}
      currency: {one_of: [usd, eur]}
      metadata.account: {regex: "^[0-9]{10,12}$"}
      description: {max_length: 20}
      metadata.order: {required: true}
      email: {forbidden: true}
      "items[*].sku": {regex: "^[A-Z]{3}$"}
    approval: "amount > 100000"
  - connector: pay
    actions: [balance]
"""
OK: dict[str, Any] = {
    "amount": 5000,
    "currency": "usd",
    "metadata": {"account": "1234567890", "order": "o-1"},
    "description": "lunch",
    "items": [{"sku": "ABC"}, {"sku": "DEF"}],
}


@pytest.fixture
def fin(load: Callable[..., PolicySet]) -> PolicySet:
    return load(finance=BASE)


def with_(**changes: Any) -> dict[str, Any]:
    params = {**OK, "metadata": dict(OK["metadata"])}
    for key, value in changes.items():
        if key.startswith("metadata_"):
            params["metadata"][key.removeprefix("metadata_")] = value
        else:
            params[key] = value
    return params



def written(d: Decision) -> dict[str, object]:
    """The audit record the gateway writes for a decision (`Call.record`, its one projection)."""
    call = Call()
    call.decided_by(d)
    return call.record(d.outcome, d.refusal)

def test_allows_a_call_within_every_constraint(fin: PolicySet) -> None:
    d = fin.decide(FIN, "pay", "create", OK, NOON)
    assert d.outcome == "allow" and d.refusal is None
    assert [m.ref.id for m in d.rules] == ["finance.yaml#0"]
    assert d.policy_version == fin.version


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (with_(amount=900000), "amount 900000 exceeds max 500000 (rule finance.yaml#0)"),
        (with_(amount=50), "amount 50 is below min 100"),
        (with_(amount="5000"), "amount is not a number"),
        (with_(currency="gbp"), "currency is not one of [usd, eur]"),
        (with_(metadata_account="12345"), "metadata.account does not match the rule's pattern"),
        (with_(metadata_account="1234567890x"), "metadata.account does not match"),
        (with_(description="x" * 21), "description is longer than 20 (length 21)"),
        ({k: v for k, v in OK.items() if k != "metadata"}, "metadata.order is required"),
        (with_(email="a@b.example"), "email is forbidden"),
        (with_(items=[{"sku": "ABC"}, {"sku": "abcd"}]), "items[1].sku does not match"),
    ],
)
def test_each_constraint_refuses_with_field_and_rule(fin: PolicySet, params: dict, message: str) -> None:
    d = fin.decide(FIN, "pay", "create", params, NOON)
    assert d.outcome == "deny"
    assert d.refusal is not None and d.refusal.code == "param_violation"
    assert message in d.refusal.message
    assert (d.refusal.connector, d.refusal.action) == ("pay", "create")


def test_string_values_never_appear_in_messages(fin: PolicySet) -> None:
    secret = "jane.doe@example.com"
    for params in (with_(currency=secret), with_(metadata_account=secret), with_(description=secret * 3)):
        d = fin.decide(FIN, "pay", "create", params, NOON)
        assert d.refusal is not None and secret not in d.refusal.message
        assert secret not in str(written(d))
    d = fin.decide(FIN, "pay", "create", with_(amount=150000, description="jane"), NOON)
    assert d.outcome == "approval_required" and "jane" not in str(d.approval_summary)


def test_approval_above_threshold(fin: PolicySet) -> None:
    d = fin.decide(FIN, "pay", "create", with_(amount=150000), NOON)
    assert d.outcome == "approval_required"
    assert d.refusal is not None and d.refusal.code == "approval_required"
    assert "amount > 100000" in d.refusal.message and "finance.yaml#0" in d.refusal.message
    assert d.approval_summary == {"amount": 150000, "currency": "usd"}


def test_approval_condition_with_missing_field_fails_closed(load: Callable[..., PolicySet]) -> None:
    ps = load(p="""
        version: 1
        subjects: {roles: [finance]}
        rules:
          - {connector: pay, actions: [create], approval: "amount > 100 or confidence < 0.7"}
    """)
    assert ps.decide(FIN, "pay", "create", {"amount": 5}, NOON).outcome == "allow"
    no_conf = RequestContext(now=NOON.now)
    d = ps.decide(FIN, "pay", "create", {"amount": 5}, no_conf)
    assert d.outcome == "approval_required" and "confidence is not known" in d.refusal.message  # type: ignore[union-attr]
    assert ps.decide(FIN, "pay", "create", {}, NOON).outcome == "approval_required"
    low = RequestContext(now=NOON.now, confidence=0.5)
    assert ps.decide(FIN, "pay", "create", {"amount": 5}, low).outcome == "approval_required"


def test_time_of_day_uses_the_policy_timezone(load: Callable[..., PolicySet]) -> None:
    ps = load(p="""
        version: 1
        subjects: {roles: [finance]}
        timezone: Asia/Tokyo
        rules:
          - {connector: pay, actions: [create], approval: "hour >= 22 or hour < 6"}
    """)
    utc_noon = RequestContext(now=datetime(2025, 3, 5, 12, 0, tzinfo=UTC))  # 21:00 in Tokyo
    utc_14 = RequestContext(now=datetime(2025, 3, 5, 14, 0, tzinfo=UTC))  # 23:00 in Tokyo
    assert ps.decide(FIN, "pay", "create", {}, utc_noon).outcome == "allow"
    assert ps.decide(FIN, "pay", "create", {}, utc_14).outcome == "approval_required"


def test_default_deny_names_the_nearest_rule(fin: PolicySet) -> None:
    d = fin.decide(FIN, "pay", "refund", {}, NOON)
    assert d.outcome == "deny" and d.refusal is not None and d.refusal.code == "policy_denied"
    assert "nearest rule finance.yaml#0 allows pay: create" in d.refusal.message
    d = fin.decide(FIN, "search", "query", {}, NOON)
    assert d.refusal is not None and "policies for this agent: finance.yaml" in d.refusal.message
    other = Subject("r-1", "research")
    d = fin.decide(other, "pay", "create", OK, NOON)
    assert d.refusal is not None and "nearest rule finance.yaml#0 allows it for finance" in d.refusal.message


def test_subject_by_sub_and_tenant_scoping(load: Callable[..., PolicySet]) -> None:
    ps = load(p="""
        version: 1
        tenant: acme
        subjects: {sub: [bot-7]}
        rules: [{connector: pay, actions: [balance]}]
    """)
    assert ps.decide(Subject("bot-7", "any", "acme"), "pay", "balance", {}).outcome == "allow"
    assert ps.decide(Subject("bot-7", "any", "globex"), "pay", "balance", {}).outcome == "deny"
    assert ps.decide(Subject("bot-7", "any"), "pay", "balance", {}).outcome == "deny"
    assert ps.decide(Subject("bot-8", "any", "acme"), "pay", "balance", {}).outcome == "deny"


def test_every_covering_rule_must_pass_whatever_the_file_order(load: Callable[..., PolicySet]) -> None:
    ps = load(
        a_role="""
            version: 1
            subjects: {roles: [finance]}
            rules: [{connector: pay, actions: [create], params: {amount: {max: 500}}}]
        """,
        z_guard="""
            version: 1
            subjects: {roles: [finance, support]}
            rules: [{connector: pay, actions: [create], params: {amount: {max: 300}}, rate: 5/minute}]
        """,
    )
    assert ps.decide(FIN, "pay", "create", {"amount": 200}).outcome == "allow"
    d = ps.decide(FIN, "pay", "create", {"amount": 400})
    assert d.refusal is not None and "z_guard.yaml#0" in d.refusal.message
    assert [m.ref.id for m in ps.decide(FIN, "pay", "create", {"amount": 1}).rules] == [
        "a_role.yaml#0",
        "z_guard.yaml#0",
    ]


def test_shadow_file_lets_through_and_records(load: Callable[..., PolicySet]) -> None:
    ps = load(p="""
        version: 1
        subjects: {roles: [finance]}
        mode: shadow
        rules:
          - {name: capped, connector: pay, actions: [create], params: {amount: {max: 10}}, approval: "amount > 5"}
    """)
    d = ps.decide(FIN, "pay", "create", {"amount": 50})
    assert d.outcome == "allow" and d.refusal is None
    assert [(f.code, f.rule) for f in d.would_deny] == [("param_violation", "capped")]
    assert written(d)["would_deny"][0]["message"].startswith("amount 50 exceeds max 10")
    d = ps.decide(FIN, "pay", "create", {"amount": 7})
    assert d.outcome == "allow" and [f.code for f in d.would_deny] == ["approval_required"]
    d = ps.decide(FIN, "pay", "refund", {})
    assert d.outcome == "allow" and [f.code for f in d.would_deny] == ["policy_denied"]


def test_rule_mode_overrides_file_and_enforced_findings_win(load: Callable[..., PolicySet]) -> None:
    ps = load(p="""
        version: 1
        subjects: {roles: [finance]}
        rules:
          - {connector: pay, actions: [create], params: {amount: {max: 10}}, mode: shadow}
          - {connector: pay, actions: [create], params: {currency: {one_of: [usd]}}}
    """)
    d = ps.decide(FIN, "pay", "create", {"amount": 50, "currency": "usd"})
    assert d.outcome == "allow" and len(d.would_deny) == 1
    d = ps.decide(FIN, "pay", "create", {"amount": 50, "currency": "eur"})
    assert d.outcome == "deny" and len(d.would_deny) == 1
    assert ps.decide(FIN, "pay", "refund", {}).outcome == "deny"  # the file itself enforces


def test_dlp_merges_tokenize_union_and_reveal_intersection(load: Callable[..., PolicySet]) -> None:
    ps = load(
        a="""
            version: 1
            subjects: {roles: [finance]}
            dlp: {tokenize: [EMAIL_ADDRESS, PERSON], reveal: [EMAIL_ADDRESS, PERSON]}
        """,
        b="""
            version: 1
            subjects: {roles: [finance]}
            dlp: {tokenize: [PHONE_NUMBER], reveal: [EMAIL_ADDRESS]}
        """,
    )
    default = DlpPolicy(frozenset({"US_SSN"}), frozenset())
    dlp = ps.dlp_for(FIN, default)
    assert dlp.tokenize == {"EMAIL_ADDRESS", "PERSON", "PHONE_NUMBER"}
    assert dlp.reveal == {"EMAIL_ADDRESS"}
    assert ps.dlp_for(Subject("x", "other"), default) == default


def test_fifty_covering_rules_are_all_checked(load: Callable[..., PolicySet]) -> None:
    """Deny-overrides over many rules: the tightest covering rule decides (speed is in make bench)."""
    rules = "\n".join(
        f"  - {{connector: pay, actions: [{'create' if i % 2 else 'refund'}], params: {{amount: {{max: {1000 + i}}}}}}}"
        for i in range(50)
    )
    ps = load(p=f"version: 1\nsubjects: {{roles: [finance]}}\nrules:\n{rules}\n")
    assert len(ps.decide(FIN, "pay", "create", {"amount": 5, "currency": "usd"}, NOON).rules) == 25
    over = ps.decide(FIN, "pay", "create", {"amount": 1002, "currency": "usd"}, NOON)
    assert over.outcome == "deny" and over.refusal is not None and "1001" in over.refusal.message
