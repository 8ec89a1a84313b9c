"""Deciding a call against the loaded policies: allow, deny or approval_required.

How files and rules combine (deny-overrides, order-independent):
- A file *applies* to an agent when its `tenant` is unset or equals the agent's tenant, and the
  agent's role is in `subjects.roles` or its sub is in `subjects.sub`.
- A rule *covers* a call when its file applies and it names the call's connector and action.
- No covering rule: default deny, `policy_denied`, naming the nearest rule (same connector for this
  agent, else a rule that allows the action to someone else).
- Otherwise *every* covering rule must pass: each rule's parameter constraints are checked, then
  its approval condition. Any violated rule denies (`param_violation`, the first in file-name and
  rule order is reported); else any rule whose approval condition holds asks for approval; else
  the call is allowed, and the quota step charges the rate and budget of every covering rule.
  So adding a file can only add restrictions to calls other files already allow (a tenant-wide
  guardrail file composes with per-role files), and file names never change an outcome.
- Shadow mode (`mode: shadow` on the file, or on a rule, which wins): a shadow rule's violation or
  approval becomes a `would_deny` finding and does not stop the call. Default deny is shadowed
  only when every file applying to the agent is in shadow mode. Enforced findings always win.

Approval conditions that cannot be evaluated (a missing field, a missing `X-Agent-Confidence`)
count as true: the call needs approval (fail closed; see `gateway.policy.expr`).

Messages name the rule, the field and the constraint; numbers (amounts) are shown, string values
never are, since they may be PII.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from connectors import fieldpath
from gateway.errors import Refusal
from gateway.policy.counters import RuleCounters, counters_of
from gateway.policy.expr import Env, Unknown, same_value
from gateway.policy.model import Mode, ParamRule, PolicyFile, Rule

Outcome = Literal["allow", "deny", "approval_required"]
# How a sandbox run is named where a connector and action would be: in scopes (`sandbox:python`),
# decisions and audit records.
SANDBOX, PYTHON_SNIPPETS = "sandbox", "python"


@dataclass(frozen=True)
class Subject:
    """The calling agent, from its verified token."""

    sub: str
    role: str
    tenant: str | None = None

    def describe(self) -> str:
        tenant = f", tenant {self.tenant!r}" if self.tenant else ""
        return f"agent {self.sub!r} (role {self.role!r}{tenant})"


@dataclass(frozen=True)
class RequestContext:
    """Per-request facts approval conditions may use besides the parameters."""

    now: datetime | None = None  # default: the time of the decision
    confidence: float | None = None  # X-Agent-Confidence, if the agent sent a valid number


@dataclass(frozen=True)
class LoadedFile:
    """A validated policy file and where its rules start (for messages)."""

    name: str
    policy: PolicyFile
    rule_lines: tuple[int, ...]
    counters: tuple[RuleCounters, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Once per load, not per call: the counters each rule charges (gateway.policy.counters).
        object.__setattr__(self, "counters", tuple(counters_of(self.policy, r) for r in self.policy.rules))

    def applies_to(self, subject: Subject) -> bool:
        return self.in_tenant(subject) and self.names(subject)

    def in_tenant(self, subject: Subject) -> bool:
        return self.policy.tenant is None or self.policy.tenant == subject.tenant

    def names(self, subject: Subject) -> bool:
        """The file's subjects name this agent (by role or sub), whatever its tenant."""
        return subject.role in self.policy.subjects.roles or subject.sub in self.policy.subjects.sub


@dataclass(frozen=True)
class RuleRef:
    """Which rule: file, index in `rules`, line, and the id used in messages and audit records
    (quota counters are keyed by what the rule counts instead: `counters`)."""

    file: str
    index: int
    line: int
    name: str | None = None

    @property
    def id(self) -> str:
        return self.name or f"{self.file}#{self.index}"


@dataclass(frozen=True)
class MatchedRule:
    """A rule covering the call, with its effective mode (rule mode, else the file's)."""

    ref: RuleRef
    rule: Rule
    mode: Mode
    zone_file: LoadedFile = field(repr=False)

    @property
    def shadow(self) -> bool:
        return self.mode == "shadow"

    @property
    def counters(self) -> RuleCounters:
        return self.zone_file.counters[self.ref.index]


@dataclass(frozen=True)
class Finding:
    """Why a rule refuses (or, in shadow mode, would refuse) the call."""

    code: str
    message: str
    rule: str | None
    shadow: bool
    fail_open: bool = False  # a store failure that a `fail_open` rule let through

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "rule": self.rule}


