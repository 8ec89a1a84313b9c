"""May this call go out, and how? The one answer, as named steps in their order.

`decide_connect` decides whether a tunnel opens; `REQUEST_STEPS` decide each request inside it. The
README's "What happens to a call", the bench (`bench/decision.py`) and the tests all read these
tuples, and every front door (the proxy addon, sandbox host calls through it, MCP) calls `decide`
or `decide_connect`; nothing else decides. A step reads the request view and what earlier steps
found (`Ctx`), refuses by raising `Refusal`, or adds edits to `Ctx.forward`.

Anything unexpected while deciding is refused as `internal_error` (fail closed), and the last step
writes the decision's audit record before anything leaves: if it cannot be written, nothing
leaves (`store_unavailable`).

What a step spends for the call (an approval, budget charges) is spent only if the call is let
out: the step leaves a give-back in `Ctx.give_back`, and `decide` runs them when a later step
refuses the call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from connectors import codecs
from connectors.model import MCP_PROTOCOL, BodyEncoding, canonical_host
from connectors.registry import Route
from gateway.errors import DECISION_HEADER, Refusal, StoreUnavailable
from gateway.identity.issuers import narrow
from gateway.identity.tokens import ADMIN_ROLE, METRICS_ROLE, Identity, token_from_proxy_authorization
from gateway.mcp.schema import ArgumentsSchema, SchemaRefused
from gateway.mcp.store import Pin, awaits_admin
from gateway.pipeline import steps
from gateway.pipeline.call import Call
from gateway.pipeline.dlp import CallDlp, scope_of
from gateway.pipeline.request import ConnectVerdict, ConnectView, Forward, RequestView, Tunnel, Verdict
from gateway.policy.engine import Decision, PolicySet
from gateway.telemetry import TRACE_HEADERS
from gateway.telemetry.anomaly import RESPONSES, fired_rules, held_for_anomaly
from gateway.telemetry.baseline import shape_of

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger(__name__)
HTTPS_PORT = 443
# An HTTP/2 client that did not negotiate it: inside a tunnel only HTTP/1.1 is decided request by request.
HTTP2_REFUSED = "HTTP/2 is not spoken here; send HTTP/1.1 in the tunnel (ALPN http/1.1)"
T = TypeVar("T")


@dataclass
class Ctx:
    """One decision in progress: the request, the runtime's services, and what steps found so far."""

    rt: Runtime | None  # None in a dry run (`judge`), which runs only the steps that need no service
    view: RequestView
    call: Call
    forward: Forward
    identity: Identity | None = None
    route: Route | None = None  # None after the route step: an `egress.allow` pass-through host
    query: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    judged: dict[str, Any] = field(default_factory=dict)
    policies: PolicySet | None = None
    decision: Decision | None = None
    pin: Pin | None = None  # an MCP tool's pin, read once by `route` for `mcp`
    input_schema: ArgumentsSchema | None = None  # an MCP tool's pinned input schema, compiled
    # What to undo if a later step refuses the call: an approval used, budgets charged.
    give_back: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def services(self) -> Runtime:
        assert self.rt is not None, "a step that needs the gateway's services ran in a dry run"
        return self.rt

    @property
    def host(self) -> str:
        """The request target's host as routing and egress judge it (the audit's `call.host` shows
        only a claimed host)."""
        return canonical_host(self.view.host)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Ctx], Awaitable[None]]
    doc: str


# --- the steps of a request -----------------------------------------------------------------


