"""Declarative connectors: a connector written as data (JSON or YAML) instead of Python.

A document says what a Python connector says (name, hosts, credential, agent headers, actions with
their method, path template, body encoding, typed fields, DLP fields and unknown-field handling),
and `compile_document` turns it into the same frozen `Connector` and `Action` objects the built-ins
are, with a pydantic request model made by `create_model` (`extra="forbid"` at every level). From
there on the pipeline cannot tell the two apart: the same routing, path-id checks, decoding,
validation, policy, DLP and credential steps run.

The format is strict on purpose: unknown keys, wrong types (`"5"` for a number), a constraint that
does not fit the field's type, a DLP field that is not declared, a regex pydantic cannot run in
linear time, nesting past `MAX_DEPTH` are all errors, each reported with its JSON path
(`actions[0].fields.amount.max`) so the author can find it. Field names travel as aliases of
generated Python names, so a vendor field may be called `json`, `schema` or `from`.

This module only reads values; where documents come from (the config, `POST /v1/connectors`, the
state dir) is `gateway.connector_admin`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic_core import SchemaError

from connectors import fieldpath
from connectors.model import Action, BodyEncoding, Connector, Credential, UnknownFields, fold_key
from gateway.errors import ConfigError

MAX_DEPTH = 5  # levels of objects, arrays and maps below an action's top-level fields
MAX_FIELDS = 200  # fields of one object
MAX_TOTAL_FIELDS = 1000  # fields of the whole document, at every depth: compiling costs ~1 ms each
MAX_ACTIONS = 100
MAX_HOSTS = 16
MAX_PATTERN = 500

Loc = tuple[str | int, ...]
_NAME = r"^[a-z][a-z0-9_-]{0,63}$"
_ACTION = r"^[a-z][a-z0-9_]{0,63}$"
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_HEADER = r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"  # compared in lower case
_SCHEME = r"^[A-Za-z][A-Za-z0-9-]{0,31}$"
_QUERY_PARAM = r"^[A-Za-z0-9_.-]{1,64}$"
# A DNS name of two labels or more; no port, no wildcard, no IP literal (a vendor API has a name,
# and its certificate is checked against it).
_HOST = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_SEGMENT = re.compile(r"\{([a-z_][a-z0-9_]{0,63})\}|([A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127})")


class DocumentError(ConfigError):
    """A document that is not a valid declarative connector; `problems` are (JSON path, reason)."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{where(loc)}: {reason}" for loc, reason in problems))

    def first(self) -> str:
        """The first problem as one line, and how many more there are (for an API answer)."""
        (loc, reason), more = self.problems[0], len(self.problems) - 1
        return f"{where(loc)}: {reason}" + (f" (and {more} more)" if more else "")


