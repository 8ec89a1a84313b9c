"""The gateway's configuration: `gateway.yaml`, every key optional, flags override the file.

The keys are the contract of ../shared/DESIGN.md. Durations (`15m`, `5s`) and sizes (`1MiB`) are
parsed here once, so the rest of the code sees seconds and bytes. Unknown keys are errors: a typo in
a security setting must not be silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.model import MCP_TOOL_NAME, Credential, McpConnector, canonical_host
from dlp.config import DlpConfig
from gateway.errors import ConfigError
from gateway.policy.load import LineLoader
from gateway.secrets import check_reference
from gateway.transport import plaintext_hosts
from sandbox.manifest import Limits

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}




def parse_duration(value: Any) -> float:
    """`15m` -> 900.0; a bare number is seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"bad duration {value!r}: use e.g. 500ms, 5s, 15m, 1h")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be positive")
    return seconds


def parse_size(value: Any) -> int:
    """`1MiB` -> 1048576; a bare number is bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"bad size {value!r}: use e.g. 64KiB, 1MiB")
        size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    if size <= 0:
        raise ValueError(f"size {value!r} must be positive")
    return size


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """`127.0.0.1:8080` -> ("127.0.0.1", 8080); `[::1]:8080` for IPv6."""
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", value.strip())
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise ConfigError(f"{what}: expected HOST:PORT, got {value!r}")
    return m.group(1), int(m.group(2))


def plain_url(value: str, what: str, secret_hint: str = "") -> SplitResult:
    """`value` split, if it is a URL that parses and carries no user or password. A password in a
    URL is printed wherever the URL is (start-up lines, errors, a proxy's logs), so it is refused,
    and the messages never repeat the value; a bad port or bracket would otherwise fail later, far
    from its key. `secret_hint` says where such a secret goes instead."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{what}: a URL has no space or control character")
    try:
        u = urlsplit(value)
        u.port  # noqa: B018 - parsing the port is what raises on a bad one
    except ValueError:
        raise ValueError(f"{what}: the URL does not parse (a bad port or bracket)") from None
    if "@" in u.netloc:
        raise ValueError(f"{what}: a URL must not carry a user or password{secret_hint}")
    return u


def is_document_path(entry: str) -> bool:
    """Whether a `connectors:` entry names a declarative document's file rather than `module:object`."""
    return entry.lower().endswith((".yaml", ".yml", ".json"))


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect: Duration = 5.0
    read: Duration = 60.0
    client: Duration = 30.0  # an agent must send each whole request within this (slowloris)


class Stores(_Strict):
    rate_limits: str = "memory://"
    vault: str | None = None
    state: str | None = None
    # redis:// (no TLS) to a host other than loopback is refused unless this says it is intended
    # (`gateway.transport`); it covers dlp.vault too.
    allow_plaintext: bool = False


def _reference(setting: str, ref: str) -> str:
    """A key's reference, checked as a credential's is (`env:`, `file:`, `vault:`)."""
    try:
        check_reference(ref)
    except ValueError as e:
        raise ValueError(f"{setting}: {e}") from None
    return ref


class Keys(_Strict):
    """The CA and signing keys every replica of a fleet shares (`gateway.identity.keys`); by
    reference. None: the state dir's own, generated on first use (refused with `stores.state`)."""

    ca: str | None = None  # the CA's private key and certificate, PEM
    signing: str | None = None  # Ed25519 PKCS8 PEM: signs new tokens
    previous_signing: tuple[str, ...] = ()  # rotated-out keys: verify until their tokens expire

    @field_validator("ca", "signing")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return None if v is None else _reference("keys", v)

    @field_validator("previous_signing")
    @classmethod
    def _refs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_reference("keys.previous_signing", r) for r in v)


_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")