async def identify(c: Ctx) -> None:
    """The identity again, inside the tunnel: expiry and revocation are re-checked on every request."""
    tunnel = c.view.tunnel
    if tunnel is None:
        # Not inside a CONNECT tunnel: an absolute-form plain-http proxy request.
        token = token_from_proxy_authorization(c.view.header("proxy-authorization"))
        c.call.identity = await c.services.verifier.authenticate(token)
        c.services.check_quarantine(c.call.identity)
        if c.services.registry.claims(c.host) or c.host in c.services.allow_hosts:
            if c.view.scheme == "https":  # absolute-form `GET https://...`: sent to the proxy in the clear
                raise Refusal("plain_http_denied", f"https to {c.host} must go through a CONNECT tunnel; this request was sent to the proxy in the clear")
            raise Refusal("plain_http_denied", f"plain http to {c.host} is refused; use https")
        raise Refusal("host_denied", "no connector or egress.allow entry claims the host")
    c.identity = c.call.identity = tunnel.identity
    c.services.verifier.check(tunnel.identity)
    c.services.check_quarantine(tunnel.identity)


async def framing(c: Ctx) -> None:
    """The request as bytes: HTTP/1, an upper-case method, a body within max_body, no control characters."""
    if c.view.raw_method == b"PRI" and c.view.path == "*":  # the HTTP/2 preface, read as a request
        raise Refusal("bad_request", HTTP2_REFUSED)
    if not c.view.raw_method.isupper():
        # The proxy shows the method upper-cased but forwards the raw bytes: route what is sent.
        raise Refusal("bad_request", "the method must be upper case")
    if len(c.view.body) > c.services.config.max_body:
        raise Refusal("body_too_large", f"the request body exceeds max_body ({c.services.config.max_body} bytes)")
    steps.check_headers(c.view.headers)


async def egress(c: Ctx) -> None:
    """https only, and every name for the target (request, Host, SNI) is the checked CONNECT target."""
    v, tunnel = c.view, c.view.tunnel
    assert tunnel is not None
    steps.check_target(
        connect=(tunnel.host, tunnel.port),
        scheme=v.scheme,
        target=(v.host, v.port),
        authority=v.authority,
        host_header=v.host_header,
        sni=v.sni,
    )


async def route(c: Ctx) -> None:
    """host + method + path -> the connector action; a path must mean the same here and at the vendor."""
    path = c.view.path or "/"
    steps.check_path(path)
    host = c.host
    if c.view.mcp is not None:

        def listed(server: str, tool: str) -> bool:
            c.pin = c.services.mcp.state(server, tool)
            return c.pin is not None

        c.route = steps.route_mcp(c.services.registry, listed, host, c.view.method, path, c.view.mcp.tool)
    else:
        c.route = steps.route(c.services.registry, c.services.allow_hosts, host, c.view.method, path)
    if c.route is None:
        c.call.connector, c.call.action = steps.PASSTHROUGH, host
    else:
        c.call.connector, c.call.action = c.route.connector.name, c.route.action.name
        assert c.identity is not None
        c.services.check_quarantine(c.identity, c.route.connector.name)


# Streamable HTTP clients GET the server's stream only within a session. A GET without one opens
# the legacy HTTP+SSE transport, whose answers to POSTed calls arrive on that GET stream, apart
# from the requests they answer: refused, never passed unchecked.
LEGACY_SSE_REFUSED = (
    "a GET without an Mcp-Session-Id opens the legacy HTTP+SSE transport (MCP 2024-11-05), which the gateway"
    " does not carry; use the Streamable HTTP transport (POST JSON-RPC to this endpoint)"
)