def where(loc: Loc) -> str:
    """A location as a JSON path: ('actions', 0, 'fields', 'amount') -> actions[0].fields.amount."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if fieldpath.is_name(part) else "?"  # a key the author mistyped can be anything
            out += f".{name}" if out else name
    return out or "document"


def _host(name: str) -> str:
    if len(name) > 253 or not _HOST.fullmatch(name):
        raise ValueError("a DNS name such as api.vendor.com: lower case, no port, IP address or wildcard")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


FieldType = Literal["string", "integer", "number", "boolean", "object", "array", "map"]
# Which keys each field type takes beyond `type`, `required`, `dlp` and `description`.
_TAKES: dict[str, frozenset[str]] = {
    "string": frozenset({"min_length", "max_length", "pattern", "enum"}),
    "integer": frozenset({"min", "max"}),
    "number": frozenset({"min", "max"}),
    "boolean": frozenset(),
    "object": frozenset({"fields"}),
    "array": frozenset({"items", "min_items", "max_items"}),
    "map": frozenset({"values", "max_entries"}),
}
_COMMON = frozenset({"type", "required", "dlp", "description"})


class FieldSpec(_Strict):
    """One field: its type, whether it must be sent, whether DLP scans it, and its constraints."""

    type: FieldType
    required: bool = False
    dlp: bool = False
    description: str = Field(default="", max_length=500)
    min_length: int | None = Field(default=None, ge=0, le=1_000_000)
    max_length: int | None = Field(default=None, ge=1, le=1_000_000)
    pattern: str | None = Field(default=None, min_length=1, max_length=MAX_PATTERN)
    enum: list[Annotated[str, Field(max_length=200)]] | None = Field(default=None, min_length=1, max_length=100)
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)
    fields: dict[str, FieldSpec] | None = Field(default=None, max_length=MAX_FIELDS)
    items: FieldSpec | None = None
    min_items: int | None = Field(default=None, ge=0, le=100_000)
    max_items: int | None = Field(default=None, ge=1, le=100_000)
    values: FieldSpec | None = None
    max_entries: int | None = Field(default=None, ge=1, le=10_000)


class CredentialSpec(_Strict):
    """The vendor key (the config's `secrets:` entry named `secret`): a header or a query parameter."""

    secret: str = Field(pattern=_NAME)
    header: str | None = Field(default=None, pattern=_HEADER)
    scheme: str | None = Field(default=None, pattern=_SCHEME)
    query_param: str | None = Field(default=None, pattern=_QUERY_PARAM)
    strip_headers: list[Annotated[str, Field(pattern=_HEADER)]] = Field(default_factory=list, max_length=32)


class ActionSpec(_Strict):
    name: str = Field(pattern=_ACTION)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(min_length=1, max_length=512)
    encoding: Literal["json", "form", "query"] = "json"
    description: str = Field(default="", max_length=500)
    fields: dict[str, FieldSpec] = Field(default_factory=dict, max_length=MAX_FIELDS)
    unknown_fields: Literal["refuse", "pass_scanned"] = "refuse"
    detokenize_response: bool = False


class ConnectorDocument(_Strict):
    """The whole document (`POST /v1/connectors`, a file or a mapping in the config's `connectors:`)."""

    name: str = Field(pattern=_NAME)
    description: str = Field(default="", max_length=500)
    hosts: list[Annotated[str, AfterValidator(_host)]] = Field(min_length=1, max_length=MAX_HOSTS)
    credential: CredentialSpec | None = None
    headers: dict[Annotated[str, Field(pattern=_HEADER)], Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=dict, max_length=16
    )
    idempotency_header: str | None = Field(default=None, pattern=_HEADER)
    actions: list[ActionSpec] = Field(min_length=1, max_length=MAX_ACTIONS)


def parse(data: Any) -> Connector:
    """A decoded document (a dict from JSON or YAML) -> the compiled `Connector`, or `DocumentError`."""
    if not isinstance(data, dict):
        raise DocumentError([((), "a connector document must be an object (name, hosts, actions, ...)")])
    try:
        doc = ConnectorDocument.model_validate(data)
    except ValidationError as e:
        raise DocumentError([(tuple(err["loc"]), _message(err)) for err in e.errors()]) from None
    return compile_document(doc)


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key missing"
    return str(err["msg"]).removeprefix("Value error, ")


def compile_document(doc: ConnectorDocument) -> Connector:
    """The checked document as the same frozen objects a Python connector is made of."""
    problems = list(_problems(doc))
    if problems:
        raise DocumentError(problems)
    actions = tuple(_action(doc.name, i, a) for i, a in enumerate(doc.actions))
    try:
        return Connector(
            name=doc.name,
            description=doc.description,
            hosts=tuple(doc.hosts),
            credential=_credential(doc.credential) if doc.credential else None,
            headers=tuple(sorted((name.lower(), pattern) for name, pattern in doc.headers.items())),
            idempotency_header=doc.idempotency_header.lower() if doc.idempotency_header else None,
            actions=actions,
        )
    except ValueError as e:  # two actions on one route: the model's own check, with its message
        raise DocumentError([(("actions",), str(e))]) from None


def _credential(spec: CredentialSpec) -> Credential:
    return Credential(
        secret=spec.secret, header=spec.header, scheme=spec.scheme if spec.header else None,
        query_param=spec.query_param, strip_headers=tuple(sorted(_stripped(spec))),
    )


def _stripped(spec: CredentialSpec | None) -> set[str]:
    """Whatever header carries the key is stripped from the agent's request, as is Authorization."""
    if spec is None:
        return set()
    return {"authorization", *(h.lower() for h in [*spec.strip_headers, *([spec.header] if spec.header else [])])}


def _action(connector: str, index: int, spec: ActionSpec) -> Action:
    request = None
    if spec.fields or spec.unknown_fields == "pass_scanned":
        request = _model(f"{connector}.{spec.name}", spec.fields, ("actions", index, "fields"))
    try:
        return Action(
            name=spec.name, method=spec.method, path=spec.path, request=request,
            encoding=BodyEncoding(spec.encoding), dlp_fields=tuple(_dlp_paths(spec.fields, "")),
            detokenize_response=spec.detokenize_response, unknown_fields=UnknownFields(spec.unknown_fields),
        )
    except ValueError as e:
        raise DocumentError([(("actions", index), str(e))]) from None


_MODEL_CONFIG = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=False, validate_by_alias=True)


