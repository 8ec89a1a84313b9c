"""What a connector is: mostly data.

A connector names the hosts it claims, how the vendor credential is presented, and its actions.
An action is a method, a path template, a pydantic model of its request, the body encoding, and the
fields DLP must look at. Everything the pipeline does to a call is driven by these values; a
connector carries no request-handling code of its own.
"""

from __future__ import annotations

import functools
import re
import types
import unicodedata
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from connectors import fieldpath


def canonical_host(name: str) -> str:
    """A host name as the gateway compares it: lower case, without the root's trailing dot.

    Every comparison of host names (claims, routes, the CONNECT target against Host and SNI, the
    egress allowlist, `upstreams:`) goes through this one function, so `API.Stripe.com.` can never
    pass one check as a different name than another check saw."""
    return name.lower().rstrip(".")


class BodyEncoding(str, Enum):
    """How an action's parameters travel."""

    JSON = "json"  # application/json body
    FORM = "form"  # Stripe-style x-www-form-urlencoded with metadata[account] keys
    QUERY = "query"  # query string only (GET)


class UnknownFields(str, Enum):
    """What happens to body fields an action's request model does not declare.

    `refuse` (the default): a `schema_violation`, so nothing the connector's author did not foresee
    leaves. `pass_scanned`: top-level fields the model does not name are forwarded as sent, and
    every value in them (strings, numbers read as text, objects and lists to any depth) is scanned
    by DLP like a declared DLP field; for vendors whose APIs grow faster than a schema can follow.
    """

    REFUSE = "refuse"
    PASS_SCANNED = "pass_scanned"


