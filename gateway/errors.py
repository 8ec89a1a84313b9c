"""Every refusal the gateway can give, in one closed set, and every error it raises, in one tree.

Agents and operators match on `code`, so the set is closed and lives here alone (as httpx keeps its
whole exception tree at the top of one module). A step refuses by raising `Refusal(code, message)`;
every surface (proxy, API, sandbox host calls) turns it into the contract's JSON with `to_http`:

    {"error": {"code": ..., "message": ..., "decision_id": ..., "connector": ..., "action": ...}}

Messages name the rule and the field, never a raw value that could be PII or a secret.

The exception tree. Everything the gateway raises on purpose derives from `GatewayError`, so a
caller that must not crash (start-up, reload, a request) catches exactly that, never `ValueError`:

    GatewayError
    ├── Refusal              a call refused: a code of CODES, answered as the JSON error
    ├── ConfigError          config, connectors, policies, manifests, keys: refuse to start / reload
    │   ├── RegistryError        connectors/registry.py
    │   ├── PathSyntaxError      connectors/fieldpath.py
    │   ├── ExpressionError      gateway/policy/expr.py
    │   ├── PolicyLoadError      gateway/policy/load.py
    │   ├── ManifestError        sandbox/manifest.py
    │   ├── VaultKeyError        dlp/crypto.py
    │   └── EngineConfigError    dlp/engine.py
    ├── StoreUnavailable     a store a decision needs is down or too slow: `store_unavailable`
    │   ├── StoreFailure         gateway/pipeline/quota.py (rates and budgets)
    │   └── AuditError           gateway/audit/log.py (the log cannot be written or continued)
    ├── IntegrityError       sealed or signed data does not verify (dlp/crypto.py SealError)
    ├── ApprovalError        gateway/policy/approvals.py (unknown, used, expired, mismatched)
    ├── SandboxError         sandbox/: AbiError, CompileError, BuildError
    └── CliError             gateway/cli: a user-facing failure, one line, exit 2

Pydantic validators raise `ValueError`, as pydantic requires, and `ConfigError` is one; the
loaders turn them into `ConfigError`s with file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pydantic import ValidationError

# code -> (HTTP status, one-line meaning). The README's table of refusal codes is generated from this.
CODES: dict[str, tuple[int, str]] = {
    # 400: the request itself is malformed or does not fit the action
    "bad_request": (400, "the proxy request is malformed (bad CONNECT target, headers, framing)"),
    "malformed_body": (400, "the body could not be decoded as the action's encoding (JSON, form, query)"),
    "schema_violation": (400, "the decoded body does not fit the action's request model (an MCP tool call: its pinned input schema, or that schema cannot be checked)"),
    "mcp_malformed": (400, "the MCP request is not JSON-RPC 2.0 the gateway can check (or a tools/call without a tool name)"),
    # 401/407: who is calling
    "identity_missing": (407, "no agent token in Proxy-Authorization (nor a client certificate on listen_tls)"),
    "identity_invalid": (407, "the agent token (or client certificate) is malformed, badly signed, has wrong iss/aud, or maps to no identity"),
    "identity_expired": (407, "the agent token has expired, is not yet valid, or outlives the max TTL"),
    "identity_revoked": (407, "the agent token (its jti or its sub) has been revoked"),
    # 403: egress and authorization
    "host_denied": (403, "no connector or egress.allow entry claims this host"),
    "address_denied": (403, "the host resolves to a private, loopback, link-local, multicast or metadata address"),
    "domain_fronting": (403, "the inner Host differs from the CONNECT target"),
    "plain_http_denied": (403, "plain http to a connector host; use https"),
    "unknown_action": (403, "method and path match no action of the host's connector"),
    "scope_denied": (403, "the token's scopes do not include this connector action"),
    "policy_denied": (403, "no policy rule allows this call"),
    "param_violation": (403, "a parameter breaks a policy rule"),
    "approval_required": (403, "the call needs a human approval; retry with X-Egress-Approval"),
    "mcp_tool_changed": (403, "the MCP tool's definition differs from its pinned hash (or was never listed); an admin must accept it"),
    "mcp_session_foreign": (403, "the MCP session id was not opened through this gateway by this agent"),
    "pii_blocked": (403, "a DLP field holds personal data of a type the policy blocks (type and field named, never the value)"),
    "admin_required": (403, "the API endpoint needs an admin token"),
    "quarantined": (403, "the agent, its tenant, the connector or the whole gateway is quarantined (kill switch)"),
    "csrf_failed": (403, "a console session request lacks its X-CSRF-Token header, or it does not match the session"),
    # 413: size
    "body_too_large": (413, "the request body exceeds max_body, or its DLP fields exceed dlp.max_field_chars or dlp.max_call_chars"),
    # 429: quotas
    "rate_limited": (429, "the rule's rate limit is used up; see Retry-After"),
    "budget_exceeded": (429, "the rule's spend budget is used up; see Retry-After"),
    # 499: the agent left; nothing can be sent back, the code is for the audit record
    "client_closed": (499, "the agent closed the connection before the gateway answered"),
    # 404/409: API lookups and state changes
    "not_found": (404, "the API object does not exist (or is not the caller's)"),
    "conflict": (409, "the API object is not in a state that allows this (e.g. approval not pending)"),
    # 500: a bug; the call is refused rather than let through
    "internal_error": (500, "the gateway failed while deciding; the call was refused (fail closed)"),
    # sandbox (sandbox/): a tool run that broke its manifest's limits or could not run
    "sandbox_unknown_tool": (404, "no tool of that name is registered"),
    "sandbox_forbidden": (403, "the caller's role may not run the tool, or its manifest does not allow this host call"),
    "sandbox_hash_mismatch": (403, "the module's sha256 or the manifest's signature does not verify; refused before compiling"),
    "sandbox_fuel_exhausted": (422, "the tool used up its fuel budget (limits.fuel); the same input fails again"),
    "sandbox_memory_limit": (422, "the tool hit its memory cap (limits.memory_pages); the same input fails again"),
    "sandbox_bad_output": (502, "the tool's stdout was over limits.max_output_bytes or not a JSON object"),
    "sandbox_trap": (502, "the tool crashed (trap or non-zero exit), like a failing upstream; stderr tail attached"),
    "sandbox_timeout": (504, "the tool ran past limits.timeout_ms of wall-clock time, like an upstream timeout"),
    # 5xx: upstream and stores
    "upstream_failed": (502, "the vendor could not be reached or answered with broken HTTP"),
    "upstream_tls": (502, "the vendor's TLS certificate did not verify"),
    "circuit_open": (503, "too many recent upstream failures; the circuit is open"),
    "store_unavailable": (503, "a store the decision needs is unavailable"),
    "upstream_timeout": (504, "the vendor did not answer within the configured timeout"),
}


class GatewayError(Exception):
    """The root of everything the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """A configuration (or connector, policy, manifest, key) that cannot be used; the message says
    which key and why. At start the gateway refuses to run; on reload the last good one serves.

    Also a `ValueError`, so the pydantic validators that parse field paths and expressions report
    it as an input error with its location."""