def _model(name: str, fields: dict[str, FieldSpec], loc: Loc) -> type[BaseModel]:
    """A pydantic model of `fields`; every field under a generated Python name, its own as alias."""
    definitions: dict[str, Any] = {}
    for i, (key, spec) in enumerate(fields.items()):
        tp = _type(f"{name}.{key}", spec, (*loc, key))
        default = ... if spec.required else None
        definitions[f"f{i}"] = (tp if spec.required else tp | None, Field(default, alias=key))
    try:
        return create_model(name.replace(".", "_").replace("-", "_"), __config__=_MODEL_CONFIG, **definitions)
    except (SchemaError, TypeError, ValueError) as e:  # already checked; a pydantic surprise stays a 400
        raise DocumentError([(loc, f"pydantic cannot build this model: {e}")]) from None


def _type(name: str, spec: FieldSpec, loc: Loc) -> Any:
    """The annotation of one field, constraints as pydantic `Field` metadata."""
    if spec.type == "string":
        if spec.enum is not None:
            return Literal[tuple(spec.enum)]
        return Annotated[str, Field(min_length=spec.min_length, max_length=spec.max_length, pattern=spec.pattern)]
    if spec.type == "integer":
        return Annotated[int, Field(ge=_whole(spec.min), le=_whole(spec.max))]
    if spec.type == "number":
        return Annotated[float, Field(ge=spec.min, le=spec.max, allow_inf_nan=False)]
    if spec.type == "boolean":
        return bool
    if spec.type == "object":
        return _model(name, spec.fields or {}, (*loc, "fields"))
    if spec.type == "array":
        assert spec.items is not None
        items = _type(f"{name}.items", spec.items, (*loc, "items"))
        return Annotated[list[items], Field(min_length=spec.min_items, max_length=spec.max_items)]  # type: ignore[valid-type]
    assert spec.values is not None
    values = _type(f"{name}.values", spec.values, (*loc, "values"))
    return Annotated[dict[str, values], Field(max_length=spec.max_entries)]  # type: ignore[valid-type]


