"""Budget and rate counters are keyed by what a rule counts, never by where it sits or its limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.cli.policy import policy_check
from gateway.errors import Refusal
from gateway.pipeline.quota import Quotas
from gateway.policy.engine import PolicySet, Subject
from gateway.policy.load import PolicyLoadError, load_policy_set
from gateway.stores import redis_state
from tests.policy.helpers import lookup, write

FIN = Subject("fin-01", "finance", "acme")
PAY_RULE = """
  - connector: pay
    actions: [create, refund]
    rate: 3/minute
    budget: {field: amount, limit: LIMIT, per: day}
"""
OTHER_RULE = """
  - connector: search
    actions: [query]
"""


def policy(*rules: str, tenant: str = "acme", limit: int = 10000) -> str:
    body = "".join(rules).replace("LIMIT", str(limit))
    return f"version: 1\ntenant: {tenant}\nsubjects: {{roles: [finance]}}\nrules:{body}"


def only(directory: Path, name: str, text: str) -> PolicySet:
    """The policy directory holding exactly one file, `name`, loaded."""
    for old in directory.glob("*.yaml"):
        old.unlink()
    write(directory, name, text)
    return load_policy_set(directory, lookup)


async def pay(q: Quotas, ps: PolicySet, amount: int) -> str:
    try:
        await q.charge(ps.decide(FIN, "pay", "create", {"amount": amount}), {"amount": amount})
    except Refusal as r:
        return r.code
    return "ok"


@pytest.fixture(params=["memory", "redis"])
def quota_uri(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    uri = f"redis://127.0.0.1:{request.getfixturevalue('redis').port}/9"
    redis_state.connect(uri).flushdb()
    return uri


def test_an_unnamed_budget_survives_a_rule_inserted_above_a_renamed_file_and_a_raised_limit(
    policy_dir: Path, quota_uri: str
) -> None:
    """Keyed `file#index` and with the limit, each edit below gave every agent a fresh budget."""

    rule = PAY_RULE.replace("3/minute", "100/minute")

    async def run() -> list[str]:
        q = Quotas.from_uri(quota_uri)
        ps = only(policy_dir, "pay.yaml", policy(rule))
        out = [await pay(q, ps, 4000) for _ in range(3)]  # 8000 of 10000, then refused
        ps = only(policy_dir, "pay.yaml", policy(OTHER_RULE, rule))  # inserted above
        out.append(await pay(q, ps, 2500))
        ps = only(policy_dir, "renamed.yaml", policy(OTHER_RULE, rule))
        out.append(await pay(q, ps, 2500))
        ps = only(policy_dir, "renamed.yaml", policy(OTHER_RULE, rule, limit=11000))  # raised
        out += [await pay(q, ps, 2500), await pay(q, ps, 3000), await pay(q, ps, 501)]
        return out

    assert asyncio.run(run()) == [
        "ok", "ok", "budget_exceeded",  # 8000 spent
        "budget_exceeded", "budget_exceeded",  # the same 8000 after the insert and the rename
        "ok", "budget_exceeded", "budget_exceeded",  # 10500 of the raised 11000
    ]


def test_an_unnamed_rate_survives_the_same_edits(policy_dir: Path, quota_uri: str) -> None:
    async def run() -> list[str]:
        q = Quotas.from_uri(quota_uri)
        ps = only(policy_dir, "pay.yaml", policy(PAY_RULE))
        out = [await pay(q, ps, 0) for _ in range(3)]
        ps = only(policy_dir, "renamed.yaml", policy(OTHER_RULE, PAY_RULE.replace("3/minute", "4/minute")))
        out += [await pay(q, ps, 0), await pay(q, ps, 0)]
        return out

    assert asyncio.run(run()) == ["ok", "ok", "ok", "ok", "rate_limited"]


def test_what_a_rule_counts_names_its_counter(policy_dir: Path) -> None:
    """Another tenant, subject set, action set or budget field is another counter; a named rule's
    counters follow its name within its tenant and subjects whatever else changes."""
    base = only(policy_dir, "p.yaml", policy(PAY_RULE)).files[0].counters[0]
    variants = [
        policy(PAY_RULE, tenant="globex"),
        policy(PAY_RULE).replace("[finance]", "[finance, audit]"),
        policy(PAY_RULE.replace("[create, refund]", "[create]")),
        policy(PAY_RULE.replace("per: day", "per: hour").replace("3/minute", "3/hour")),
    ]
    for text in variants:
        other = only(policy_dir, "p.yaml", text).files[0].counters[0]
        assert other.budget != base.budget and other.rates != base.rates, text
    same = only(policy_dir, "q.yaml", policy(PAY_RULE.replace("[create, refund]", "[refund, create, create]")))
    assert same.files[0].counters[0] == base
    named = PAY_RULE.replace("  - connector: pay", "  - name: fin-pay\n    connector: pay")
    a = only(policy_dir, "p.yaml", policy(named)).files[0].counters[0]
    b = only(policy_dir, "p.yaml", policy(named.replace("[create, refund]", "[create]").replace("per: day", "per: hour"))).files[0]
    assert a == b.counters[0] and a.budget is not None and a.budget[0] == "name"
    for text in (policy(named, tenant="globex"), policy(named).replace("[finance]", "[finance, audit]")):
        assert only(policy_dir, "p.yaml", text).files[0].counters[0] != a, text


def test_two_rules_of_one_name_for_the_same_subjects_are_a_load_error_and_for_others_apart(policy_dir: Path) -> None:
    """A guardrail and a team file each naming a rule `daily-cap` (limits 10000 and 5000) covered
    one agent: sharing the name's counter, each payment was charged twice and the second of two
    2000 payments was refused. Files for other subjects keep their own counters; the same subjects
    twice is ambiguous."""
    named = PAY_RULE.replace("  - connector: pay", "  - name: daily-cap\n    connector: pay")
    write(policy_dir, "guard.yaml", policy(named))
    write(policy_dir, "team.yaml", policy(named, limit=500).replace("[finance]", "[finance, audit]"))
    ps = load_policy_set(policy_dir, lookup)
    assert ps.files[0].counters[0] != ps.files[1].counters[0]
    write(policy_dir, "team.yaml", policy(named, limit=500))
    with pytest.raises(PolicyLoadError) as e:
        load_policy_set(policy_dir, lookup)
    assert [str(p) for p in e.value.problems] == [
        f"team.yaml:5: this rule and the rule at guard.yaml:5 are both named 'daily-cap' for the same tenant and subjects, "
        f"so their {kind} would share one counter; give each its own `name:`"
        for kind in ("budget", "rate")
    ]


def test_two_unnamed_rules_counting_the_same_thing_are_a_load_error(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", policy(PAY_RULE))
    write(policy_dir, "b.yaml", policy(OTHER_RULE, PAY_RULE.replace("3/minute", "9/minute"), limit=500))
    with pytest.raises(PolicyLoadError) as e:
        load_policy_set(policy_dir, lookup)
    assert [str(p) for p in e.value.problems] == [
        f"b.yaml:8: this rule and the rule at a.yaml:5 count the same {kind} (same tenant, subjects, connector, "
        f"actions and {what}) and neither has a name, so they would share one counter; give each a `name:`"
        for kind, what in (("budget", "field and period"), ("rate", "window"))
    ]
    write(policy_dir, "b.yaml", policy(OTHER_RULE, PAY_RULE.replace("  - connector", "  - name: b\n    connector")))
    assert load_policy_set(policy_dir, lookup).rule_count == 3


def test_policy_check_warns_about_each_unnamed_rate_or_budget(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(policy_dir, "a.yaml", policy(PAY_RULE, OTHER_RULE, PAY_RULE.replace("  - connector: pay", "  - name: n\n    connector: pay")
                                       .replace("[create, refund]", "[refund]")))
    assert policy_check([policy_dir], lookup) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"{policy_dir / 'a.yaml'}:5: warning: this rule has a rate and a budget but no name; naming it (`name:`) "
        "keeps its counters across edits of its subjects, actions or fields"
    ]
    write(policy_dir, "b.yaml", policy(PAY_RULE))
    assert policy_check([policy_dir], lookup) == 1
    err = capsys.readouterr().err
    assert err.count("warning:") == 2 and err.count("give each a `name:`") == 2
