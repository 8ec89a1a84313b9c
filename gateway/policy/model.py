"""The policy file format (`policies/*.yaml`), as pydantic models.

Every model forbids unknown fields: a misspelt key (`param:` for `params:`, `maxx:`) would
otherwise silently drop a constraint, which fails open. Regexes, approval expressions, rate strings
and time zones are compiled while the file loads, so a bad one is a load error, never a request-time
surprise.

Extensions to the format of DESIGN.md (all optional):
- rule `name`: a stable name used in messages, audit records and quota counters (default: `file#index`
  in messages, and counters keyed by what the rule counts; see `gateway.policy.counters`);
- rule `fail_open: true`: if the quota store is unavailable, let this rule's calls through instead of
  refusing with `store_unavailable`. Only allowed when every action of the rule is a read (HTTP
  GET); the loader checks this against the connector. Payments never fail open;
- file `timezone` (IANA name, default `UTC`): the zone of `hour`, `minute` and `weekday` in
  approval conditions;
- file `sandbox: {python_snippets: true}`: the file's subjects may run ad-hoc Python snippets in
  the WASM sandbox (`POST /v1/sandbox/run {"python": ...}`); `false` forbids them whatever other
  files say. The sandbox is no connector, so rules cannot name it.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from limits import RateLimitItem, parse_many
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, field_validator, model_validator

from connectors import fieldpath
from dlp.config import BUILTIN_ENTITIES
from gateway.policy.expr import Expression, ExpressionError, compile_expression

Mode = Literal["enforce", "shadow"]
Scalar = str | int | float | bool



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamRule(_Strict):
    """Constraints on the value(s) at one field path; with a wildcard path, every value must pass.

    `max`/`min` take numbers (Stripe amounts are integers in the minor unit); `one_of` a list of
    allowed values; `regex` must match the whole string; `max_length` bounds a string or list;
    `required` means the path must be present (not null); `forbidden` means it must be absent.
    NaN and infinities are refused: every comparison with NaN is false, so `max: .nan` would pass
    any amount.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max: int | float | None = None
    min: int | float | None = None
    one_of: list[Scalar] | None = Field(default=None, min_length=1)
    regex: str | None = None
    max_length: int | None = Field(default=None, ge=0)
    required: bool = False
    forbidden: bool = False
    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"bad regex: {e}") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ParamRule:
        constraints = [self.max, self.min, self.one_of, self.regex, self.max_length]
        if self.forbidden and (self.required or any(c is not None for c in constraints)):
            raise ValueError("forbidden cannot be combined with other constraints")
        if not self.forbidden and not self.required and all(c is None for c in constraints):
            raise ValueError("no constraint given")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        if self.regex is not None:
            self._pattern = re.compile(self.regex)
        return self

    @property
    def pattern(self) -> re.Pattern[str] | None:
        return self._pattern


class Budget(_Strict):
    """A cap on the sum of a numeric request field (e.g. `amount`) per window, per agent and rule."""

    field: str
    limit: int = Field(gt=0)
    per: Literal["minute", "hour", "day", "month"]

    @field_validator("field")
    @classmethod
    def _path(cls, v: str) -> str:
        fieldpath.parse(v)
        return v

    @field_validator("limit", mode="before")
    @classmethod
    def _not_a_boolean(cls, v: Any) -> Any:
        # pydantic reads `true` (or YAML's `yes`) as 1: a budget of one cent, refusing nearly every call.
        if isinstance(v, bool):
            raise ValueError("limit must be a number, not a boolean")
        return v