class Egress(_Strict):
    """Hosts let out without a connector (pass-through: identity, egress rules and audit still apply)."""

    allow: tuple[str, ...] = ()

    @field_validator("allow")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        """Each entry is compared whole with the CONNECT host, so anything but a bare name or address
        (a wildcard, a port, a scheme, a Unicode name a client sends as xn--) would never match and
        load as a silent no-op; the message names the index, never the value (it may be a URL with a
        password in it)."""
        for i, entry in enumerate(v):
            host = canonical_host(entry)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                if not _HOST_NAME.fullmatch(host):
                    raise ValueError(
                        f"egress.allow[{i}]: expected a host name or IP address such as files.example: no scheme,"
                        " port, path, wildcard or brackets (list each host; write an IDN as xn--)"
                    ) from None
        return v


class BreakerSettings(_Strict):
    """Per-upstream circuit breakers: open after `failures` consecutive failures, probe after
    `reset`. The shared circuit needs failures from `agents` distinct agents; an agent's own
    failures open a circuit for that agent alone."""

    failures: int = Field(default=5, ge=1)
    reset: Duration = 30.0
    agents: int = Field(default=2, ge=1)


class PythonSettings(_Strict):
    """Ad-hoc Python snippets: the connector actions they may call, and their limits."""

    allowed: tuple[str, ...] = ()
    limits: Limits = Limits(fuel=2_000_000_000, memory_pages=1024, timeout_ms=5000, max_output_bytes=65536, max_host_calls=10)


class SandboxSettings(_Strict):
    """`sandbox:` in gateway.yaml."""

    tools: Path | None = None  # directory of tool manifests; default: the shipped samples
    trusted_publishers: dict[str, str] = Field(default_factory=dict)  # name -> base64 Ed25519 public key
    require_signature: bool = False
    python: PythonSettings = PythonSettings()
    # The largest `POST /v1/tools` body, apart from max_body: a Python component is ~18 MB (~25 MB as
    # base64), while proxied call bodies stay bounded by max_body.
    max_tool_body: Size = 32 * 2**20


