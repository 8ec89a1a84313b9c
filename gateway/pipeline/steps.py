"""The checks of one call, as plain functions over plain values.

`gateway.pipeline.decision` runs them in its named order; nothing here touches mitmproxy, a socket
or a store, so every check is testable and benchmarkable on its own. A check refuses by raising
`Refusal`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, unquote_plus

from pydantic import ValidationError

from connectors import codecs, fieldpath
from connectors.model import MCP_TOOL_NAME, Action, Connector, Credential, UnknownFields, canonical_host
from connectors.registry import Registry, Route
from gateway.errors import Refusal, describe
from gateway.identity.tokens import Identity
from gateway.mcp.schema import ArgumentsInvalid, ArgumentsSchema, SchemaRefused
from gateway.policy.engine import Decision, PolicySet, RequestContext, Subject

if TYPE_CHECKING:
    from gateway.secrets import Secrets

PASSTHROUGH = "passthrough"
APPROVAL_HEADER = "x-egress-approval"
CONFIDENCE_HEADER = "x-agent-confidence"
# Never forwarded: proxy auth, upgrades (an upgraded connection would escape inspection), and the
# headers that speak to the gateway itself.
# Also never forwarded: what names the agent's own network or session (cookies, forwarding chains),
# which no vendor API call needs and which would tell the vendor about the agent's side.
NEVER_FORWARD = (
    "proxy-authorization", "proxy-connection", "upgrade", APPROVAL_HEADER, CONFIDENCE_HEADER,
    "cookie", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip",
)
# Taken from every agent, each value held to its pattern: what any HTTP API call needs.
STANDARD_HEADERS: dict[str, str] = {
    "host": r"[A-Za-z0-9.-]+(:[0-9]{1,5})?",
    "content-length": r"[0-9]{1,15}",
    "transfer-encoding": r"chunked",
    "connection": r"keep-alive|close",
}
# Content-Type is the gateway's, from the action's encoding: an agent's could carry anything in
# its parameters. Accept is not forwarded: no vendor call here needs it.
CONTENT_TYPES = {"json": "application/json", "form": "application/x-www-form-urlencoded"}
# A pass-through host (egress.allow) has no action to say its encoding: a plain media type passes.
PASSTHROUGH_HEADERS = (("content-type", r"[a-z]+/[a-z0-9.+-]{1,40}(; ?charset=[A-Za-z0-9_-]{1,20})?"),)
USER_AGENT = "egress-gateway"  # what vendors see instead of the agent's own (SDK, OS, host names)
PATH_PARAMS = fieldpath.PATH_PARAMS  # where the path parameters sit among the parameters judged
_ID_LIKE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PATH_PARAM = re.compile(r"[A-Za-z0-9_-]{1,255}")  # vendor object ids: pi_3Mtw..., cus_Q1w2...
_DIGIT_RUN = re.compile(r"[0-9](?:[-_]?[0-9]){5,}")  # a card, an SSN or a phone number, not an id


def check_target(
    *,
    connect: tuple[str, int],
    scheme: str,
    target: tuple[str, int],
    authority: tuple[str, int | None] | None,
    host_header: tuple[str, int | None] | None,
    sni: str | None,
) -> None:
    """Step 3, inside the tunnel: https only, and every name for the target is the CONNECT target.

    The request target (and its absolute-form authority, if the agent sent one), the Host header and
    the TLS SNI each name a host; if any differs from what the tunnel was opened (and checked) for,
    the call is domain fronting and refused.
    """
    connect_host, connect_port = connect
    if scheme != "https":
        raise Refusal("plain_http_denied", f"plain http to {connect_host} is refused; use https")
    names: dict[str, tuple[str, int | None]] = {"request target": target}
    if authority is not None:
        names["absolute-form target"] = authority
    if host_header is not None:
        names["Host header"] = host_header
    if sni:
        names["TLS SNI"] = (sni, None)
    for what, (name, port) in names.items():
        if canonical_host(name) != connect_host or port not in (None, connect_port):
            raise Refusal("domain_fronting", f"the {what} differs from the CONNECT target {connect_host}")


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def check_headers(fields: Iterable[tuple[bytes, bytes]]) -> None:
    """Step 3's guard on headers: no control characters (bare CR, LF from a folded line, NUL).

    mitmproxy splits lines on LF only, so `X-A: b\\rStripe-Account: acct_x` arrives as one header
    holding a CR, and would be forwarded as is; a vendor (or a server before it) that breaks lines
    on a bare CR would see a second header that credential stripping never saw.
    """
    for name, value in fields:
        if _CONTROL.search(name) or _CONTROL.search(value):
            raise Refusal("bad_request", "a header holds a control character (CR, LF, NUL)")


_PCT = re.compile(r"%[0-9A-Fa-f]{2}")


def check_path(path: str) -> None:
    """Step 2's guard: a path must mean the same to the gateway and to the vendor.

    Routing matches the path as sent, but a vendor (or a server in front of it) may decode and
    normalise it: `/v1/payment_intents/%2e%2e/refunds` matches the action for one payment intent
    here and is a different resource there. So dot segments (plain or encoded), encoded slashes
    and backslashes, control characters and double encoding (`%252e`) are refused outright.
    """
    if any("\udc80" <= c <= "\udcff" for c in path):
        raise Refusal("bad_request", "the path is not UTF-8")
    for segment in path.split("/"):
        decoded = unquote(segment)
        if _PCT.search(decoded):
            raise Refusal("bad_request", "the path is percent-encoded twice")
        control = any(ord(c) < 0x20 or c == "\x7f" for c in decoded)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded or control:
            raise Refusal("bad_request", "the path has a dot segment, an encoded slash or a control character")


_METHOD = re.compile(r"[A-Z]{1,16}")


def audit_method(method: str) -> str:
    """The method as the audit and messages show it: an HTTP token, or `…` (an agent can send any
    bytes as a method, an e-mail address included)."""
    return method if _METHOD.fullmatch(method) else "…"


def audit_host(registry: Registry, allow_hosts: frozenset[str], host: str) -> str:
    """A host as the audit and messages show it: only a host the gateway claims is written; any
    other name comes from the agent alone and may carry anything (`jane.doe.1985.evil.example`)."""
    name = canonical_host(host)
    return name if registry.claims(name) or name in allow_hosts else "…"


def redact_path(path: str) -> str:
    """The path as the audit records it: id-like segments (`pi_123`, `v1`) kept, anything else
    (an agent can put an e-mail address in a path) shown as `…`."""
    return "/".join(
        seg if not seg or (_ID_LIKE.fullmatch(seg) and not _DIGIT_RUN.search(seg)) else "…" for seg in path.split("/")
    )


def route(registry: Registry, allow_hosts: frozenset[str], host: str, method: str, path: str) -> Route | None:
    """Step 2: the connector action this call is, None for an `egress.allow` pass-through host."""
    found = registry.route(host, method, path)
    if found is not None:
        for name, value in found.path_params.items():
            if not _PATH_PARAM.fullmatch(unquote(value)) or _DIGIT_RUN.search(unquote(value)):
                # A path is not scanned for PII, so what it may carry is held to an id's form.
                raise Refusal("schema_violation", f"path parameter {name}: not an id of the form the vendor takes")
        return found
    if host in allow_hosts and not registry.claims(host):
        return None
    owners = registry.connectors_for(host)
    raise Refusal(
        "unknown_action",
        f"{audit_method(method)} {redact_path(path)} is no action of the connector for {host}",
        connector=owners[0].name if owners else None,
    )


MCP_METHODS = ("POST", "GET", "DELETE")  # Streamable HTTP: messages, the server's stream, session end


def route_mcp(registry: Registry, listed: Callable[[str, str], bool], host: str, method: str, path: str, tool: str | None) -> Route:
    """Step 2 for an MCP request: the server whose endpoint this is, and the tool called (its
    protocol action when none is). A tool is routed only if the server listed it (`listed`), so
    a name the agent made up is never written anywhere, not even in the audit."""
    connector = registry.mcp_endpoint(host, path)
    if connector is None or method not in MCP_METHODS or (tool is not None and method != "POST"):
        raise Refusal("unknown_action", f"{audit_method(method)} {redact_path(path)} is no MCP endpoint of {host}")
    if tool is None:
        return Route(connector, connector.protocol(), {})
    action = connector.action(tool) if MCP_TOOL_NAME.fullmatch(tool) else None
    if action is None or not listed(connector.name, tool):
        raise Refusal(
            "unknown_action",
            f"the MCP server {connector.name} never listed a tool of that name the gateway pinned"
            " (past the server's max_pinned_tools, new tools are not pinned)",
            connector=connector.name,
        )
    return Route(connector, action, {})


def authorize_scopes(identity: Identity, connector: str, action: str) -> None:
    """The token's scopes: a ceiling on what the policy may allow (the whole decision until policies)."""
    if not identity.allows(connector, action):
        raise Refusal("scope_denied", f"the token's scopes do not include {connector}:{action}")


