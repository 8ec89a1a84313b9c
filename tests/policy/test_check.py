"""`policy check`: every kind of broken file is reported as file:line: reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.builtin import openai, serpapi, stripe
from gateway.policy.load import PolicyLoadError, check_paths, load_policy_set
from tests.policy.helpers import lookup, write

GOOD = """
version: 1
subjects: {roles: [finance]}
rules:
  - connector: pay
    actions: [create]
    params:
      amount: {max: 500}
"""


def problems(directory: Path, text: str) -> list[str]:
    write(directory, "p.yaml", text)
    return [str(p) for p in check_paths([directory / "p.yaml"], lookup)]


def test_good_file_has_no_problems(policy_dir: Path) -> None:
    assert problems(policy_dir, GOOD) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nsubjects: {roles: [a]\n", ":3: bad YAML"),
        ("version: 1\nsubjects: {roles: [a]}\nsubjects: {roles: [b]}\n", ":3: bad YAML: duplicate key 'subjects'"),
        (GOOD.replace("connector: pay", "connector: nope"), ":4: unknown connector 'nope'"),
        (GOOD.replace("[create]", "[create, fly]"), ":5: unknown action 'fly' of connector 'pay'"),
        (GOOD.replace("{max: 500}", '{regex: "[a-"}'), ":7: rules.0.params.amount.regex: bad regex"),
        (GOOD.replace("{max: 500}", "{maximum: 500}"), ":7: rules.0.params.amount.maximum: unknown field 'maximum'"),
        (GOOD.replace("    params:", "    parms:"), ":6: rules.0.parms: unknown field 'parms'"),
        (GOOD.replace("amount:", "amont:"), ":7: parameter 'amont': no field 'amont' (create)"),
        (GOOD + "    approval: \"amount > __import__('os')\"\n", ":8: rules.0.approval: bad approval expression"),
        (GOOD + '    approval: "amonut > 5"\n', ":8: approval name 'amonut'"),
        (GOOD + "    rate: 20/fortnight\n", ":8: rules.0.rate: bad rate '20/fortnight'"),
        (GOOD + "    budget: {field: amount, limit: 10, per: week}\n", ":8: rules.0.budget.per: Input should be"),
        (GOOD + "    fail_open: true\n", ":8: fail_open is only allowed when every action is a read"),
        (GOOD.replace("{max: 500}", "{}"), ":7: rules.0.params.amount: no constraint given"),
        (GOOD.replace("{max: 500}", "{forbidden: true, max: 3}"), ":7: rules.0.params.amount: forbidden cannot be"),
        (GOOD.replace("{roles: [finance]}", "{}"), ":2: subjects: subjects needs roles and/or sub"),
        (GOOD.replace("version: 1", "version: 2"), ":1: version: Input should be 1"),
        (GOOD + "timezone: Mars/Olympus\n", ":8: timezone: unknown timezone"),
        ("- just a list\n", ":1: a policy file must be a mapping"),
        # NaN compares false with everything: `max: .nan` would let any amount through
        (GOOD.replace("{max: 500}", "{max: .nan}"), ":7: rules.0.params.amount.max: Input should be a finite number"),
        (GOOD.replace("{max: 500}", "{min: -.inf}"), ":7: rules.0.params.amount.min: Input should be a finite number"),
        (GOOD.replace("{max: 500}", "{one_of: [.nan]}"), ":7: rules.0.params.amount.one_of.0: Input should be a finite"),
        # rules that would refuse every call are load errors, not deny rules in disguise
        (GOOD + "    rate: 0/minute\n", ":8: rules.0.rate: rate '0/minute' allows no call at all"),
        (GOOD + "    rate: 5/minute;0/hour\n", ":8: rules.0.rate: rate '5/minute;0/hour' allows no call at all"),
        (GOOD + "    rate: 5/minute;10/minute\n", ":8: rules.0.rate: rate '5/minute;10/minute' limits one window twice"),
        (GOOD + "    budget: {field: amount, limit: 0, per: day}\n", ":8: rules.0.budget.limit: Input should be greater than 0"),
        (GOOD + "    budget: {field: amount, limit: -5, per: day}\n", ":8: rules.0.budget.limit: Input should be greater than 0"),
        (GOOD + "    budget: {field: amount, limit: yes, per: day}\n", ":8: rules.0.budget.limit: limit must be a number, not a"),
        (GOOD + "    budget: {field: description, limit: 10, per: day}\n",
         ":8: budget field 'description' is a string in create, never a number"),
        (GOOD + "    budget: {field: confirm, limit: 10, per: day}\n", ":8: budget field 'confirm' is a boolean in create"),
        (GOOD + "    budget: {field: metadata.x, limit: 10, per: day}\n", ":8: budget field 'metadata.x' is a string in create"),
        (GOOD + "    budget: {field: 'items[*].sku', limit: 10, per: day}\n", ":8: budget field 'items[*].sku' is a string"),
        (GOOD.replace("[create]", "[create, get]").replace("amount: {max: 500}", "q: {max_length: 5}")
         + "    budget: {field: q, limit: 10, per: day}\n", ":8: budget field 'q' is a string in get, never a number"),
    ],
)
def test_reports_file_line_and_reason(policy_dir: Path, text: str, expected: str) -> None:
    found = problems(policy_dir, text)
    assert found, text
    assert any(f"p.yaml{expected}" in p for p in found), found


LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # ten lines of nested aliases are 10^9 nodes once expanded: a load error, not a hang
        ("version: 1\nl0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + LAUGHS, ":7: bad YAML: the document expands to more"),
        (GOOD + "    params: &p {amount: *p}\n", ":8: bad YAML: an alias refers to itself"),
        ("version: 1\nrules: " + "[" * 5000 + "]" * 5000 + "\n", ":1: bad YAML: the document nests too deeply"),
        ("version: 1\nrules: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", ":1: bad YAML: the document nests too deeply"),
    ],
    ids=["billion-laughs", "self-alias", "deep-list", "deep-map"],
)
def test_hostile_yaml_is_a_problem_not_a_hang_or_a_crash(policy_dir: Path, text: str, expected: str) -> None:
    found = problems(policy_dir, text)
    assert len(found) == 1 and f"p.yaml{expected}" in found[0], found


def test_fail_open_allowed_on_read_actions(policy_dir: Path) -> None:
    text = "version: 1\nsubjects: {sub: [s]}\nrules:\n  - {connector: pay, actions: [get], fail_open: true}\n"
    assert problems(policy_dir, text) == []


def test_load_error_lists_every_problem_and_directory_sorted(policy_dir: Path) -> None:
    write(policy_dir, "b.yaml", GOOD.replace("pay", "nope"))
    write(policy_dir, "a.yaml", GOOD.replace("[create]", "[fly]"))
    with pytest.raises(PolicyLoadError) as e:
        load_policy_set(policy_dir, lookup)
    assert [p.file for p in e.value.problems] == ["a.yaml", "b.yaml"]


def test_missing_path_is_a_problem(tmp_path: Path) -> None:
    assert "no such file" in str(check_paths([tmp_path / "nope.yaml"], lookup)[0])


def test_version_is_a_content_hash(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", GOOD)
    v1 = load_policy_set(policy_dir, lookup).version
    assert load_policy_set(policy_dir, lookup).version == v1
    write(policy_dir, "a.yaml", GOOD.replace("500", "501"))
    assert load_policy_set(policy_dir, lookup).version != v1


def test_shipped_policies_check_against_builtin_connectors() -> None:
    builtins = {c.name: c for c in (stripe.CONNECTOR, openai.CONNECTOR, serpapi.CONNECTOR)}
    shipped = Path(__file__).parents[2] / "policies"
    assert check_paths([shipped], builtins.get) == []
    assert load_policy_set(shipped, builtins.get).rule_count >= 8