async def mcp(c: Ctx) -> None:
    """An MCP request: Streamable HTTP (a GET only within a session), its session one this agent
    opened, and a tool it calls still has the definition that was pinned (a changed one waits for
    an admin: `mcp_tool_changed`), whose input schema the arguments will be checked against."""
    if c.view.mcp is None:
        return
    assert c.route is not None
    session = c.view.header("mcp-session-id")
    if sum(k.lower() == b"mcp-session-id" for k, _ in c.view.headers) > 1:
        # Only the first is checked here, and both would go on: a server reading the last (or
        # both, joined) would act in a session the check never saw.
        raise Refusal("mcp_malformed", "a request names one MCP session: send one Mcp-Session-Id header")
    if session is None and c.view.method == "GET":
        raise Refusal("unknown_action", LEGACY_SSE_REFUSED)
    if session is not None and c.services.mcp.session_agent(session) != c.call.agent:
        raise Refusal("mcp_session_foreign", "this MCP session was not opened through the gateway by this agent")
    server, tool = c.route.connector.name, c.view.mcp.tool
    if tool is None:
        return
    pin = c.pin
    if pin is None or awaits_admin(pin):  # (`route` read the pin of every tool it routed)
        raise Refusal(
            "mcp_tool_changed",
            f"the definition of {server} tool {tool} changed since it was pinned; an admin must accept it"
            f" (egress-gateway mcp accept {server} {tool})",
        )
    try:
        c.input_schema = c.services.mcp_schemas.get(pin.pinned, lambda: c.services.mcp.schema(pin.pinned))
    except SchemaRefused as e:
        raise Refusal("schema_violation", f"the input schema of {server} tool {tool} cannot be checked, so the tool is refused: {e}") from None
    if c.input_schema is None:
        raise Refusal(
            "mcp_tool_changed",
            f"the gateway has not read the definition of {server} tool {tool} yet; list the tools (tools/list) before calling it",
        )


async def scopes(c: Ctx) -> None:
    """The token's scopes: the ceiling within which the policy decides."""
    assert c.identity is not None
    if c.route is None:
        steps.authorize_scopes(c.identity, "egress", c.host)
        if c.policies is not None:
            # Policy rules name connectors; a pass-through host has none, so no rule can allow it.
            raise Refusal("policy_denied", f"{c.host} is a pass-through host; policies govern connectors only")
        return
    if c.route.action.name == MCP_PROTOCOL:
        steps.reaches_connector(c.identity, c.route.connector.name)
        return
    steps.authorize_scopes(c.identity, c.route.connector.name, c.route.action.name)


async def validate(c: Ctx) -> None:
    """Decode the body (JSON, form, query) and check it against the action's request model."""
    if c.route is None:
        return
    if c.view.mcp is not None:
        # The tool's arguments, already read from the JSON-RPC message: first against the tool's
        # pinned input schema, then a copy, as DLP rewrites it.
        if c.input_schema is not None:
            steps.check_arguments(c.input_schema, c.view.mcp.arguments)
        c.params = c.judged = steps.validate_arguments(c.route.action, c.view.mcp.arguments)
        return
    cred, c.query = c.route.connector.credential, c.view.query
    if cred is not None and cred.query_param is not None:
        c.query = steps.strip_query_param(c.query, cred.query_param)
        c.forward.drop_query.append(cred.query_param)
    encoding = (c.view.header("content-encoding") or "identity").strip().lower()
    if encoding not in ("identity", ""):
        raise Refusal("malformed_body", "compressed request bodies are not accepted; send them plain")
    c.params = steps.validate(c.route.action, c.view.body, c.query)
    # What the policy judges and an approval is bound to: the parameters and the path's own
    # (confirming pi_A is not confirming pi_B). `_path` can name no model field.
    path_params = c.route.path_params
    c.judged = {**c.params, steps.PATH_PARAMS: path_params} if path_params else c.params


async def authorize(c: Ctx) -> None:
    """The agent's policy: allow, deny, approval_required, or shadow (record, let out)."""
    if c.route is None:
        return
    assert c.identity is not None
    confidence = c.view.header(steps.CONFIDENCE_HEADER)
    name, action = c.route.connector.name, c.route.action.name
    if action == MCP_PROTOCOL:
        # No tool is called: the agent needs a rule naming some tool of this server to talk to it.
        if c.policies is not None and not c.policies.covers(steps.subject(c.identity), name):
            raise Refusal("policy_denied", f"no policy rule allows any tool of {name} for {steps.subject(c.identity).describe()}")
        return
    c.decision = steps.authorize(c.policies, c.identity, name, action, c.judged, confidence)
    if c.decision is None:
        return
    c.call.decided_by(c.decision)
    if c.decision.outcome == "deny" and c.decision.refusal is not None:
        raise c.decision.refusal


