"""The gateway's configuration: `gateway.yaml`, every key optional, flags override the file.

The keys are the contract of ../shared/DESIGN.md. Durations (`15m`, `5s`) and sizes (`1MiB`) are
parsed here once, so the rest of the code sees seconds and bytes. Unknown keys are errors: a typo in
a security setting must not be silently ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.model import canonical_host
from dlp.config import DlpConfig
from gateway.errors import ConfigError
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


class Egress(_Strict):
    """Hosts let out without a connector (pass-through: identity, egress rules and audit still apply)."""

    allow: tuple[str, ...] = ()


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

    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    service_name: str = Field(default="egress-gateway", min_length=1, max_length=100)
    # The agent's W3C `traceparent` is continued either way; only with this true does the vendor get
    # one (the decision's span), else trace headers are stripped from what leaves.
    propagate: bool = False
    # The share of decisions traced, drawn by the gateway for each decision (never by the agent's
    # traceparent): an operator's knob for a collector's volume; every decision by default.
    sample_ratio: float = Field(default=1.0, gt=0, le=1)


class AuditExport(_Strict):
    """One SIEM destination of `audit.export`: every decision as an OCSF event (JSON line)."""

    kind: Literal["ocsf"] = "ocsf"
    to: str = Field(pattern=r"^(file:|syslog:|https://)")  # file:PATH, syslog:HOST:PORT (UDP), https://URL
    queue: int = Field(default=10_000, ge=1, le=1_000_000)  # events waiting; a full queue drops, never blocks


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
    stores: Stores = Stores()
    max_body: Size = 2**20  # requests; the gateway refuses larger ones with 413 body_too_large
    max_response_body: Size = 64 * 2**20  # vendor responses (embeddings batches exceed 1 MiB)
    timeouts: Timeouts = Timeouts()
    egress: Egress = Egress()
    breaker: BreakerSettings = BreakerSettings()
    connectors: tuple[str, ...] = ()  # extra connectors as `module:object`
    dlp: DlpConfig = DlpConfig()
    sandbox: SandboxSettings = SandboxSettings()
    telemetry: Telemetry = Telemetry()
    audit: AuditSettings = AuditSettings()
    anomaly: AnomalySettings | None = None  # off unless configured

    @field_validator("listen", "api_listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        parse_hostport(v, "listen")
        return v

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, v: dict[str, str]) -> dict[str, str]:
        for host, target in v.items():
            u = urlsplit(target)
            if u.scheme != "https" or not u.hostname or u.path not in ("", "/"):
                raise ValueError(f"upstreams.{host}: expected https://HOST[:PORT], got {target!r}")
        return {canonical_host(h): t for h, t in v.items()}

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: dict[str, str]) -> dict[str, str]:
        for name, ref in v.items():
            if not ref.startswith(("env:", "file:")):
                raise ValueError(f"secrets.{name}: expected env:NAME or file:PATH (never the key itself)")
        return v

    def check_secrets(self, credentials: Iterable[str]) -> None:
        """A `secrets:` entry no connector's credential uses is a typo (`strpe:`) that leaves the
        real connector without its key, or a leftover: either way, refuse to start."""
        known = set(credentials)
        unknown = sorted(set(self.secrets) - known)
        if unknown:
            names = ", ".join(f"secrets.{n}" for n in unknown)
            raise ConfigError(f"{names}: no connector uses this credential (connectors' credentials: {', '.join(sorted(known)) or 'none'})")

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
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
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
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"bad configuration: {problems}") from None