class Rule(_Strict):
    """Allows `actions` of `connector` for the file's subjects, under the rule's constraints."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    connector: str
    actions: list[str] = Field(min_length=1)
    params: dict[str, ParamRule] = Field(default_factory=dict)
    approval: str | None = None
    rate: str | None = None
    budget: Budget | None = None
    mode: Mode | None = None
    fail_open: bool = False
    _approval: Expression | None = PrivateAttr(default=None)
    _rates: tuple[RateLimitItem, ...] = PrivateAttr(default=())

    @field_validator("params")
    @classmethod
    def _paths(cls, v: dict[str, ParamRule]) -> dict[str, ParamRule]:
        for path in v:
            fieldpath.parse(path)
        return v

    @field_validator("approval")
    @classmethod
    def _expression(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                compile_expression(v)
            except ExpressionError as e:
                raise ValueError(f"bad approval expression: {e}") from None
        return v

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                items = parse_many(v)
            except ValueError:
                raise ValueError(f"bad rate {v!r}; use the limits notation, e.g. 20/minute") from None
            if any(item.amount <= 0 for item in items):
                # It would refuse every call (`rate_limited`): a deny that reads as a limit.
                raise ValueError(f"rate {v!r} allows no call at all; to refuse these actions, remove the rule")
            windows = [(item.multiples, item.GRANULARITY.name) for item in items]
            if len(set(windows)) != len(windows):
                # One counter per window (`gateway.policy.counters`): two limits on it would both count each call.
                raise ValueError(f"rate {v!r} limits one window twice; keep the smaller limit")
        return v

    def model_post_init(self, context: Any, /) -> None:
        if self.approval is not None:
            self._approval = compile_expression(self.approval)
        if self.rate is not None:
            self._rates = tuple(parse_many(self.rate))

    @property
    def approval_expr(self) -> Expression | None:
        return self._approval

    @property
    def rate_items(self) -> tuple[RateLimitItem, ...]:
        return self._rates


class Subjects(_Strict):
    """Who the file applies to: any listed role, or any listed sub (at least one list non-empty)."""

    roles: list[str] = Field(default_factory=list)
    sub: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> Subjects:
        if not self.roles and not self.sub:
            raise ValueError("subjects needs roles and/or sub")
        return self


class DlpRules(_Strict):
    """What happens to each entity type found in outbound fields, and which this subject may see
    restored.

    Per type, one action: `tokenize` (a vault token leaves), `block` (the call is refused with
    `pii_blocked`), `mask` (an irreversible `****1111` leaves), or `allow` (the value leaves as
    is; stated so a reader sees it was meant). A type named nowhere is allowed too. Types are
    checked against those DLP knows, so a typo (`EMAIL_ADRESS`) fails the load instead of turning
    DLP off for that type; a custom recognizer's type is configured in the config's `dlp:`.
    """

    tokenize: list[str] = Field(default_factory=list)
    block: list[str] = Field(default_factory=list)
    mask: list[str] = Field(default_factory=list)
    allow: list[str] = Field(default_factory=list)
    reveal: list[str] = Field(default_factory=list)

    @field_validator("tokenize", "block", "mask", "allow", "reveal")
    @classmethod
    def _entities(cls, v: list[str]) -> list[str]:
        for e in v:
            if e not in BUILTIN_ENTITIES:
                raise ValueError(f"{e!r} is not an entity type DLP knows (one of {', '.join(BUILTIN_ENTITIES)})")
        return v

    @property
    def scanned(self) -> list[str]:
        """Every type this file asks DLP to look for."""
        return self.tokenize + self.block + self.mask

    @model_validator(mode="after")
    def _one_action_per_type(self) -> DlpRules:
        seen: dict[str, str] = {}
        for action in ("tokenize", "block", "mask", "allow"):
            for e in getattr(self, action):
                if seen.setdefault(e, action) != action:
                    raise ValueError(f"{e} is in both {seen[e]} and {action}; give each type one action")
        return self


class SandboxGrants(_Strict):
    """What the file's subjects may do in the WASM sandbox besides running registered tools (whose
    manifests name the roles that may run them).

    `python_snippets`: ad-hoc Python source an agent sends, which no one reviewed; `true` grants
    it, `false` forbids it even where another file grants it (deny-overrides), unset says nothing.
    Strict: `"yes"` or `1` is a load error, not a grant.
    """

    python_snippets: StrictBool | None = None


class PolicyFile(_Strict):
    """One `policies/*.yaml` file."""

    version: Literal[1]
    tenant: str | None = None
    subjects: Subjects
    mode: Mode = "enforce"
    timezone: str = "UTC"
    rules: list[Rule] = Field(default_factory=list)
    dlp: DlpRules | None = None
    sandbox: SandboxGrants | None = None
    _zone: ZoneInfo = PrivateAttr()

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r}") from None
        return v

    def model_post_init(self, context: Any, /) -> None:
        self._zone = ZoneInfo(self.timezone)

    @property
    def zone(self) -> ZoneInfo:
        return self._zone
