"""Parameter paths are whole field paths of the action's model: every real path of every built-in
action is accepted, and every misspelling of one is a `file:line: reason` at `policy check`."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from connectors import fieldpath
from connectors.builtin import openai, serpapi, stripe
from connectors.model import Action, Connector
from gateway.pipeline import steps
from gateway.policy.load import check_paths
from tests.policy.helpers import write

BUILTINS = {c.name: c for c in (stripe.CONNECTOR, openai.CONNECTOR, serpapi.CONNECTOR)}
ACTIONS = [(c, a) for c in BUILTINS.values() for a in c.actions]
FREE_KEY = "any_key_1"  # what an agent may put under a free-form mapping such as metadata


def _members(tp: Any) -> list[Any]:
    if get_origin(tp) is Annotated:
        return _members(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        return [m for a in get_args(tp) for m in _members(a)]
    return [] if tp in (None, type(None)) else [tp]


def real_paths(tp: Any, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """Every path into a model type, and whether its last key is a model field (so misspellable)."""
    for member in _members(tp):
        if isinstance(member, type) and issubclass(member, BaseModel):
            for name, f in member.model_fields.items():
                path = f"{prefix}.{name}" if prefix else name
                yield path, True
                yield from real_paths(f.annotation, path)
        elif get_origin(member) is list:
            yield from real_paths(get_args(member)[0], f"{prefix}[*]")
        elif get_origin(member) is dict:
            yield f"{prefix}.*", False
            yield f"{prefix}.{FREE_KEY}", False
            yield from real_paths(get_args(member)[1], f"{prefix}.{FREE_KEY}")


def typos(path: str) -> list[str]:
    """Misspellings of the last key: one letter dropped, one doubled, one appended."""
    head, _, last = path.rpartition(".")
    stem = f"{head}." if head else ""
    dropped = {stem + last[1:]} if len(last) > 2 else set()
    return sorted(dropped | {stem + last[0] + last, stem + last + "s"} - {path})


def policy(connector: Connector, action: Action, paths: list[str]) -> str:
    params = "".join(f'      "{p}": {{required: true}}\n' for p in paths)
    return (
        "version: 1\nsubjects: {roles: [r]}\nrules:\n"
        f"  - connector: {connector.name}\n    actions: [{action.name}]\n    params:\n{params}"
    )


FIRST_PARAM_LINE = 7


@pytest.mark.parametrize(("connector", "action"), ACTIONS, ids=[f"{c.name}.{a.name}" for c, a in ACTIONS])
def test_every_real_path_passes_and_every_typo_is_reported_on_its_line(tmp_path: Path, connector: Connector, action: Action) -> None:
    if action.request is None:
        found = check_paths([write(tmp_path, "p.yaml", policy(connector, action, ["amount"]))], BUILTINS.get)
        assert [str(p).split("p.yaml")[1] for p in found] == [f":{FIRST_PARAM_LINE}: parameter 'amount': {action.name} takes no parameters ({action.name})"]
        return
    real = sorted(set(real_paths(action.request)))
    assert real, action.name
    good = [p for p, _ in real] + [f"{fieldpath.PATH_PARAMS}.{n}" for n in action.pattern.groupindex]
    assert check_paths([write(tmp_path, "good.yaml", policy(connector, action, good))], BUILTINS.get) == []
    known = {p for p, _ in real}
    bad = sorted({t for p, misspellable in real if misspellable for t in typos(p)} - known)
    found = check_paths([write(tmp_path, "bad.yaml", policy(connector, action, bad))], BUILTINS.get)
    assert [p.line for p in found] == list(range(FIRST_PARAM_LINE, FIRST_PARAM_LINE + len(bad)))
    for problem, path in zip(found, bad):
        assert f"parameter {path!r}: " in problem.reason, problem


@pytest.mark.parametrize(
    ("connector", "action", "path", "reason"),
    [
        ("openai", "chat_completions", "messages.role", "messages is a list: use messages[*].role"),
        ("openai", "chat_completions", "messages[*].rol", "no field 'rol' in messages[*]"),
        ("openai", "chat_completions", "messages[0].content.text", "no field"),
        ("openai", "chat_completions", "max_tokens.value", "max_tokens is a number and has no fields below it"),
        ("stripe", "create_payment_intent", "metadata[0]", "metadata is a mapping"),
        ("stripe", "create_payment_intent", "amount[*]", "amount is a number"),
        ("stripe", "create_payment_intent", "_path.id", "takes one path parameter of /v1/payment_intents (none)"),
        ("stripe", "confirm_payment_intent", "_path.pi", "takes one path parameter of /v1/payment_intents/{id}/confirm (id)"),
        ("serpapi", "search", "query", "no field 'query'"),
    ],
)
def test_structural_mistakes_are_named(tmp_path: Path, connector: str, action: str, path: str, reason: str) -> None:
    c = BUILTINS[connector]
    a = c.action(action)
    assert a is not None
    (problem,) = check_paths([write(tmp_path, "p.yaml", policy(c, a, [path]))], BUILTINS.get)
    assert problem.line == FIRST_PARAM_LINE and reason in problem.reason, problem


def test_budget_fields_and_approval_names_are_checked_the_same_way(tmp_path: Path) -> None:
    text = (
        "version: 1\nsubjects: {roles: [r]}\nrules:\n  - connector: openai\n    actions: [chat_completions]\n"
        '    budget: {field: "messages[*].rol", limit: 10, per: day}\n'
        '    approval: "max_token > 10"\n'
    )
    found = [str(p) for p in check_paths([write(tmp_path, "p.yaml", text)], BUILTINS.get)]
    assert any("p.yaml:6: budget field 'messages[*].rol'" in p for p in found), found
    assert any("p.yaml:7: approval name 'max_token'" in p for p in found), found


def test_path_params_key_is_the_one_the_proxy_judges() -> None:
    assert steps.PATH_PARAMS == fieldpath.PATH_PARAMS
