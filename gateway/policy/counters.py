"""Which counters a rule's rates and budget are kept under: what the rule counts, not where it sits.

Counters keyed by file name and position (`finance.yaml#0`) were lost whenever a rule was inserted
above the rule or its file renamed, and counters keyed with the limit (as `limits` keys them) were
lost whenever the limit was raised: each such edit gave every agent a fresh budget (20000 spent
against a 10000/day budget). So a counter is named by:

- the rule's `name:`, for a named rule, within its file's tenant and subjects: the name is the
  author's word that it is the same rule whatever else changes; the tenant and subjects keep two
  files' rules of one name apart (a per-tenant file made from one template, or a team file beside a
  guardrail covering the same agent, each with its own limit): sharing one counter, a call both
  rules cover would be charged twice;
- a digest of what the rule counts, for an unnamed one: the file's tenant and subjects, the
  connector, the actions (sorted), and for a budget its field and period, for a rate its window.
  Moving the rule, renaming its file, or changing its limit, params, approval or mode keeps the
  counters; changing what it counts starts new ones, which is what such a change means.

The limit is never part of a key (`gateway.pipeline.quota` builds the keys). Two rules that would
share a counter (unnamed and counting the same thing, or of one name for one tenant and subjects)
are refused by the loader (`gateway.policy.load`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from limits import RateLimitItem

from gateway.policy.model import PolicyFile, Rule

# A counter's name as key parts: ("name", the rule's name) or ("what", a digest). The first part
# keeps a name that happens to look like a digest from meeting an unnamed rule's counter.
CounterId = tuple[str, str]


@dataclass(frozen=True)
class RuleCounters:
    """The counters of one rule: one per rate item (in `Rule.rate_items` order), and its budget's."""

    rates: tuple[CounterId, ...]
    budget: CounterId | None


def window(item: RateLimitItem) -> str:
    """A rate item's window, without its count: `1 minute`, `10 second`."""
    return f"{item.multiples} {item.GRANULARITY.name}"


def counters_of(policy: PolicyFile, rule: Rule) -> RuleCounters:
    """The counters `rule` of `policy` charges."""
    budget = rule.budget
    if rule.name is not None:
        named: CounterId = ("name", _hash({**_whose(policy), "name": rule.name}))
        return RuleCounters(tuple(named for _ in rule.rate_items), named if budget else None)
    return RuleCounters(
        tuple(_digest(policy, rule, ["rate", window(item)]) for item in rule.rate_items),
        _digest(policy, rule, ["budget", budget.field, budget.per]) if budget else None,
    )


def _digest(policy: PolicyFile, rule: Rule, counts: list[str]) -> CounterId:
    return ("what", _hash({**_whose(policy), "connector": rule.connector, "actions": sorted(set(rule.actions)), "counts": counts}))


def _whose(policy: PolicyFile) -> dict[str, object]:
    """Whose calls a file's rules count: its tenant and subjects."""
    return {"tenant": policy.tenant, "roles": sorted(set(policy.subjects.roles)), "sub": sorted(set(policy.subjects.sub))}


def _hash(what: dict[str, object]) -> str:
    canonical = json.dumps(what, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