async def anomaly(c: Ctx) -> None:
    """The agent against its behaviour baseline (`anomaly:`): a rule that holds records the call,
    holds it for a person's approval (the approval step's own flow), or quarantines the agent."""
    if c.services.baselines is None:
        return
    assert c.identity is not None
    connector, action = c.call.connector or "", c.call.action or ""
    items = {"connectors": connector, "actions": f"{connector}:{action}", "hosts": c.host}
    if c.route is not None:
        items["shapes"] = shape_of(connector, action, c.params)
    signals = c.services.baselines.score(c.services.agent_key(c.identity), items)
    fired = fired_rules(c.services.config, signals)
    if not fired:
        return
    c.call.extra["anomaly"] = conditions = sorted({rule.condition for rule in fired})
    response = max((rule.then for rule in fired), key=RESPONSES.index)
    if response == "quarantine":
        c.services.quarantine_agent(c.identity, f"anomaly: {', '.join(conditions)}")
        raise Refusal("quarantined", f"the agent is quarantined: its calls are unlike its baseline ({', '.join(conditions)})")
    if response == "approval":
        held = held_for_anomaly(c.decision, c.identity, connector, action, conditions)
        if c.decision is None:  # no policy judged the call: the record names the anomaly as its policy
            c.call.decided_by(held)
        c.decision = held


async def approval(c: Ctx) -> None:
    """A call that needs approval is held, bound to these parameters; an approved retry passes
    (the id in `X-Egress-Approval`, or in an MCP tools/call's `params._meta`).

    Asking for an approval is a call too: it counts against the rule's rates (60 such calls
    against a 20/minute rule must not leave 60 approvals pending), and one agent holds at most
    `approval_max_pending`; a retry of the same call waits for the same approval. The approval
    shows the body tokenized as the vendor would get it (`Dlp.approver_view`). An approval used
    by a call a later step refuses (its budget) is given back, for the agent's next try."""
    d = c.decision
    if d is None or d.outcome != "approval_required" or c.route is None:
        return
    approvals = c.services.approvals
    in_message = c.view.mcp.approval if c.view.mcp is not None else None
    presented = in_message if in_message is not None else c.view.header(steps.APPROVAL_HEADER)
    call_id = c.call.decision_id
    if presented and approvals.use(d, c.judged, presented, call_id):
        c.call.extra["approval_id"] = presented

        async def release() -> None:
            approvals.release(presented, call_id)

        c.give_back.append(release)
        return
    await c.services.quotas.charge(d, c.judged, budgets=False)
    # The approver sees the body as the vendor would get it: tokenized (a copy; the dlp step
    # still tokenizes the call itself), never a raw value.
    assert c.identity is not None
    dlp_policy = c.services.dlp.policy_for(c.policies, c.identity)
    body = await c.services.dlp.approver_view(c.route.action, c.params, dlp_policy, scope_of(c.identity))
    raise approvals.hold(d, c.judged, presented, c.services.config.approval_max_pending, body)


async def quota(c: Ctx) -> None:
    """Rates and budgets of every rule that allowed the call, charged atomically."""
    if c.decision is None:
        return
    quotas = c.services.quotas
    charge = await quotas.charge(c.decision, c.judged, call_id=c.call.decision_id)
    if charge.budgets:
        c.give_back.append(lambda: quotas.give_back(charge))
    findings = charge.findings
    c.call.extra["would_deny"] += [f.as_dict() for f in findings if not f.fail_open]
    if opened := [f.as_dict() for f in findings if f.fail_open]:
        c.call.extra["fail_open"] = opened


