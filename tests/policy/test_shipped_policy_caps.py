"""Every shipped policy caps every cost- or amount-bearing field of every action it allows, and
requires the fields whose absence means "no bound" (research.yaml once capped `max_tokens` but not
`max_completion_tokens`, and a call with neither went out uncapped).

Every numeric field of an allowed action must be classified below, as cost-bearing or not: a field
a connector gains later fails this test until someone decides which it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from connectors.builtin import openai, serpapi, stripe
from connectors.model import Action
from gateway.policy.engine import LoadedFile
from gateway.policy.load import load_policy_set
from gateway.policy.model import Rule

BUILTINS = {c.name: c for c in (stripe.CONNECTOR, openai.CONNECTOR, serpapi.CONNECTOR)}
SHIPPED = Path(__file__).parents[2] / "policies"

# (connector, action) -> field -> the constraint that bounds it
COST: dict[tuple[str, str], dict[str, str]] = {
    ("openai", "chat_completions"): {"model": "one_of", "max_completion_tokens": "max", "max_tokens": "max", "n": "max"},
    ("openai", "responses"): {"model": "one_of", "max_output_tokens": "max"},
    ("openai", "embeddings"): {"model": "one_of"},
    ("serpapi", "search"): {"num": "max"},
    ("stripe", "create_payment_intent"): {"amount": "max"},
    ("stripe", "create_refund"): {"amount": "max"},
}
# Absent means unbounded: the model's whole context for output, a full refund for a refund.
REQUIRED: dict[tuple[str, str], str] = {
    ("openai", "chat_completions"): "max_completion_tokens",
    ("openai", "responses"): "max_output_tokens",
    ("stripe", "create_refund"): "amount",
}
# Numeric fields that change how, not how much, a vendor works (input size is bounded by max_body).
NOT_COST = {"temperature", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs", "seed", "dimensions", "start"}


def _numeric(action: Action) -> set[str]:
    if action.request is None:
        return set()
    return {
        name for name, f in action.request.model_fields.items()
        if any(t in (int, float) for t in (f.annotation, *get_args(f.annotation)))
    }


def _allowed() -> list[tuple[LoadedFile, Rule, str]]:
    policies = load_policy_set(SHIPPED, BUILTINS.get)
    return [(f, rule, a) for f in policies.files for rule in f.policy.rules for a in rule.actions]


ALLOWED = _allowed()


def _bounded(rule: Rule, name: str, how: str) -> bool:
    pr = rule.params.get(name)
    return pr is not None and (pr.forbidden or getattr(pr, how) is not None)


@pytest.mark.parametrize(("file", "rule", "action"), ALLOWED, ids=[f"{f.name}:{r.name}:{a}" for f, r, a in ALLOWED])
def test_every_cost_field_is_capped_and_the_unbounding_ones_required(file: LoadedFile, rule: Rule, action: str) -> None:
    key = (rule.connector, action)
    act = BUILTINS[rule.connector].action(action)
    assert act is not None
    unclassified = _numeric(act) - set(COST.get(key, {})) - NOT_COST
    assert not unclassified, f"classify {sorted(unclassified)} of {key} as cost-bearing or not"
    for name, how in COST.get(key, {}).items():
        assert _bounded(rule, name, how), f"{file.name} rule {rule.name}: {name} has no {how}"
    required = REQUIRED.get(key)
    if required is not None:
        pr = rule.params[required]
        assert pr.required or pr.forbidden, f"{file.name} rule {rule.name}: {required} is not required"


def test_every_shipped_file_allows_something_this_test_judges() -> None:
    assert {f.name for f, _, _ in ALLOWED} == {p.name for p in SHIPPED.glob("*.yaml")}
    assert {(r.connector, a) for _, r, a in ALLOWED} >= set(COST)


def test_classified_fields_exist() -> None:
    """A classification naming no field (a rename in a connector) would make the cap check vacuous."""
    for (connector, action), fields in COST.items():
        act = BUILTINS[connector].action(action)
        assert act is not None and act.request is not None, (connector, action)
        assert set(fields) <= set(act.request.model_fields), (connector, action)
