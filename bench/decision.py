"""The decision path timed in-process, step by step, without mitmproxy or sockets.

`StripePayment` builds what `gateway.runtime.build` builds (registry, verifier with revocations,
resolver with an `upstreams:` route, breaker, secrets, a policy set of 50 rules, quotas, audit log)
and decides one Stripe create_payment_intent form call the way `Gateway._identify` and
`Gateway._decide` do, one named step at a time. Two sums are reported: the proxy core's steps 1-4
(identify, route, egress, validate; issue 2's target) and steps 1-6 with the policy's authorize
and quota (issue 3's). The audit write is timed too but kept out of the sums: it is bookkeeping
after the decision.

In-process figures are lower bounds: inside the running gateway the same calls measure 2-3x
slower (caches shared with mitmproxy's work, its larger heap for the GC), and headers here are a
dict, not mitmproxy's `Headers`, whose pops make `inject_credentials` ~30 µs there.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from connectors import registry as connector_registry
from connectors.registry import Route
from gateway.identity import tokens as identity
from gateway.pipeline import steps as pipeline
from gateway.audit.log import AuditLog
from gateway.pipeline.breaker import Breaker
from gateway.config import Config
from gateway.pipeline.egress import Resolver
from gateway.pipeline.steps import Call
from gateway.policy.engine import Decision
from gateway.policy.store import PolicyStore
from gateway.pipeline.quota import Quotas
from gateway.identity.revocation import Revocations
from gateway.secrets import Secrets
from tests.fakes import VENDOR_ENV

HOST, METHOD, PATH = "api.stripe.com", "POST", "/v1/payment_intents"
PAYMENT_FORM = urlencode(
    [
        ("amount", "2000"),
        ("currency", "usd"),
        ("customer", "cus_Q1w2E3r4T5y6U7"),
        ("description", "Order 4711: 3 seats, annual plan"),
        ("metadata[account]", "1234567890"),
        ("metadata[order_id]", "4711"),
        ("payment_method_types[]", "card"),
    ]
).encode()
_AGENT_HEADERS = {
    "host": HOST,
    "content-type": "application/x-www-form-urlencoded",
    "authorization": "Bearer agent-has-no-vendor-key",
    "proxy-authorization": "Basic not-checked-here",
}

Step = tuple[str, Callable[[], Awaitable[None]]]
CORE_STEPS = 4  # identify, route, egress, validate: the proxy core's decision (issue 2)
POLICY_STEPS = 6  # ... then authorize and quota (issue 3)

# The bench agents' own rules first; the other 48 cover other roles and actions, so every
# decision looks through a realistically full policy set.
_OWN_RULES = """version: 1
subjects: {roles: [finance]}
rules:
  - name: payments
    connector: stripe
    actions: [create_payment_intent]
    params:
      amount: {max: 500000}
      currency: {one_of: [usd, eur]}
      metadata.account: {required: true, regex: "^[0-9]{10,12}$"}
      receipt_email: {forbidden: true}
    approval: "amount > 100000"
    rate: 1000000/minute
    budget: {field: amount, limit: 100000000000, per: day}
---
version: 1
subjects: {roles: [research]}
rules:
  - name: embeddings
    connector: openai
    actions: [embeddings]
    params:
      model: {one_of: [text-embedding-3-small]}
    rate: 1000000/minute
"""


def write_policies(directory: Path, rules: int = 50) -> Path:
    """A policy directory of `rules` rules in which the bench's two agents are each covered once."""
    directory.mkdir(parents=True, exist_ok=True)
    own, research = _OWN_RULES.split("---\n")
    (directory / "bench-finance.yaml").write_text(own)
    (directory / "bench-research.yaml").write_text(research)
    filler = "\n".join(
        f"  - {{name: other-{i}, connector: stripe, actions: [{'create_refund' if i % 2 else 'create_customer'}], "
        f"params: {{amount: {{max: {1000 + i}}}}}, rate: {10 + i}/minute}}" if i % 2 else
        f"  - {{name: other-{i}, connector: stripe, actions: [create_customer], "
        f"params: {{description: {{max_length: {100 + i}}}}}, rate: {10 + i}/minute}}"
        for i in range(rules - 2)
    )
    (directory / "bench-others.yaml").write_text(f"version: 1\nsubjects: {{roles: [support]}}\nrules:\n{filler}\n")
    return directory