@dataclass(frozen=True)
class Credential:
    """How the vendor key, looked up under `secret` in the config's `secrets:`, is presented.

    Either a header (`Authorization: Bearer <key>`) or a query parameter (SerpAPI's `api_key`).
    `strip_headers` lists every header an agent might use to send a key of its own; they are removed
    before the call leaves, whatever the agent put there.
    """

    secret: str
    header: str | None = "Authorization"
    scheme: str | None = "Bearer"
    query_param: str | None = None
    strip_headers: tuple[str, ...] = ("authorization",)

    def __post_init__(self) -> None:
        if (self.header is None) == (self.query_param is None):
            raise ValueError(f"credential {self.secret!r}: set exactly one of header or query_param")


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Action:
    """One vendor operation an agent may call.

    `request` validates the decoded body (or query for GET); `None` means the action takes no
    parameters and any sent are a schema violation. `dlp_fields` are field paths (see
    `connectors.fieldpath`) whose strings DLP scans before the call leaves; `detokenize_response`
    marks actions whose responses may carry tokens back to the agent; `unknown_fields` says whether
    body fields the model does not declare are refused or passed and scanned (`UnknownFields`).

    The request model (and every model inside it) must say what it does with unknown fields
    (`extra="forbid"` or `"allow"`): pydantic's default, `ignore`, would drop them from what the
    policy and DLP see while the agent's own bytes still leave.
    """

    name: str
    method: str
    path: str
    request: type[BaseModel] | None = None
    encoding: BodyEncoding = BodyEncoding.JSON
    dlp_fields: tuple[str, ...] = ()
    detokenize_response: bool = False
    unknown_fields: UnknownFields = UnknownFields.REFUSE

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"action {self.name!r}: path template must start with '/'")
        object.__setattr__(self, "method", self.method.upper())
        for p in self.dlp_fields:
            fieldpath.parse(p)
        try:
            object.__setattr__(self, "unknown_fields", UnknownFields(self.unknown_fields))
        except ValueError:
            choices = ", ".join(u.value for u in UnknownFields)
            raise ValueError(f"action {self.name!r}: unknown_fields must be one of {choices}") from None
        if self.request is None:
            if self.unknown_fields is UnknownFields.PASS_SCANNED:
                raise ValueError(f"action {self.name!r}: unknown_fields pass_scanned needs a request model")
            return
        if ignoring := _ignores_extra(self.request, set()):
            raise ValueError(
                f"action {self.name!r}: request model {ignoring} ignores unknown fields (pydantic's default); "
                'set model_config = ConfigDict(extra="forbid") and choose unknown_fields on the action'
            )

    @cached_property
    def declared_fields(self) -> frozenset[str]:
        """The top-level body keys the request model names (field names and aliases), each also
        in its NFKC case-folded form."""
        names: set[str] = set()
        for name, f in (self.request.model_fields.items() if self.request else ()):
            names.update(n for n in (name, f.alias, f.validation_alias) if isinstance(n, str))
        return frozenset(names | {fold_key(n) for n in names})

    def unknown_keys(self, params: dict[str, Any]) -> list[str]:
        """The top-level keys of `params` the request model does not declare. A key that reads as a
        declared one once normalised (`Receipt_Email`) is not unknown: the model refuses it."""
        return [k for k in params if k not in self.declared_fields and fold_key(k) not in self.declared_fields]

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """The path template as a full-match regex; `{id}` matches one non-empty path segment."""
        out, pos = "", 0
        for m in _PARAM.finditer(self.path):
            out += re.escape(self.path[pos : m.start()]) + f"(?P<{m.group(1)}>[^/]+)"
            pos = m.end()
        return re.compile(out + re.escape(self.path[pos:]))

    @property
    def route(self) -> tuple[str, str]:
        """(method, path template with parameter names erased): two actions with equal routes clash."""
        return self.method, _PARAM.sub("{}", self.path)

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters if this action serves `method path`, else None."""
        if method.upper() != self.method:
            return None
        m = self.pattern.fullmatch(path)
        return m.groupdict() if m else None


def fold_key(name: str) -> str:
    """A key as a vendor that normalises keys might read it (NFKC, case folded)."""
    return unicodedata.normalize("NFKC", name).casefold()


def _ignores_extra(tp: Any, seen: set[type]) -> str | None:
    """The name of the first pydantic model reachable from `tp` that ignores unknown fields."""
    if get_origin(tp) in (Annotated, Union, types.UnionType) or get_args(tp):
        return next((found for arg in get_args(tp) if (found := _ignores_extra(arg, seen))), None)
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)) or tp in seen:
        return None
    seen.add(tp)
    if tp.model_config.get("extra", "ignore") == "ignore":
        return tp.__name__
    return next((found for f in tp.model_fields.values() if (found := _ignores_extra(f.annotation, seen))), None)


@dataclass(frozen=True)
class Connector:
    """A vendor: the hosts it claims, its credential and its actions."""

    name: str
    hosts: tuple[str, ...]
    actions: tuple[Action, ...]
    credential: Credential | None = None
    description: str = ""
    # The agent headers this vendor takes, each with the pattern its value must match (the
    # standard content headers are taken for every connector; anything else is never forwarded).
    headers: tuple[tuple[str, str], ...] = ()
    # A header whose value the vendor deduplicates on, across everyone sharing the account: it is
    # namespaced per agent, so one agent's key can never replay another agent's response.
    idempotency_header: str | None = None
    _by_name: dict[str, Action] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", self.name):
            raise ValueError(f"connector name {self.name!r}: use lowercase letters, digits, _ and -")
        object.__setattr__(self, "hosts", tuple(canonical_host(h) for h in self.hosts))
        by_name: dict[str, Action] = {}
        routes: dict[tuple[str, str], str] = {}
        for a in self.actions:
            if a.name in by_name:
                raise ValueError(f"connector {self.name!r}: action {a.name!r} defined twice")
            if a.route in routes:
                raise ValueError(
                    f"connector {self.name!r}: actions {routes[a.route]!r} and {a.name!r} "
                    f"both serve {a.method} {a.path}"
                )
            by_name[a.name] = a
            routes[a.route] = a.name
        object.__setattr__(self, "_by_name", by_name)

    def action(self, name: str) -> Action | None:
        return self._by_name.get(name)

    def route(self, method: str, path: str) -> tuple[Action, dict[str, str]] | None:
        """The action serving `method path` (path without query) and its path parameters."""
        for a in self.actions:
            params = a.match(method, path)
            if params is not None:
                return a, params
        return None


# An MCP tool's name as the gateway takes it (the MCP spec's `[A-Za-z0-9_.-]{1,128}`). Names are
# compared exactly, never case-folded: `Create_Refund` is another tool than `create_refund`.
MCP_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# Requests an MCP server may send its client; a policy allows one by naming it as an action.
MCP_SERVER_REQUESTS = ("sampling/createMessage", "elicitation/create", "roots/list")
# The action of an MCP request that calls no tool (initialize, tools/list, ping, notifications,
# GET streams, DELETE): parentheses are in no tool name, so no policy rule can name it by accident.
MCP_PROTOCOL = "(protocol)"


class ToolArguments(BaseModel):
    """An MCP tool's arguments: any JSON object. The tool's input schema is the server's, known
    only when listed, so policies may name any path in it (`amount`, `customer.email`)."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class McpConnector(Connector):
    """An MCP server (config `mcp_servers:`): its host is claimed, `endpoint` is its one path, and
    its actions are its tools, known by name only until the server lists them.

    `pins` are the tool-definition hashes the config fixes; when given, they also bound which tool
    names policies may name (a typo in a policy is then caught at load). Without them any name of a
    tool's form is accepted at load, and a tool is callable only once the server has listed it.
    `max_pinned_tools` bounds the names the gateway pins for it (a hostile server listing new names
    on every call would otherwise grow the pins and the audit log forever); past it, new names are
    hidden and not callable.
    """

    endpoint: str = "/"
    pins: tuple[tuple[str, str], ...] = ()
    max_pinned_tools: int = 5000

    def action(self, name: str) -> Action | None:
        if name in MCP_SERVER_REQUESTS:
            return self._action(name)
        if not MCP_TOOL_NAME.fullmatch(name) or (self.pins and name not in dict(self.pins)):
            return None
        return self._action(name)

    def protocol(self) -> Action:
        """The action of the protocol messages (no tool called)."""
        return self._action(MCP_PROTOCOL)

    def _action(self, name: str) -> Action:
        return _mcp_action(self.endpoint, name)


@functools.lru_cache(maxsize=1024)
def _mcp_action(endpoint: str, name: str) -> Action:
    """A tool's action, made once per name (frozen, so shared): making one checks its model, which
    was a tenth of a tool call's routing. Bounded: names come from agents."""
    return Action(name, "POST", endpoint, ToolArguments, BodyEncoding.JSON, detokenize_response=True)