class StoreUnavailable(GatewayError):
    """A store a decision needs (vault, quota store, audit log) failed: the call is refused."""


class IntegrityError(GatewayError):
    """Sealed or signed data did not verify: treated as absent, never as valid."""


class ApprovalError(GatewayError):
    """An approval cannot be used or changed (unknown, used, expired, or for other parameters)."""


class SandboxError(GatewayError):
    """A tool could not be built, compiled or run for a reason that is not the caller's request."""


class CliError(GatewayError):
    """A user-facing command-line failure: printed as one line, exit status 2."""


DECISION_HEADER = "X-Egress-Decision-Id"
NO_RETRY_HEADER = "X-Should-Retry"  # "false": the SDKs that read it do not retry the call


@dataclass(frozen=True)
class HttpAnswer:
    """A refusal as any HTTP surface writes it."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Refusal(GatewayError):
    """A decision to refuse the call, raised by any pipeline step.

    `headers` carries extras such as `Retry-After`; `details` carries extra JSON fields of the error
    object such as `approval_id`. `gateway_side` marks the refusal of a well-formed vendor answer
    the gateway will not relay (over a size limit, a form it does not carry): the vendor did not
    fail, so the circuit breaker does not count it (`gateway.pipeline.breaker.blames_vendor`), and
    the agent is told not to retry (`X-Should-Retry: false`, which the OpenAI and Anthropic SDKs
    honour): they retry a 5xx by default, and each retry would run the call at the vendor again
    only to be refused alike.
    """

    code: str
    message: str
    connector: str | None = None
    action: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)
    gateway_side: bool = False

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise TypeError(f"unknown refusal code {self.code!r}; add it to gateway/errors.py CODES")
        super().__init__(f"{self.code}: {self.message}")

    @property
    def status(self) -> int:
        return CODES[self.code][0]

    def body(self, decision_id: str) -> bytes:
        """The contract's JSON error body for this refusal."""
        error: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "decision_id": decision_id,
            "connector": self.connector,
            "action": self.action,
        }
        error.update(self.details)
        return json.dumps({"error": error}, separators=(",", ":")).encode()

    def to_http(self, decision_id: str, *, proxy: bool = True) -> HttpAnswer:
        """The one rendering of a refusal for every surface.

        The proxy answers identity failures 407 with `Proxy-Authenticate`; an API (`proxy=False`),
        which is not a proxy, answers them 401 with `WWW-Authenticate`.
        """
        status = self.status
        headers = {"Content-Type": "application/json", DECISION_HEADER: decision_id, **self.headers}
        if self.gateway_side:
            headers[NO_RETRY_HEADER] = "false"
        if status == 407 and proxy:
            headers["Proxy-Authenticate"] = 'Basic realm="egress-gateway"'
        elif status == 407:
            status = 401
            headers["WWW-Authenticate"] = 'Bearer realm="egress-gateway"'
        return HttpAnswer(status, headers, self.body(decision_id))


def describe(error: ValidationError, root: str = "body") -> str:
    """`field.path: what is wrong` for the first problem, and how many more there are.

    Pydantic's own messages name the constraint, never the input value, so they are safe to return.
    """
    first = error.errors()[0]
    where = ".".join(_safe_name(p) for p in first["loc"]) or root
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def _safe_name(part: object) -> str:
    """A field name as it may appear in a message: names an agent invented (an unknown key, a
    metadata key) can be anything, an e-mail address included, so those show as `?`."""
    if isinstance(part, int) or (isinstance(part, str) and _NAME.fullmatch(part)):
        return str(part)
    return "?"