async def dlp(c: Ctx) -> None:
    """PII in the action's DLP fields leaves only as tokens; the body is re-encoded if any changed."""
    if c.route is None:
        return
    assert c.identity is not None
    action = c.route.action
    dlp_policy = c.services.dlp.policy_for(c.policies, c.identity)
    reveal = dlp_policy.reveal if action.detokenize_response else frozenset()
    call_dlp = c.forward.dlp = CallDlp(scope_of(c.identity), reveal)
    started = time.perf_counter()
    try:
        counts = await c.services.dlp.tokenize(action, c.params, dlp_policy, call_dlp)
    finally:
        c.services.metrics.dlp(c.route.connector.name, action.name, time.perf_counter() - started)
    if counts:
        c.call.extra["tokenized"] = counts
        if c.view.mcp is not None:
            c.forward.arguments = c.params
        elif action.encoding is BodyEncoding.QUERY:
            c.forward.path = f"{c.view.path}?{codecs.encode_form(c.params)}"
        else:
            c.forward.body = codecs.encode(action.encoding, c.params)


async def credentials(c: Ctx) -> None:
    """Only headers the connector declares leave (values held to their patterns, the idempotency
    key namespaced per agent); the agent's auth is dropped, the vendor's credential injected, and
    the answer asked for uncompressed."""
    connector = c.route.connector if c.route else None
    declared = connector.headers if connector else steps.PASSTHROUGH_HEADERS
    idempotency = connector.idempotency_header if connector else None
    drop, headers = steps.header_edits(c.view.headers, declared, idempotency, c.call.agent or "")
    c.forward.drop_headers += drop
    c.forward.set_headers.update(headers)
    if c.route is not None and (media := steps.CONTENT_TYPES.get(c.route.action.encoding.value)) and c.view.body:
        c.forward.set_headers["content-type"] = media
    c.forward.drop_headers += TRACE_HEADERS
    if c.services.config.telemetry.propagate and (parent := c.services.traceparent(c.call, c.view.header("traceparent"))):
        c.forward.set_headers["traceparent"] = parent
    if c.route is None:
        c.forward.drop_headers += steps.NEVER_FORWARD
        return
    drop, headers, query = steps.credential_edits(c.route.connector, c.services.secrets)
    c.forward.drop_headers += drop
    c.forward.set_headers.update(headers)
    # The answer is read plain: credentials it echoes are removed, and tokens restored, in it.
    c.forward.set_headers["accept-encoding"] = "identity"
    c.forward.set_query.update(query)


async def circuit(c: Ctx) -> None:
    """The host's circuit breaker. Last: letting a half-open circuit's one probe through commits
    us to forwarding it."""
    c.services.breaker.check(c.host, c.call.agent)


async def audit(c: Ctx) -> None:
    """The decision's record, written before anything leaves; the vendor gets the decision id too
    (set, never appended: an agent's own value is replaced) to join its logs with ours."""
    c.services.record(c.call.record("allow", phase="decision"))
    c.forward.set_headers[DECISION_HEADER] = c.call.decision_id


def _step(fn: Callable[[Ctx], Awaitable[None]]) -> Step:
    return Step(fn.__name__, fn, (fn.__doc__ or "").split("\n")[0])


REQUEST_STEPS: tuple[Step, ...] = tuple(
    _step(fn)
    for fn in (
        identify, framing, egress, route, mcp, scopes, validate, authorize, anomaly, approval, quota, dlp, credentials, circuit,
        audit,
    )
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in REQUEST_STEPS)
# What `policy test` runs: the same judging as a live call, for a given action, without services.
JUDGE_STEPS: tuple[Step, ...] = tuple(s for s in REQUEST_STEPS if s.run in (validate, authorize))


def new_ctx(rt: Runtime, view: RequestView, call: Call) -> Ctx:
    """A decision's start: one policy version judges the whole call, however a reload lands meanwhile."""
    address = view.tunnel.address if view.tunnel else ("", 0)
    return Ctx(rt, view, call, Forward(address), policies=rt.policies.current if rt.policies else None)