class StripePayment:
    """Runtime-equivalent objects in `root`, and the per-request steps of one Stripe payment call."""

    def __init__(self, root: Path):
        config = Config()
        key = identity.load_or_create_key(root / "signing-key.pem")
        self.registry = connector_registry.load()
        revocations = Revocations(root / "revocations.db")
        self.verifier = identity.Verifier(key, revocations, config.max_token_ttl, config.token_leeway)
        self.resolver = Resolver({HOST: ("127.0.0.1", 9443)})
        self.breaker = Breaker(config.breaker.failures, config.breaker.reset)
        os.environ.update(VENDOR_ENV)
        self.secrets = Secrets({"stripe": "env:TEST_STRIPE_KEY"})
        self.audit = AuditLog(root / "audit.jsonl", key.private)
        self.policies = PolicyStore(write_policies(root / "policies"), self.registry.get)
        self.quotas = Quotas.from_uri("memory://")
        self.params: dict[str, object] = {}
        self.decision: Decision | None = None
        self.token = identity.issue(
            key, sub="bench-agent", role="finance", scopes=("stripe:*",), ttl=600, max_ttl=config.max_token_ttl
        )
        self.verifier.verify(self.token)  # the full verify happened at CONNECT; requests hit the cache
        self.call = Call()
        self.found: Route | None = None

    def steps(self) -> list[Step]:
        return [
            ("identify (cached verify)", self.identify),
            ("route + token scopes", self.route),
            ("egress (target, resolve)", self.egress),
            ("validate (form -> pydantic)", self.validate),
            (f"authorize (policy, {self.policies.current.rule_count} rules)", self.authorize),
            ("quota (rate + budget, memory://)", self.quota),
            ("breaker + credentials", self.credentials),
        ]

    async def identify(self) -> None:
        self.call = Call(host=HOST, method=METHOD, path=PATH)
        self.call.identity = self.verifier.verify(self.token)

    async def route(self) -> None:
        self.found = pipeline.route(self.registry, frozenset(), HOST, METHOD, PATH)
        assert self.found is not None and self.call.identity is not None
        pipeline.authorize_scopes(self.call.identity, self.found.connector.name, self.found.action.name)

    async def egress(self) -> None:
        pipeline.check_target(
            connect=(HOST, 443), scheme="https", target=(HOST, 443), authority=None, host_header=(HOST, None), sni=HOST
        )
        await self.resolver.resolve(HOST, 443)

    async def validate(self) -> None:
        assert self.found is not None
        self.params = pipeline.validate(self.found.action, PAYMENT_FORM, "")

    async def authorize(self) -> None:
        assert self.found is not None and self.call.identity is not None
        self.decision = pipeline.authorize(
            self.policies.current, self.call.identity, self.found.connector.name, self.found.action.name,
            self.params, None,
        )
        assert self.decision is not None and self.decision.outcome == "allow", self.decision

    async def quota(self) -> None:
        assert self.decision is not None
        await self.quotas.charge(self.decision, self.params)

    async def credentials(self) -> None:
        assert self.found is not None
        self.breaker.check(HOST)
        pipeline.inject_credentials(self.found.connector, self.secrets, dict(_AGENT_HEADERS), {})

    async def audit_write(self) -> None:
        self.audit.write(self.call.record("allow", phase="decision"))

    def close(self) -> None:
        self.audit.close()


@dataclass(frozen=True)
class Timing:
    name: str
    p50_us: float
    p99_us: float

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "p50_us": round(self.p50_us, 2), "p99_us": round(self.p99_us, 2)}


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) of `samples`."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


async def _measure(steps: list[Step], iterations: int) -> list[list[float]]:
    """ns per step per iteration; the first tenth of the iterations (at least 100) only warm up."""
    warmup = max(100, iterations // 10)
    out: list[list[float]] = [[] for _ in steps]
    clock = time.perf_counter_ns
    for i in range(warmup + iterations):
        for j, (_, step) in enumerate(steps):
            t = clock()
            await step()
            if i >= warmup:
                out[j].append(float(clock() - t))
    return out


def measure(root: Path, iterations: int) -> tuple[list[Timing], list[Timing], Timing]:
    """(per step, sums of the first 4 and 6 steps, audit write) for `iterations` decisions."""
    path = StripePayment(root)
    try:
        steps = path.steps()
        samples = asyncio.run(_measure([*steps, ("audit write", path.audit_write)], iterations))
    finally:
        path.close()
    per_step, audit = samples[: len(steps)], samples[-1]

    def timing(name: str, ns: list[float]) -> Timing:
        p50, p99 = percentiles(ns)
        return Timing(name, p50 / 1000, p99 / 1000)

    def total(name: str, first: int) -> Timing:
        return timing(name, [sum(column) for column in zip(*per_step[:first])])

    return (
        [timing(name, ns) for (name, _), ns in zip(steps, per_step)],
        [total("steps 1-4: identify .. validate", CORE_STEPS), total("steps 1-6: .. authorize, quota", POLICY_STEPS)],
        timing("audit write, one of two a request (not in sums)", audit),
    )
