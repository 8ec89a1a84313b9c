"""The decision pipeline timed in-process, step by step, without mitmproxy or sockets.

`StripePayment` builds the runtime exactly as `egress-gateway run` builds it (`gateway.runtime.build`
from a config: registry, verifier with revocations, resolver with an `upstreams:` route, breaker,
secrets, a policy set of 50 rules, quotas, DLP, audit log) and times the very steps the proxy runs,
`gateway.pipeline.REQUEST_STEPS`, over one Stripe create_payment_intent form call. Two sums are
reported: the proxy core's steps up to `validate` (issue 2's target) and up to `quota` (issue 3's).
The `audit` step is timed too but kept out of the sums: it is bookkeeping after the decision.

In-process figures are lower bounds: inside the running gateway the same calls measure 2-3x
slower (caches shared with mitmproxy's work, its larger heap for the GC).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from gateway import runtime
from gateway.config import Config
from gateway.identity import tokens as identity
from gateway.pipeline import REQUEST_STEPS, Ctx, RequestView, Step, Tunnel, new_ctx, request_call
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
_AGENT_HEADERS = (
    (b"host", HOST.encode()),
    (b"content-type", b"application/x-www-form-urlencoded"),
    (b"authorization", b"Bearer agent-has-no-vendor-key"),
)
CORE_UNTIL = "validate"  # identify .. validate: the proxy core's decision (issue 2)
POLICY_UNTIL = "quota"  # ... then authorize and quota (issue 3)
NOT_SUMMED = "audit"  # bookkeeping after the decision

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
    """The runtime `run` builds, in `root`, and the request view of one Stripe payment call."""

    def __init__(self, root: Path):
        os.environ.update(VENDOR_ENV)
        config = Config.model_validate({
            "state_dir": str(root / "state"),
            "policies": str(write_policies(root / "policies")),
            "upstreams": {HOST: "https://127.0.0.1:9443"},
            "secrets": {"stripe": "env:TEST_STRIPE_KEY"},
            "stores": {"rate_limits": "memory://"},
        })
        self.rt = runtime.build(config)
        token = identity.issue(
            self.rt.key, sub="bench-agent", role="finance", scopes=("stripe:*",), ttl=600, max_ttl=config.max_token_ttl
        )
        agent = self.rt.verifier.verify(token)  # the full verify happened at CONNECT; requests hit the cache
        tunnel = Tunnel(agent, HOST, 443, ("127.0.0.1", 9443))
        self.view = RequestView(
            tunnel=tunnel, method=METHOD, raw_method=METHOD.encode(), scheme="https", host=HOST, port=443,
            authority=None, host_header=(HOST, None), sni=HOST, path=PATH, query="", headers=_AGENT_HEADERS,
            body=PAYMENT_FORM,
        )
        self.rules = self.rt.policies.current.rule_count if self.rt.policies else 0

    def context(self) -> Ctx:
        return new_ctx(self.rt, self.view, request_call(self.rt, self.view))

    def close(self) -> None:
        self.rt.close()


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


async def _measure(path: StripePayment, steps: tuple[Step, ...], iterations: int) -> list[list[float]]:
    """ns per step per decision; the first tenth of the decisions (at least 100) only warm up."""
    warmup = max(100, iterations // 10)
    out: list[list[float]] = [[] for _ in steps]
    clock = time.perf_counter_ns
    for i in range(warmup + iterations):
        ctx = path.context()
        for j, step in enumerate(steps):
            t = clock()
            await step.run(ctx)
            if i >= warmup:
                out[j].append(float(clock() - t))
        assert ctx.decision is not None and ctx.decision.outcome == "allow", ctx.decision
    return out


def measure(root: Path, iterations: int) -> tuple[list[Timing], list[Timing], Timing]:
    """(per step, sums up to `validate` and up to `quota`, the audit step) for `iterations` decisions."""
    path = StripePayment(root)
    try:
        samples = asyncio.run(_measure(path, REQUEST_STEPS, iterations))
    finally:
        path.close()
    names = [step.name for step in REQUEST_STEPS]

    def timing(name: str, ns: list[float]) -> Timing:
        p50, p99 = percentiles(ns)
        return Timing(name, p50 / 1000, p99 / 1000)

    def total(until: str) -> Timing:
        first = names.index(until) + 1
        title = f"{names[0]} .. {until}" + (f" ({path.rules} rules)" if until == POLICY_UNTIL else "")
        return timing(title, [sum(column) for column in zip(*samples[:first])])

    audit = names.index(NOT_SUMMED)
    return (
        [timing(name, ns) for name, ns in zip(names, samples) if name != NOT_SUMMED],
        [total(CORE_UNTIL), total(POLICY_UNTIL)],
        timing("audit (record written before forwarding; not in sums)", samples[audit]),
    )