async def decide(rt: Runtime, view: RequestView, call: Call | None = None) -> Verdict:
    """Run `REQUEST_STEPS` over one request; a refusal is audited here, an allow by the last step."""
    ctx = new_ctx(rt, view, call or request_call(rt, view))
    call = ctx.call
    trace = call.trace = rt.tracing.decision(view.header("traceparent")) if rt.tracing is not None else None

    async def run() -> Forward:
        for step in REQUEST_STEPS:
            await step.run(ctx)
        return ctx.forward

    async def run_traced(ends: list[int]) -> Forward:
        # Only a number per step while deciding; the spans are built once it is over.
        for step in REQUEST_STEPS:
            await step.run(ctx)
            ends.append(time.time_ns())
        return ctx.forward

    if trace is None:
        forward, refusal = await _failing_closed(rt, call, view.client, run())
    else:
        assert rt.tracing is not None
        forward, refusal = await _failing_closed(rt, call, view.client, run_traced(trace.ends))
        if not call.held_back:  # traced as the audit log holds it: a flood without a token, per source
            rt.tracing.end_decision(trace, STEP_NAMES, call.record("deny" if refusal else "allow", refusal))
    if refusal is not None:
        await _give_back(ctx)
    return Verdict(call, refusal, forward)


async def judge(
    view: RequestView, call: Call, route: Route, identity: Identity, policies: PolicySet | None,
    input_schema: ArgumentsSchema | None = None,
) -> tuple[Ctx, Refusal | None]:
    """A dry run of `JUDGE_STEPS` (validate, authorize) on a known action: what `policy test` shows
    is decided by the very functions a live call goes through (an MCP tool's arguments against
    `input_schema`, its pinned one, when the caller could read it)."""
    ctx = Ctx(None, view, call, Forward(("", 0)), identity=identity, route=route, policies=policies, input_schema=input_schema)
    call.identity, call.connector, call.action = identity, route.connector.name, route.action.name
    try:
        for step in JUDGE_STEPS:
            await step.run(ctx)
    except Refusal as r:
        return ctx, r
    return ctx, None


def may_call(identity: Identity, policies: PolicySet | None, connector: str, action: str) -> bool:
    """Whether the token's scopes and a policy rule reach `connector:action` at all, whatever the
    arguments: which tools an MCP tool list shows and which server requests pass. A call of a
    shown tool is still decided by `decide`, arguments and all."""
    if not identity.allows(connector, action):
        return False
    return policies is None or policies.covers(steps.subject(identity), connector, action)


def request_call(rt: Runtime, view: RequestView) -> Call:
    """The call a request starts as, with only what may be written: a claimed host, an HTTP token
    as method, a redacted path. The host that routing judges is `ctx.host`, never this one."""
    return Call(
        host=steps.audit_host(rt.registry, rt.allow_hosts, view.host),
        method=steps.audit_method(view.method),
        path=steps.redact_path(view.path),
    )


def refused(rt: Runtime, call: Call, refusal: Refusal, client: str | None = None) -> Refusal:
    """Audit a refusal (it can no longer change what happens, so a failed write is only logged),
    with the client address that refusals without a valid token are aggregated by."""
    if refusal.connector is None:
        refusal.connector, refusal.action = call.connector, call.action
    call.held_back = not rt.record_after(call.record("deny", refusal, phase="decision", client=client))
    return refusal


async def _give_back(ctx: Ctx) -> None:
    """The call was refused after steps spent something for it: give it back, last spent first.
    A give-back that fails is logged and the rest still run; the refusal stands either way (what
    could not be given back stays spent: the safe side)."""
    for undo in reversed(ctx.give_back):
        try:
            await undo()
        except StoreUnavailable as e:
            log.warning("what a refused call spent could not be given back: %s", e)
        except Exception:  # a bug here must not turn the refusal into a dropped connection
            log.exception("giving back what a refused call spent failed")