def reaches_connector(identity: Identity, connector: str) -> None:
    """The token's scopes name the connector at all: what its protocol messages (an MCP session's
    initialize, tools/list) need, as each tool call is then checked on its own."""
    if not any(s == "*" or s.partition(":")[0] == connector for s in identity.scopes):
        raise Refusal("scope_denied", f"the token's scopes do not include any action of {connector}")


def validate(action: Action, body: bytes, query: str) -> dict[str, Any]:
    """Step 4: decode the parameters and check them against the action's request model.

    Returns the parameters as the model reads them (a form's "5000" is the number 5000), with only
    the fields the agent sent: what policies judge, and what DLP rewrites. Fields the model does not
    declare are refused, or, for an action whose `unknown_fields` is `pass_scanned`, kept as sent.
    """
    params = codecs.decode(action.encoding, body, query)
    if action.request is None:
        if params:
            raise Refusal("schema_violation", f"{action.name} takes no parameters")
        return params
    # `pass_scanned`: fields the model does not declare go out as sent, and DLP scans them
    # (`gateway.pipeline.dlp.scanned_fields`); the declared ones are validated as always.
    passed = action.unknown_keys(params) if action.unknown_fields is UnknownFields.PASS_SCANNED else []
    if PATH_PARAMS in passed:
        raise Refusal("schema_violation", f"{PATH_PARAMS} is reserved for the path's parameters")
    if not all(fieldpath.is_name(k) for k in passed):
        # A name DLP could not address as a path would leave unscanned, and the name itself is text.
        raise Refusal("schema_violation", "an undeclared field's name must be letters, digits, _ and - (at most 64)")
    declared = {k: v for k, v in params.items() if k not in passed}
    try:
        checked = action.request.model_validate(declared).model_dump(mode="json", exclude_unset=True)
    except ValidationError as e:
        raise Refusal("schema_violation", describe(e)) from None
    return {**checked, **{k: params[k] for k in passed}}