def _whole(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def _dlp_paths(fields: dict[str, FieldSpec], prefix: str) -> Iterator[str]:
    """The field paths (`connectors.fieldpath`) of every field marked `dlp: true`, at any depth."""
    for key, spec in fields.items():
        path = f"{prefix}.{key}" if prefix else key
        if spec.dlp:
            yield path
        yield from _nested_dlp_paths(spec, path)


def _nested_dlp_paths(spec: FieldSpec, path: str) -> Iterator[str]:
    if spec.type == "object":
        yield from _dlp_paths(spec.fields or {}, path)
    elif spec.type == "array" and spec.items is not None:
        if spec.items.dlp:
            yield f"{path}[*]"
        yield from _nested_dlp_paths(spec.items, f"{path}[*]")
    elif spec.type == "map" and spec.values is not None:
        if spec.values.dlp:
            yield f"{path}.*"
        yield from _nested_dlp_paths(spec.values, f"{path}.*")


# --- checks the field-by-field model cannot make ---------------------------------------------


def _problems(doc: ConnectorDocument) -> Iterator[tuple[Loc, str]]:
    total = sum(_count(spec) for action in doc.actions for spec in action.fields.values())
    if total > MAX_TOTAL_FIELDS:
        yield ("actions",), f"declares {total} fields in all; at most {MAX_TOTAL_FIELDS}"
        return
    yield from _check_hosts(doc.hosts)
    if doc.credential is not None:
        yield from _check_credential(doc.credential)
    stripped = _stripped(doc.credential)
    for header, pattern in doc.headers.items():
        if header.lower() in stripped:
            yield ("headers", header), "the credential step strips this header; it cannot also be taken from agents"
        yield from ((("headers", header), reason) for reason in _header_pattern_problems(pattern))
    if doc.idempotency_header is not None and doc.idempotency_header.lower() in stripped:
        yield ("idempotency_header",), "the credential step strips this header"
    for i, action in enumerate(doc.actions):
        yield from _check_action(action, ("actions", i))


def _count(spec: FieldSpec) -> int:
    below = [*(spec.fields or {}).values(), *(s for s in (spec.items, spec.values) if s is not None)]
    return 1 + sum(_count(s) for s in below)


def _check_hosts(hosts: list[str]) -> Iterator[tuple[Loc, str]]:
    seen: set[str] = set()
    for i, host in enumerate(hosts):
        if host in seen:
            yield ("hosts", i), "host listed twice"
        seen.add(host)


def _check_credential(spec: CredentialSpec) -> Iterator[tuple[Loc, str]]:
    if (spec.header is None) == (spec.query_param is None):
        yield ("credential",), "set exactly one of header (with an optional scheme, e.g. Bearer) or query_param"
    if spec.scheme is not None and spec.header is None:
        yield ("credential", "scheme"), "a scheme prefixes a header's value; it needs header"


def _check_action(spec: ActionSpec, loc: Loc) -> Iterator[tuple[Loc, str]]:
    yield from _check_path(spec.path, (*loc, "path"))
    if spec.method == "GET" and spec.encoding != "query":
        yield (*loc, "encoding"), "a GET takes its parameters in the query string: use encoding query"
    yield from _check_fields(spec.fields, (*loc, "fields"), 1)


def _check_path(path: str, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """`/v1/things/{id}/confirm`: literal segments and whole-segment `{name}` parameters only, as
    the built-ins write them; the pipeline holds every parameter's value to an id's form."""
    if not path.startswith("/"):
        yield loc, "a path template starts with /"
        return
    names: list[str] = []
    for segment in path[1:].split("/"):
        m = _SEGMENT.fullmatch(segment)
        if m is None or segment in (".", ".."):
            yield loc, (
                "each segment is a literal (letters, digits, . _ ~ -) or a whole {name} parameter; "
                "no empty, dot or mixed segments"
            )
            return
        if m.group(1):
            names.append(m.group(1))
    if len(names) != len(set(names)):
        yield loc, "a path parameter is named twice"


def _check_fields(fields: dict[str, FieldSpec], loc: Loc, depth: int) -> Iterator[tuple[Loc, str]]:
    folded: dict[str, str] = {}
    for key, spec in fields.items():
        here = (*loc, key)
        if not _FIELD.fullmatch(key):
            yield here, "a field name is a letter, then letters, digits, _ or - (at most 64)"
        elif (other := folded.setdefault(fold_key(key), key)) != key:
            yield here, f"reads as field {other!r} once case is folded (agents could send either)"
        yield from _check_field(spec, here, depth)


def _check_field(spec: FieldSpec, loc: Loc, depth: int) -> Iterator[tuple[Loc, str]]:
    given = {k for k in spec.model_fields_set if getattr(spec, k) is not None} - _COMMON
    for key in sorted(given - _TAKES[spec.type]):
        yield (*loc, key), f"does not apply to a field of type {spec.type}"
    if spec.type in ("object", "array", "map") and depth >= MAX_DEPTH:
        yield loc, f"nests deeper than {MAX_DEPTH} levels"
        return
    for low, high in (("min_length", "max_length"), ("min", "max"), ("min_items", "max_items")):
        lo, hi = getattr(spec, low), getattr(spec, high)
        if lo is not None and hi is not None and lo > hi:
            yield (*loc, low), f"is greater than {high}"
    if spec.type == "integer" and any(v is not None and not v.is_integer() for v in (spec.min, spec.max)):
        yield loc, "an integer field's min and max are whole numbers"
    if spec.pattern is not None and spec.type == "string":
        yield from (((*loc, "pattern"), r) for r in _field_pattern_problems(spec.pattern))
    if spec.enum is not None and len(set(spec.enum)) != len(spec.enum):
        yield (*loc, "enum"), "a value is listed twice"
    if spec.type == "object":
        if spec.fields is None:
            yield loc, "an object field lists its fields (fields: {...})"
        else:
            yield from _check_fields(spec.fields, (*loc, "fields"), depth + 1)
    for key in ("items", "values"):
        wanted = {"array": "items", "map": "values"}.get(spec.type)
        child = getattr(spec, key)
        if wanted == key and child is None:
            yield loc, f"an {spec.type} field says what its {key} are ({key}: {{type: ...}})"
        elif wanted == key:
            if child.required:
                yield (*loc, key, "required"), f"applies to fields, not to {key}"
            yield from _check_field(child, (*loc, key), depth + 1)


def _field_pattern_problems(pattern: str) -> list[str]:
    """A field's pattern must be one pydantic runs (its Rust engine: linear time, no look-around
    or back-references), so an agent's value can never make a check backtrack for seconds."""
    try:
        TypeAdapter(Annotated[str, Field(pattern=pattern)])
    except (SchemaError, ValueError) as e:
        return [f"not a regular expression pydantic can run: {str(e).splitlines()[-1].strip()}"]
    return []


_QUANTIFIED_GROUP = re.compile(r"[*+}?]\)[*+{]")


def _header_pattern_problems(pattern: str) -> list[str]:
    """A header pattern is run by Python's `re` on the agent's value: besides being one pydantic
    could run (see above), a quantified group holding a quantifier (`(a+)+`) is refused, the shape
    that makes a backtracking engine take exponential time."""
    found = _field_pattern_problems(pattern)
    try:
        re.compile(pattern)
    except re.error as e:
        return [f"not a regular expression: {e}"]
    if _QUANTIFIED_GROUP.search(re.sub(r"\\.|\[[^\]]*\]", "x", pattern)):
        found.append("a repeated group that itself repeats (like (a+)+) can take exponential time; write it flat")
    return found