async def _failing_closed(rt: Runtime, call: Call, client: str | None, work: Awaitable[T]) -> tuple[T | None, Refusal | None]:
    """`work`'s result, or the refusal it raised; a store that is down refuses as
    `store_unavailable`, anything unexpected as `internal_error` (fail closed). A refusal is
    audited here."""
    try:
        return await work, None
    except Refusal as r:
        return None, refused(rt, call, r, client)
    except StoreUnavailable as e:  # a state store a step reads (MCP pins and sessions on Redis)
        log.warning("%s decision refused: %s", call.method, e)
        return None, refused(rt, call, Refusal("store_unavailable", "a state store the decision needs is unavailable"), client)
    except Exception:
        log.exception("%s decision failed", call.method)
        return None, refused(rt, call, Refusal("internal_error", "the gateway failed while deciding"), client)


# --- CONNECT --------------------------------------------------------------------------------


async def decide_connect(rt: Runtime, view: ConnectView) -> ConnectVerdict:
    """Whether a tunnel opens: a valid agent (not an admin), a claimed host on 443, a public address.

    A refusal is a decision with an audit record, so it is traced like a request's: one span, from
    the same record, continuing the agent's traceparent. A tunnel that opens has no record (each
    request inside is decided, recorded and traced), so it has no span either; nor has a refusal
    without a token that the audit log holds back as noise (its source's summary stands for it)."""
    host = canonical_host(view.host)
    call = Call(host=steps.audit_host(rt.registry, rt.allow_hosts, host), method="CONNECT", path=None)
    trace = rt.tracing.decision(view.traceparent) if rt.tracing is not None else None

    async def run() -> Tunnel:
        call.identity = await connect_identity(rt, view, call)
        rt.check_quarantine(call.identity)
        if call.identity.role in (ADMIN_ROLE, METRICS_ROLE):
            raise Refusal("identity_invalid", f"a {call.identity.role} token is for the API only, not a proxy credential")
        if not (rt.registry.claims(host) or host in rt.allow_hosts):
            raise Refusal("host_denied", "no connector or egress.allow entry claims the host")
        if view.port != HTTPS_PORT:
            raise Refusal("host_denied", f"vendors are reached on port {HTTPS_PORT} only")
        return Tunnel(call.identity, host, view.port, await rt.resolver.resolve(host, view.port))

    tunnel, refusal = await _failing_closed(rt, call, view.client, run())
    if trace is not None and refusal is not None and not call.held_back:
        assert rt.tracing is not None
        rt.tracing.end_decision(trace, (), call.record("deny", refusal))
    return ConnectVerdict(call, refusal, tunnel)


async def connect_identity(rt: Runtime, view: ConnectView, call: Call) -> Identity:
    """Who opens the tunnel: the token, the client certificate (`listen_tls`), or both, which must
    name the same agent (sub, tenant, role); the token's scopes are then narrowed to the
    certificate's, and its expiry to the certificate's, so a token on top can only restrict what
    the certificate allows (and never keeps an expired or revoked certificate's tunnel serving)."""
    if view.certificate is None:
        if view.mtls:
            raise Refusal("identity_missing", "this listener (listen_tls) takes agents with a client certificate")
        return await rt.verifier.authenticate(token_from_proxy_authorization(view.proxy_authorization))
    by_cert = call.identity = rt.verifier.from_certificate(view.certificate)
    if view.proxy_authorization is None:
        return by_cert
    by_token = await rt.verifier.authenticate(token_from_proxy_authorization(view.proxy_authorization))
    if (by_token.sub, by_token.tenant, by_token.role) != (by_cert.sub, by_cert.tenant, by_cert.role):
        raise Refusal("identity_invalid", "the token and the client certificate name different agents")
    return replace(by_token, scopes=narrow(by_token.scopes, by_cert.scopes), exp=min(by_token.exp, by_cert.exp),
                   certificate_jti=by_cert.jti)