@dataclass(frozen=True)
class DlpPolicy:
    """What DLP does for one agent: per entity type one outbound action (a type in none of the
    three sets leaves as is), and the types it may see restored."""

    tokenize: frozenset[str]
    reveal: frozenset[str]
    block: frozenset[str] = frozenset()
    mask: frozenset[str] = frozenset()

    @property
    def scanned(self) -> frozenset[str]:
        """Every type the engine must look for."""
        return self.tokenize | self.block | self.mask


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one call.

    `rules` are all covering rules (the quota step charges each); `refusal` is set for deny and
    approval_required (the approval step adds the approval id); `would_deny` lists shadow findings
    of a call that goes out anyway; `approval_summary` is the approver's view of the parameters
    (numbers and values a `one_of` constraint accepted, never free text).
    """

    outcome: Outcome
    subject: Subject
    connector: str
    action: str
    policy_version: str
    rules: tuple[MatchedRule, ...] = ()
    refusal: Refusal | None = None
    would_deny: tuple[Finding, ...] = ()
    approval_summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicySet:
    """Every loaded policy file, immutable; swapped whole on reload. `digest` is the bundle's
    sha256 over names and bytes (gateway.policy.load.content_digest), `version` its short form."""

    files: tuple[LoadedFile, ...]
    digest: str
    _index: dict[tuple[str, str], list[tuple[LoadedFile, int]]] = field(
        init=False, repr=False, compare=False
    )

    @property
    def version(self) -> str:
        return self.digest[:16]

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], list[tuple[LoadedFile, int]]] = {}
        for f in self.files:
            for i, rule in enumerate(f.policy.rules):
                for action in rule.actions:
                    index.setdefault((rule.connector, action), []).append((f, i))
        object.__setattr__(self, "_index", index)

    @property
    def rule_count(self) -> int:
        return sum(len(f.policy.rules) for f in self.files)

    @property
    def connectors(self) -> frozenset[str]:
        """Every connector some rule names: those whose credentials must be readable."""
        return frozenset(connector for connector, _ in self._index)

    def decide(
        self,
        subject: Subject,
        connector: str,
        action: str,
        params: Any,
        context: RequestContext | None = None,
    ) -> Decision:
        """Allow, deny or ask for approval; pure (no I/O), so cheap and safe to call anywhere.

        `params` must be the decoded and model-validated request (numbers as numbers, not the
        strings of a form body), with fields the agent did not send left out.
        """
        ctx = context or RequestContext()
        applicable = [f for f in self.files if f.applies_to(subject)]
        matched = tuple(
            _matched(f, i)
            for f, i in self._index.get((connector, action), [])
            if f.applies_to(subject)
        )

        def make(outcome: Outcome, **kw: Any) -> Decision:
            return Decision(outcome, subject, connector, action, self.version, **kw)

        if not matched:
            message = (
                f"no policy rule allows {connector}.{action} for {subject.describe()}"
                f"{self._nearest(subject, connector, action, applicable)}"
            )
            if applicable and all(f.policy.mode == "shadow" for f in applicable):
                return make("allow", would_deny=(Finding("policy_denied", message, None, True),))
            refusal = Refusal("policy_denied", message, connector=connector, action=action)
            return make("deny", refusal=refusal)

        findings: list[Finding] = []
        envs: dict[str, Env] = {}
        for m in matched:
            violation = _check_params(m, params)
            if violation is not None:
                findings.append(Finding("param_violation", violation, m.ref.id, m.shadow))
                continue
            expr = m.rule.approval_expr
            if expr is None:
                continue
            env = envs.get(m.zone_file.name)
            if env is None:
                env = envs[m.zone_file.name] = _env(m.zone_file, subject, connector, action, params, ctx)
            try:
                needed, why = expr.evaluate(env), ""
            except Unknown as e:
                needed, why = True, f"; treated as true: {e}"
            if needed:
                message = f"{connector}.{action} needs approval: {expr.source} (rule {m.ref.id}{why})"
                findings.append(Finding("approval_required", message, m.ref.id, m.shadow))

        enforced = [f for f in findings if not f.shadow]
        would = tuple(f for f in findings if f.shadow)
        deny = next((f for f in enforced if f.code == "param_violation"), None)
        first = deny or (enforced[0] if enforced else None)
        if first is None:
            return make("allow", rules=matched, would_deny=would)
        refusal = Refusal(first.code, first.message, connector=connector, action=action)
        if deny:
            return make("deny", rules=matched, refusal=refusal, would_deny=would)
        summary = _summary(params, matched)
        return make("approval_required", rules=matched, refusal=refusal, would_deny=would, approval_summary=summary)

    def python_snippets(self, subject: Subject) -> Decision:
        """May `subject` run ad-hoc Python snippets in the sandbox? Only if a file applying to it
        grants them (`sandbox: {python_snippets: true}`) and none forbids them (`false`).

        Shadow mode as for rules: a forbidding file in shadow mode records `would_deny` and the
        grant stands; without a grant, the default deny is shadowed only when every file applying
        to the agent is in shadow mode. Refusals are `policy_denied`."""
        applicable = [f for f in self.files if f.applies_to(subject)]
        said = [(f, f.policy.sandbox.python_snippets) for f in applicable if f.policy.sandbox is not None]

        def make(outcome: Outcome, **kw: Any) -> Decision:
            return Decision(outcome, subject, SANDBOX, PYTHON_SNIPPETS, self.version, **kw)

        def deny(message: str) -> Decision:
            return make("deny", refusal=Refusal("policy_denied", message, connector=SANDBOX, action=PYTHON_SNIPPETS))

        would: list[Finding] = []
        for f, grant in said:
            if grant is False:
                message = f"ad-hoc Python snippets are forbidden for {subject.describe()} by {f.name}"
                if f.policy.mode != "shadow":
                    return deny(message)
                would.append(Finding("policy_denied", message, None, True))
        if any(grant for _, grant in said):
            return make("allow", would_deny=tuple(would))
        message = (
            f"no policy grants ad-hoc Python snippets to {subject.describe()} "
            f"(a policy file for it needs sandbox: {{python_snippets: true}})"
        )
        if applicable and all(f.policy.mode == "shadow" for f in applicable):
            return make("allow", would_deny=(*would, Finding("policy_denied", message, None, True)))
        return deny(message)


    def covers(self, subject: Subject, connector: str, action: str | None = None) -> bool:
        """Whether a rule for `subject` names `connector` (and `action`, if given), or every file
        applying to it is in shadow mode (where nothing is refused): what an MCP tool list shows,
        before any arguments are known. The call itself is still `decide`d."""
        applicable = [f for f in self.files if f.applies_to(subject)]
        if applicable and all(f.policy.mode == "shadow" for f in applicable):
            return True
        if action is not None:
            return any(f.applies_to(subject) for f, _ in self._index.get((connector, action), []))
        return any(rule.connector == connector for f in applicable for rule in f.policy.rules)

    def dlp_for(self, subject: Subject, default: DlpPolicy) -> DlpPolicy:
        """DLP settings of the files applying to `subject`: per type the strictest action any file
        gives it (block, then tokenize, then mask), and reveal the intersection.

        `default` (the config's `dlp:` section) applies when no such file has a `dlp:` section.
        """
        block: set[str] = set()
        tokenize: set[str] = set()
        mask: set[str] = set()
        reveal: set[str] | None = None
        for f in self.files:
            if f.policy.dlp is None or not f.applies_to(subject):
                continue
            block.update(f.policy.dlp.block)
            tokenize.update(f.policy.dlp.tokenize)
            mask.update(f.policy.dlp.mask)
            mine = set(f.policy.dlp.reveal)
            reveal = mine if reveal is None else reveal & mine
        if reveal is None:
            return default
        tokenize -= block
        return DlpPolicy(frozenset(tokenize), frozenset(reveal), frozenset(block), frozenset(mask - block - tokenize))

    def _nearest(self, subject: Subject, connector: str, action: str, applicable: list[LoadedFile]) -> str:
        """The likeliest reason no rule covers the call; a rule for this agent in another tenant
        comes first, since "allowed for finance" told a finance agent without a tenant nothing."""
        covering = self._index.get((connector, action), [])
        for f, i in covering:
            if f.names(subject) and not f.in_tenant(subject):
                yours = repr(subject.tenant) if subject.tenant else "none"
                return (
                    f"; rule {_ref(f, i).id} allows it in tenant {f.policy.tenant!r} only, "
                    f"and this agent's tenant is {yours}"
                )
        for f in applicable:
            for i, rule in enumerate(f.policy.rules):
                if rule.connector == connector:
                    ref = _ref(f, i)
                    return f"; nearest rule {ref.id} allows {connector}: {', '.join(rule.actions)}"
        for f, i in covering:
            who = f.policy.subjects.roles or f.policy.subjects.sub
            return f"; nearest rule {_ref(f, i).id} allows it for {', '.join(who)}"
        if applicable:
            return f"; policies for this agent: {', '.join(f.name for f in applicable)}"
        return "; no policy file applies to this agent"


def _ref(f: LoadedFile, i: int) -> RuleRef:
    line = f.rule_lines[i] if i < len(f.rule_lines) else 1
    return RuleRef(f.name, i, line, f.policy.rules[i].name)


def _matched(f: LoadedFile, i: int) -> MatchedRule:
    rule = f.policy.rules[i]
    return MatchedRule(_ref(f, i), rule, rule.mode or f.policy.mode, f)


def _env(
    f: LoadedFile, subject: Subject, connector: str, action: str, params: Any, ctx: RequestContext
) -> Env:
    now = (ctx.now or datetime.now(UTC)).astimezone(f.policy.zone)
    context = {
        "hour": now.hour,
        "minute": now.minute,
        "weekday": now.weekday(),
        "tenant": subject.tenant,
        "role": subject.role,
        "sub": subject.sub,
        "confidence": ctx.confidence,
        "connector": connector,
        "action": action,
    }
    return Env(context, params)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_params(m: MatchedRule, params: Any) -> str | None:
    """The first constraint of the rule the parameters break, as a message; None if all pass."""
    for path, pr in m.rule.params.items():
        present = [x for x in fieldpath.select(params, path) if x.value is not None]
        problem = _check_one(path, pr, present)
        if problem is not None:
            return f"{problem} (rule {m.ref.id})"
    return None


def _check_one(path: str, pr: ParamRule, present: list[fieldpath.Match]) -> str | None:
    if pr.forbidden:
        return f"{present[0].path} is forbidden" if present else None
    if pr.required and not present:
        return f"{path} is required"
    for x in present:
        v, where = x.value, x.path
        if pr.max is not None or pr.min is not None:
            if not _is_number(v):
                return f"{where} is not a number"
            if pr.max is not None and v > pr.max:
                return f"{where} {v} exceeds max {pr.max}"
            if pr.min is not None and v < pr.min:
                return f"{where} {v} is below min {pr.min}"
        if pr.one_of is not None and not any(same_value(v, o) for o in pr.one_of):
            shown = f" {v}" if _is_number(v) or isinstance(v, bool) else ""
            return f"{where}{shown} is not one of [{', '.join(map(str, pr.one_of))}]"
        if pr.pattern is not None:
            if not isinstance(v, str):
                return f"{where} is not a string"
            if pr.pattern.fullmatch(v) is None:
                return f"{where} does not match the rule's pattern"
        if pr.max_length is not None:
            if not isinstance(v, (str, list, dict)):
                return f"{where} has no length"
            if len(v) > pr.max_length:
                return f"{where} is longer than {pr.max_length} (length {len(v)})"
    return None


SUMMARY_MAX_FIELDS = 32


def _summary(params: Any, matched: tuple[MatchedRule, ...]) -> dict[str, Any]:
    """What an approver is shown: numeric and boolean fields, and strings a `one_of` accepted.

    Free-text strings may be PII and are left out; a string that passed `one_of` is one of the
    policy's own listed values, so showing it reveals nothing new.
    """
    out: dict[str, Any] = {}
    for x in fieldpath.select(params, "*") if isinstance(params, (dict, list)) else []:
        _leaves(x, out)
    for m in matched:
        for path, pr in m.rule.params.items():
            if pr.one_of is None:
                continue
            for x in fieldpath.select(params, path):
                if isinstance(x.value, str) and any(same_value(x.value, o) for o in pr.one_of):
                    out[x.path] = x.value
    return dict(sorted(out.items())[:SUMMARY_MAX_FIELDS])


def _leaves(x: fieldpath.Match, out: dict[str, Any]) -> None:
    if isinstance(x.value, (dict, list)):
        for child in fieldpath.select(x.value, "*"):
            _leaves(fieldpath.Match(x.keys + child.keys, child.value), out)
    elif _is_number(x.value) or isinstance(x.value, bool):
        out[x.path] = x.value