def validate_arguments(action: Action, arguments: dict[str, Any]) -> dict[str, Any]:
    """Step 4 for an MCP tool call: its arguments against the action's model (any JSON object
    for a tool; the server's own input schema is the server's to enforce), as a copy."""
    assert action.request is not None
    try:
        return action.request.model_validate(arguments).model_dump(mode="json")
    except ValidationError as e:
        raise Refusal("schema_violation", describe(e, "arguments")) from None


def check_arguments(schema: ArgumentsSchema, arguments: dict[str, Any]) -> None:
    """Step 4 for an MCP tool call, first: its arguments against the tool's pinned input schema."""
    try:
        schema.check(arguments)
    except ArgumentsInvalid as e:
        raise Refusal("schema_violation", f"the arguments do not fit the tool's input schema: {e}") from None
    except SchemaRefused as e:
        raise Refusal("schema_violation", f"the tool's input schema cannot be checked, so the call is refused: {e}") from None


def subject(identity: Identity) -> Subject:
    return Subject(identity.sub, identity.role, identity.tenant)


def authorize(
    policies: PolicySet | None, identity: Identity, connector: str, action: str, params: dict[str, Any], confidence: str | None
) -> Decision | None:
    """Step 5: the agent's policy decides within the token's scopes; None when no policies are loaded.

    A `deny` is returned, not raised, so the caller can audit the policy version and rules first.
    """
    if policies is None:
        return None
    return policies.decide(subject(identity), connector, action, params, RequestContext(confidence=parse_confidence(confidence)))


def parse_confidence(header: str | None) -> float | None:
    """`X-Agent-Confidence` as a number in [0, 1]; anything else is unknown (conditions fail closed)."""
    try:
        value = float(header) if header is not None else None
    except ValueError:
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None


def credential_edits(connector: Connector, secrets: Secrets) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Step 8: (headers to drop, headers to set, query parameters to set) for the vendor's credential.

    Whatever the agent sent as auth is dropped first, then the vendor's real credential is set.
    """
    drop = list(NEVER_FORWARD)
    cred: Credential | None = connector.credential
    if cred is None:
        return drop, {}, {}
    drop += cred.strip_headers
    secret = secrets.get(cred.secret)
    if cred.header is not None:
        return drop, {cred.header: f"{cred.scheme} {secret}" if cred.scheme else secret}, {}
    assert cred.query_param is not None
    return drop, {}, {cred.query_param: secret}


def header_edits(
    fields: Iterable[tuple[bytes, bytes]], declared: Iterable[tuple[str, str]], idempotency: str | None, agent: str
) -> tuple[list[str], dict[str, str]]:
    """(headers to drop, headers to set) so that only declared agent headers leave, each matching
    its pattern; a declared header whose value does not match refuses the call (a value can carry
    anything, an e-mail address included). The idempotency key is namespaced per agent."""
    allowed = {**STANDARD_HEADERS, **{name: pattern for name, pattern in declared}}
    drop: list[str] = []
    set_: dict[str, str] = {"user-agent": USER_AGENT}
    for raw_name, raw_value in fields:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1").strip()
        if name == idempotency:
            set_[name] = "egk_" + hashlib.sha256(f"{agent}\0{value}".encode()).hexdigest()[:48]
        elif name not in allowed:
            drop.append(name)
        elif not re.fullmatch(allowed[name], value, flags=re.IGNORECASE):
            raise Refusal("schema_violation", f"header {name}: the value is not of the form the vendor takes")
    return drop, set_


def strip_query_param(query: str, name: str) -> str:
    """The raw query string without every `name=...` pair (an agent's own credential parameter)."""
    pairs = query.split("&")
    kept = [pair for pair in pairs if unquote_plus(pair.partition("=")[0]) != name]
    return query if len(kept) == len(pairs) else "&".join(kept)