class Telemetry(_Strict):
    """`telemetry:` OpenTelemetry traces, off unless `otlp_endpoint` is set (then the SDK is loaded)."""

    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://[^/?#]+(/[^?#]*)?$")  # spaces: plain_url
    service_name: str = Field(default="egress-gateway", min_length=1, max_length=100)
    # The agent's W3C `traceparent` is continued either way; only with this true does the vendor get
    # one (the decision's span), else trace headers are stripped from what leaves.
    propagate: bool = False
    # The share of decisions traced, drawn by the gateway for each decision (never by the agent's
    # traceparent): an operator's knob for a collector's volume; every decision by default.
    sample_ratio: float = Field(default=1.0, gt=0, le=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            plain_url(v, "otlp_endpoint", "; send the collector's credentials as OTEL_EXPORTER_OTLP_HEADERS")
        return v


class AuditExport(_Strict):
    """One SIEM destination of `audit.export`: every decision as an OCSF event (JSON line)."""

    kind: Literal["ocsf"] = "ocsf"
    to: str = Field(pattern=r"^(file:|syslog:|https://)")  # file:PATH, syslog:HOST:PORT (UDP), https://URL
    queue: int = Field(default=10_000, ge=1, le=1_000_000)  # events waiting; a full queue drops, never blocks

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        if v.startswith("https://"):
            plain_url(v, "to")
        return v


class AuditSettings(_Strict):
    export: tuple[AuditExport, ...] = ()



class AnomalyRule(_Strict):
    """One graduated response: exactly one condition (`when: SIGNAL`, `rate_above_baseline: 10x`,
    `deny_ratio_above: 0.5`) and what to do when it holds."""

    when: Literal["new_action_or_host", "new_connector", "off_hours"] | None = None
    rate_above_baseline: Annotated[float | None, BeforeValidator(lambda v: parse_factor(v))] = None
    deny_ratio_above: float | None = Field(default=None, gt=0, lt=1)
    then: Literal["record", "approval", "quarantine"]

    @model_validator(mode="after")
    def _one_condition(self) -> AnomalyRule:
        if sum(x is not None for x in (self.when, self.rate_above_baseline, self.deny_ratio_above)) != 1:
            raise ValueError("a rule has exactly one of when, rate_above_baseline, deny_ratio_above")
        return self

    @property
    def condition(self) -> str:
        if self.when is not None:
            return self.when
        return "rate_above_baseline" if self.rate_above_baseline is not None else "deny_ratio_above"


class AnomalySettings(_Strict):
    """`anomaly:` per-agent behaviour baselines, learned for `observe_for`, then each call scored."""

    observe_for: Duration = 7 * 86400.0
    key: Literal["sub", "role"] = "sub"  # whose behaviour is one baseline: each agent, or each role
    window: Duration = 60.0  # the recent rate and deny ratio are measured over this
    min_calls: int = Field(default=10, ge=1)  # a deny ratio needs this many calls in the window
    working_hours: str | None = Field(default=None, pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$")  # UTC; off_hours outside
    max_agents: int = Field(default=10_000, ge=1)  # baselines kept (least recently seen forgotten first)
    max_items: int = Field(default=256, ge=1)  # connectors, actions, hosts, shapes kept per agent, each
    rules: tuple[AnomalyRule, ...] = ()


def parse_factor(value: Any) -> float | None:
    """`10x` -> 10.0 (a bare number too); more than 1."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*x?\s*", str(value))
    if not m or float(m.group(1)) <= 1:
        raise ValueError(f"bad factor {value!r}: use e.g. 10x (more than 1)")
    return float(m.group(1))


# Asymmetric JWS algorithms only: an issuer's key set holds public keys, and a symmetric (HS*) or
# `none` algorithm would let anyone holding the public key sign.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
SPIFFE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")  # JWT-SVID spec
PRIVILEGED_ROLES = ("admin", "metrics")
_TEMPLATE_VAR = re.compile(r"^\{(sub|role|tenant)\}$")
_SPIFFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def file_ref(value: str, what: str) -> Path:
    """`file:PATH` -> PATH: key material and bundles are named by reference, never inlined."""
    if not value.startswith("file:") or not value[5:]:
        raise ValueError(f"{what}: expected file:PATH, got {value!r}")
    return Path(value[5:]).expanduser()


class SpiffeMap(_Strict):
    """A SPIFFE ID's path read as the gateway's sub, role and tenant: `{sub}`, `{role}`, `{tenant}`
    are whole path segments; what the path does not hold is fixed here (`tenant: acme`)."""

    path: str
    sub: str | None = None
    role: str | None = None
    tenant: str | None = None
    scopes: tuple[str, ...] = ()  # every identity of the issuer gets these: its ceiling

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        segments = v.split("/")
        if segments[0] != "" or len(segments) < 2:
            raise ValueError(f"path {v!r} must start with / (e.g. /agent/{{role}}/{{sub}})")
        names = [m.group(1) for seg in segments[1:] if (m := _TEMPLATE_VAR.match(seg))]
        bad = [seg for seg in segments[1:] if not _TEMPLATE_VAR.match(seg) and not _SPIFFE_SEGMENT.match(seg)]
        if bad or len(names) != len(set(names)):
            raise ValueError(f"path {v!r}: segments are literal SPIFFE path segments or one of {{sub}}, {{role}}, {{tenant}}, each once")
        return v

    def variables(self) -> set[str]:
        return {m.group(1) for seg in self.path.split("/")[1:] if (m := _TEMPLATE_VAR.match(seg))}


class OidcMap(_Strict):
    """Dotted claim paths into the token (`claims.` is an optional explicit root: `claims.org` is the
    `org` claim); a value starting with `=` is fixed (`tenant: "=acme"`). `scopes` is a claim path
    (a list, or a space-separated string as OAuth's `scope`) or a fixed list."""

    sub: str = "sub"
    role: str
    tenant: str | None = None
    scopes: str | tuple[str, ...] = ()
    scope_ceiling: tuple[str, ...] | None = None  # scopes from a claim are narrowed to these


class _Issuer(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")  # prefixes its subjects: `spire:01`
    audience: str = Field(min_length=1)  # required: a token for another service is not ours
    # Roles `admin` and `metrics` reach the API's operator endpoints: never from an issuer unless listed.
    privileged_roles: tuple[Literal["admin", "metrics"], ...] = ()

    @field_validator("algorithms", check_fields=False)
    @classmethod
    def _algorithms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = sorted(set(v) - set(ASYMMETRIC_ALGORITHMS))
        if bad or not v:
            raise ValueError(f"algorithms {bad or '[]'} refused: pin one or more of {', '.join(ASYMMETRIC_ALGORITHMS)}")
        return v


class SpiffeIssuer(_Issuer):
    """SPIFFE JWT-SVIDs (and, on `listen_tls`, X.509-SVIDs) of one trust domain."""

    kind: Literal["spiffe"]
    trust_domain: str = Field(pattern=r"^[a-z0-9._-]+$")
    bundle: str  # file:PATH of the trust domain's JWKS (SPIFFE bundle), re-read when it changes
    algorithms: tuple[str, ...] = SPIFFE_ALGORITHMS
    map: SpiffeMap

    @field_validator("bundle")
    @classmethod
    def _bundle(cls, v: str) -> str:
        file_ref(v, "bundle")
        return v

    @field_validator("map")
    @classmethod
    def _map(cls, v: SpiffeMap) -> SpiffeMap:
        names = v.variables()
        for field_name in ("sub", "role", "tenant"):
            fixed = getattr(v, field_name) is not None
            if fixed and field_name in names:
                raise ValueError(f"map.{field_name} is both fixed and in the path")
            if field_name != "tenant" and not fixed and field_name not in names:
                raise ValueError(f"map.{field_name}: put {{{field_name}}} in the path or fix it")
        return v


class OidcIssuer(_Issuer):
    """OIDC JWTs of one issuer (`iss`), with its JWKS from a file or a URL."""

    kind: Literal["oidc"]
    issuer: str = Field(min_length=1)
    jwks: str  # file:PATH, or http://LOOPBACK/… or https://…
    algorithms: tuple[str, ...]
    map: OidcMap
    jwks_refresh: Duration = 300.0  # fetch a URL's key set again after this
    jwks_min_interval: Duration = 10.0  # no more than one fetch per this, however many unknown `kid`s arrive
    jwks_max_age: Duration = 3600.0  # keys not re-fetched within this are no longer trusted

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        if v == "egress-gateway":
            raise ValueError("issuer 'egress-gateway' is the gateway's own tokens")
        return v

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, v: str) -> str:
        if v.startswith("file:"):
            file_ref(v, "jwks")
            return v
        u = plain_url(v, "jwks")
        if not u.hostname or u.scheme not in ("http", "https"):
            raise ValueError("jwks: expected file:PATH or an http(s) URL")
        elif u.scheme == "http" and u.hostname not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"jwks: plain http only on loopback; use https for {u.hostname}")
        return v


IssuerSettings = Annotated[SpiffeIssuer | OidcIssuer, Field(discriminator="kind")]


class IdentitySettings(_Strict):
    """`identity:` in gateway.yaml: issuers trusted besides the gateway's own tokens."""

    issuers: tuple[IssuerSettings, ...] = ()

    @field_validator("issuers")
    @classmethod
    def _unique(cls, v: tuple[SpiffeIssuer | OidcIssuer, ...]) -> tuple[SpiffeIssuer | OidcIssuer, ...]:
        for what, values in (
            ("name", [i.name for i in v]),
            ("trust_domain", [i.trust_domain for i in v if isinstance(i, SpiffeIssuer)]),
            ("issuer", [i.issuer for i in v if isinstance(i, OidcIssuer)]),
        ):
            dupes = sorted({x for x in values if values.count(x) > 1})
            if dupes:
                raise ValueError(f"two issuers share the {what} {', '.join(dupes)}")
        return v


class ListenTls(_Strict):
    """`listen_tls:`: the proxy on TLS, where an agent's X.509-SVID (verified against `client_ca`)
    is its identity, mapped by the spiffe issuer of its trust domain."""

    address: str
    cert: str  # file:PATH, the listener's certificate chain
    key: str  # file:PATH
    client_ca: str  # file:PATH, the bundle agents' certificates must chain to
    max_cert_ttl: Duration = 86400.0  # the longest client certificate lifetime accepted
    # The one trust domain whose X.509-SVIDs `client_ca` holds (default: the only spiffe issuer's).
    # One only: with several trust domains' CAs in one bundle, a CA of one could sign SPIFFE IDs of
    # another, which X.509-SVID validation (chain to *that* trust domain's bundle) forbids.
    trust_domain: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_hostport(v, "listen_tls.address")
        return v

    @field_validator("cert", "key", "client_ca")
    @classmethod
    def _files(cls, v: str) -> str:
        file_ref(v, "listen_tls")
        return v


class AttestSettings(_Strict):
    """`attest:`: artifact name (`policies`, `connector:MODULE`, `dlp:...`, `tool:NAME`; see
    gateway/attest.py) -> the `sha256:HEX` it must have, or the gateway refuses to start."""

    pin: dict[str, str] = Field(default_factory=dict)

    @field_validator("pin")
    @classmethod
    def _pins(cls, v: dict[str, str]) -> dict[str, str]:
        for name, digest in v.items():
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                raise ValueError(f"attest.pin.{name}: expected sha256: and 64 lower-case hex digits, as `egress-gateway status` prints")
        return v



_PIN = re.compile(r"sha256:[0-9a-f]{64}")


class McpServer(_Strict):
    """One of `mcp_servers:`: an MCP server reached through the gateway as a connector of its own
    name, whose actions are its tools."""

    url: str  # https://HOST/PATH: the host is claimed, the path is the MCP endpoint
    credential: str | None = None  # env:NAME, file:PATH or vault:..., sent as Authorization: Bearer <value>
    pin: dict[str, str] = Field(default_factory=dict)  # tool -> "sha256:<hex>" of its definition
    max_pinned_tools: int = Field(5000, ge=1, le=1_000_000)  # tool names pinned for this server; new ones past it are hidden

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = plain_url(v, "url", "; a server's credential goes in credential:")
        if u.scheme != "https" or not u.hostname or u.port not in (None, 443) or not u.path.startswith("/") or u.query:
            raise ValueError("expected https://HOST/PATH (port 443, no query)")
        return v

    @field_validator("credential")
    @classmethod
    def _credential(cls, v: str | None) -> str | None:
        if v is not None:
            check_reference(v)
        return v

    @field_validator("pin")
    @classmethod
    def _pin(cls, v: dict[str, str]) -> dict[str, str]:
        for tool, digest in v.items():
            if not MCP_TOOL_NAME.fullmatch(tool):
                raise ValueError(f"{tool!r} is not an MCP tool name ([A-Za-z0-9_.-], at most 128)")
            if not _PIN.fullmatch(digest):
                raise ValueError(f"{tool}: expected sha256:<64 lowercase hex>, as `egress-gateway mcp pins` prints")
        return v

    def connector(self, name: str) -> McpConnector:
        u = urlsplit(self.url)
        credential = Credential(secret=mcp_secret(name)) if self.credential else None
        return McpConnector(
            name=name,
            hosts=(u.hostname or "",),
            actions=(),
            credential=credential,
            description=f"MCP server {self.url}",
            headers=MCP_HEADERS,
            endpoint=u.path,
            pins=tuple(sorted(self.pin.items())),
            max_pinned_tools=self.max_pinned_tools,
        )


def mcp_secret(server: str) -> str:
    """The name an MCP server's credential is looked up under, next to `secrets:` entries."""
    return f"mcp:{server}"


# The agent headers Streamable HTTP needs, each held to its form: the Accept that servers require
# (JSON or an event stream), the session, the protocol version, and a stream's resumption point.
MCP_HEADERS: tuple[tuple[str, str], ...] = (
    ("accept", r"[a-z*]+/[a-z*.+-]+( *, *[a-z*]+/[a-z*.+-]+){0,3}"),
    ("mcp-session-id", r"[\x21-\x7e]{1,128}"),
    ("mcp-protocol-version", r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    ("last-event-id", r"[A-Za-z0-9_.:/-]{1,128}"),
)


class ConsoleSettings(_Strict):
    """`console:` in gateway.yaml: the operator console's sessions and live streams.

    A session carries the admin token it was made from: it never outlives that token's `exp` (nor
    `session_ttl`) and ends with its revocation. Sessions and streams are bounded so a flood of
    sign-ins or open feeds costs a fixed amount of memory."""

    session_ttl: Duration = 8 * 3600.0
    max_sessions: int = Field(default=200, ge=1)  # every admin together; a new sign-in past it is 429
    sessions_per_admin: int = Field(default=5, ge=1)  # one admin's oldest session ends for its newest
    max_streams: int = Field(default=32, ge=1)  # open `GET /v1/decisions/stream` feeds, all callers
    stream_queue: int = Field(default=500, ge=1)  # records held for one slow feed; past it they are counted as lost
    secure_cookie: Literal["auto", "always"] = "auto"  # auto: Secure when the request came over https


class Config(_Strict):
    listen: str = "127.0.0.1:8080"
    api_listen: str = "127.0.0.1:8081"
    state_dir: Path = Path("~/.egress-gateway")
    policies: Path | None = None
    max_token_ttl: Duration = 1800.0
    metrics_token_ttl: Duration = 90 * 86400.0  # role `metrics`: a scraper's credential, /metrics only
    approval_ttl: Duration = 900.0
    log_format: Literal["plain", "json"] = "plain"  # the access log on stderr (or --log-format)
    approvals_webhook: str | None = Field(default=None, pattern=r"^https?://")  # Slack-compatible, new approvals
    approval_max_pending: int = Field(default=10, ge=1)  # per agent: a flood cannot pile them up
    token_leeway: Duration = 10.0
    upstreams: dict[str, str] = Field(default_factory=dict)
    upstream_ca: Path | None = None
    secrets: dict[str, str] = Field(default_factory=dict)
    # vault: references: how often they are re-read, and how long a cached value may serve when the
    # store cannot be read (then calls needing it are refused); see gateway/secrets.py.
    secrets_refresh: Duration = 30.0
    secrets_max_stale: Duration = 120.0
    # VAULT_ADDR over http:// to a host other than loopback is refused unless this says it is intended.
    secrets_allow_plaintext: bool = False
    stores: Stores = Stores()
    keys: Keys = Keys()
    max_body: Size = 2**20  # requests; the gateway refuses larger ones with 413 body_too_large
    max_response_body: Size = 64 * 2**20  # vendor responses (embeddings batches exceed 1 MiB)
    timeouts: Timeouts = Timeouts()
    egress: Egress = Egress()
    breaker: BreakerSettings = BreakerSettings()
    # Extra connectors: `module:object`, a declarative document's file (.yaml, .yml, .json), or
    # the document itself as a mapping (connectors/declarative.py).
    connectors: tuple[str | dict[str, Any], ...] = ()
    # The secrets a connector registered through `POST /v1/connectors` may present, each with the
    # only hosts it may be presented to: an API token must never be able to send a key elsewhere.
    connector_secrets: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    dlp: DlpConfig = DlpConfig()
    sandbox: SandboxSettings = SandboxSettings()
    telemetry: Telemetry = Telemetry()
    audit: AuditSettings = AuditSettings()
    anomaly: AnomalySettings | None = None  # off unless configured
    identity: IdentitySettings = IdentitySettings()
    listen_tls: ListenTls | None = None
    attest: AttestSettings = AttestSettings()
    mcp_servers: dict[str, McpServer] = Field(default_factory=dict)
    workers: int = Field(default=1, ge=1, le=64)  # processes serving the same two ports (or --workers)
    drain_timeout: Duration = 30.0  # on SIGTERM, how long open calls may take to finish
    replica: str = Field(default_factory=lambda: os.uname().nodename, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    console: ConsoleSettings = ConsoleSettings()

    @field_validator("listen", "api_listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        parse_hostport(v, "listen")
        return v

    @model_validator(mode="after")
    def _listen_tls_maps(self) -> Config:
        if self.listen_tls is None:
            return self
        domains = [i.trust_domain for i in self.identity.issuers if isinstance(i, SpiffeIssuer)]
        if not domains:
            raise ValueError("listen_tls: client certificates are mapped by a spiffe issuer; configure one in identity.issuers")
        wanted = self.listen_tls.trust_domain
        if wanted is None and len(domains) > 1:
            raise ValueError(f"listen_tls.trust_domain: name the one of {', '.join(domains)} whose CA client_ca holds")
        if wanted is not None and wanted not in domains:
            raise ValueError(f"listen_tls.trust_domain {wanted}: no spiffe issuer has it")
        return self

    @property
    def listen_trust_domain(self) -> str | None:
        """The trust domain of the client certificates `listen_tls` accepts, if it is on."""
        if self.listen_tls is None:
            return None
        domains = [i.trust_domain for i in self.identity.issuers if isinstance(i, SpiffeIssuer)]
        return self.listen_tls.trust_domain or domains[0]

    @field_validator("approvals_webhook")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is not None:
            plain_url(v, "approvals_webhook")
        return v

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, v: dict[str, str]) -> dict[str, str]:
        for host, target in v.items():
            u = plain_url(target, f"upstreams.{host}")
            if u.scheme != "https" or not u.hostname or u.path not in ("", "/"):
                raise ValueError(f"upstreams.{host}: expected https://HOST[:PORT]")
        return {canonical_host(h): t for h, t in v.items()}

    @field_validator("connector_secrets")
    @classmethod
    def _connector_secrets(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return {name: tuple(canonical_host(h) for h in hosts) for name, hosts in v.items()}

    @model_validator(mode="after")
    def _offered_secrets_exist(self) -> Config:
        missing = sorted(set(self.connector_secrets) - set(self.secrets))
        if missing:
            raise ValueError(f"connector_secrets.{missing[0]}: not in secrets: (offer only a configured secret)")
        return self

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: dict[str, str]) -> dict[str, str]:
        for name, ref in v.items():
            try:
                check_reference(ref)
            except ValueError as e:
                raise ValueError(f"secrets.{name}: {e}") from None
        return v

    @model_validator(mode="after")
    def _staleness(self) -> Config:
        if self.secrets_max_stale < self.secrets_refresh:
            raise ValueError(
                f"secrets_max_stale ({self.secrets_max_stale:g}s) must be at least secrets_refresh ({self.secrets_refresh:g}s):"
                " a value would expire between two reads"
            )
        return self

    def check_secrets(self, credentials: Iterable[str]) -> None:
        """A `secrets:` entry no connector's credential uses is a typo (`strpe:`) that leaves the
        real connector without its key, or a leftover: either way, refuse to start."""
        known = set(credentials) | set(self.connector_secrets)
        unknown = sorted(set(self.secrets) - known)
        if unknown:
            names = ", ".join(f"secrets.{n}" for n in unknown)
            raise ConfigError(f"{names}: no connector uses this credential (connectors' credentials: {', '.join(sorted(known)) or 'none'})")

    @model_validator(mode="after")
    def _redis_in_clear(self) -> Config:
        """State, counters and DLP tokens in clear over the network can be read and changed on the
        way (`gateway.transport`); the message names the host, never the URI (it may hold a password)."""
        if self.stores.allow_plaintext:
            return self
        for setting, uri in (("stores.state", self.stores.state), ("stores.rate_limits", self.stores.rate_limits),
                             ("dlp.vault", self.dlp.vault)):
            hosts = plaintext_hosts(uri or "")
            if hosts:
                raise ValueError(
                    f"{setting}: plain redis:// to {hosts[0]} (not loopback) sends the gateway's state in clear over the network;"
                    " use rediss:// (TLS), a loopback address, or set stores.allow_plaintext: true if that is intended"
                )
        return self

    @model_validator(mode="after")
    def _shared_limits(self) -> Config:
        """Counters in a worker's memory would give every agent N times each rate and budget."""
        if self.workers > 1 and self.stores.rate_limits.startswith("memory:"):
            raise ValueError(
                f"workers: {self.workers} with stores.rate_limits {self.stores.rate_limits} would count every "
                f"rate and budget in each worker ({self.workers}x the limits); set stores.rate_limits: "
                "redis://HOST:PORT, or run one worker"
            )
        return self

    @model_validator(mode="after")
    def _one_tls_listener(self) -> Config:
        """Workers share the proxy and API sockets the supervisor binds; `listen_tls` is not one."""
        if self.workers > 1 and self.listen_tls is not None:
            raise ValueError(f"workers: {self.workers} with listen_tls is not supported yet: run the mTLS listener with one worker")
        return self

    @field_validator("mcp_servers")
    @classmethod
    def _mcp_servers(cls, v: dict[str, McpServer]) -> dict[str, McpServer]:
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
                raise ValueError(f"mcp_servers.{name}: use lowercase letters, digits, _ and - (it names a connector)")
        return v

    def module_connectors(self) -> list[str]:
        """The `connectors:` entries that are `module:object` references (not declarative documents)."""
        return [e for e in self.connectors if isinstance(e, str) and not is_document_path(e)]

    def mcp_connectors(self) -> list[McpConnector]:
        return [server.connector(name) for name, server in sorted(self.mcp_servers.items())]

    @property
    def secret_refs(self) -> dict[str, str]:
        """Every credential reference: `secrets:` and each MCP server's `credential`."""
        mcp = {mcp_secret(name): s.credential for name, s in self.mcp_servers.items() if s.credential}
        return {**self.secrets, **mcp}

    @property
    def state_path(self) -> Path:
        return self.state_dir.expanduser()

    def upstream_address(self, host: str) -> tuple[str, int] | None:
        """Where `upstreams:` routes `host` on purpose, or None for normal DNS."""
        target = self.upstreams.get(canonical_host(host))
        if target is None:
            return None
        u = urlsplit(target)
        return u.hostname or "", u.port or 443


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read `path` (None: embedded defaults only) and apply flag overrides (None values ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        try:
            loaded = yaml.load(text, Loader=LineLoader)  # a SafeLoader that refuses a duplicate key
        except yaml.MarkedYAMLError as e:  # one line, as policy files report theirs: file:line: the problem
            mark = e.problem_mark or e.context_mark
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
        base = Path(path).resolve().parent
        for section, key in ((data, "policies"), (data, "upstream_ca"), (data.get("sandbox"), "tools")):
            if isinstance(section, dict) and isinstance(section.get(key), str):
                if not os.path.isabs(os.path.expanduser(section[key])):
                    section[key] = str(base / section[key])
        if isinstance(data.get("connectors"), list):  # a document's file, like the keys above
            data["connectors"] = [
                str(base / c) if isinstance(c, str) and is_document_path(c) and not os.path.isabs(os.path.expanduser(c))
                else c
                for c in data["connectors"]
            ]
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"bad configuration: {problems}") from None
