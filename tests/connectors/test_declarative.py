"""The declarative connector format: what a document compiles to, and how a bad one is refused.

Compiled connectors are driven through the pipeline's own step functions (`validate`, the DLP field
selection), the same code a built-in's calls go through; the API and proxy suites
(tests/api/test_connectors_api.py) drive them through a real gateway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors import fieldpath
from connectors.declarative import MAX_DEPTH, DocumentError, parse
from connectors.model import BodyEncoding, UnknownFields
from gateway.config import Config
from gateway.config import load as load_config
from gateway.connector_admin import ConnectorAdmin, build_registry, config_connectors, read_document
from gateway.connector_store import ConnectorStore
from gateway.errors import ConfigError, Refusal
from gateway.pipeline.dlp import scanned_fields
from gateway.pipeline.steps import validate
from tests.connectors.acme import ACME_HOST, document


def refusal(action: Any, body: bytes, query: str = "") -> Refusal:
    with pytest.raises(Refusal) as e:
        validate(action, body, query)
    return e.value


def test_a_document_compiles_to_the_connector_a_python_author_would_write() -> None:
    acme = parse(document())
    assert (acme.name, acme.hosts, acme.description) == ("acme", (ACME_HOST,), "Acme CRM")
    assert acme.credential is not None
    assert (acme.credential.secret, acme.credential.header, acme.credential.scheme) == ("acme", "Authorization", "Bearer")
    assert acme.credential.strip_headers == ("authorization", "x-acme-account")
    assert acme.headers == (("acme-version", "[0-9]{4}-[0-9]{2}-[0-9]{2}"),)
    assert acme.idempotency_header == "idempotency-key"
    create, update, get = acme.actions
    assert (create.method, create.path, create.encoding, create.unknown_fields) == (
        "POST", "/v1/contacts", BodyEncoding.JSON, UnknownFields.REFUSE)
    assert create.dlp_fields == ("email", "address.city", "metadata")
    assert create.detokenize_response and not get.detokenize_response
    assert (update.encoding, update.unknown_fields) == (BodyEncoding.FORM, UnknownFields.PASS_SCANNED)
    assert get.request is None and get.encoding is BodyEncoding.QUERY
    assert acme.route("POST", "/v1/contacts/c_123") is not None and acme.route("DELETE", "/v1/contacts") is None
    assert all(fieldpath.parse(p) for p in create.dlp_fields)


def test_the_compiled_request_model_validates_like_a_built_in() -> None:
    create = parse(document()).actions[0]
    body = {"email": "jane@example.com", "plan": "pro", "seats": 3, "score": 0.5, "vip": True, "code": "ABC-1234",
            "address": {"city": "Lyon"}, "tags": ["a"], "metadata": {"k": "v"}, "json": "x"}
    assert validate(create, json.dumps(body).encode(), "") == body  # field names as sent, `json` included
    cases: list[tuple[dict[str, Any], str]] = [
        ({"plan": "gold"}, "plan"), ({"seats": 0}, "seats"), ({"score": 2}, "score"),
        ({"code": "abc-1234"}, "code"), ({"address": {"city": "x", "zip": "1"}}, "address.zip"),
        ({"tags": ["a"] * 6}, "tags"), ({"metadata": {str(i): "v" for i in range(11)}}, "metadata"),
        ({"email": "e" * 255}, "email"), ({"nickname": "x"}, "nickname"),
    ]
    for bad, where in cases:
        r = refusal(create, json.dumps({"email": "jane@example.com", **bad}).encode())
        assert r.code == "schema_violation" and r.message.startswith(where), (bad, r.message)
    r = refusal(create, b'{"plan": "free"}')
    assert r.code == "schema_violation" and r.message.startswith("email: Field required")


def test_form_encoding_and_pass_scanned_reach_dlp_as_for_a_built_in() -> None:
    update = parse(document()).actions[1]
    params = validate(update, b"note=hello&extra[nested]=jane%40example.com", "")
    assert params == {"note": "hello", "extra": {"nested": "jane@example.com"}}
    assert set(scanned_fields(update, params)) == {"note", "extra"}
    assert refusal(update, b"_path=x").code == "schema_violation"


def test_query_actions_take_no_body_and_a_parameterless_action_takes_nothing() -> None:
    get = parse(document()).actions[2]
    assert validate(get, b"", "") == {}
    assert refusal(get, b"", "q=1").code == "schema_violation"
    assert refusal(get, b"{}", "").code == "malformed_body"


def _action(**fields: Any) -> dict[str, Any]:
    return {"name": "a", "method": "POST", "path": "/v1/a", "fields": fields}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nmae": "acme"}, "nmae: unknown key"),
        ({"name": None}, "name: required key missing"),
        ({"name": "Acme!"}, "name: String should match pattern"),
        ({"hosts": ["127.0.0.1"]}, "hosts[0]: a DNS name") ,
        ({"hosts": ["api.acme.test:443"]}, "hosts[0]: a DNS name"),
        ({"hosts": ["*.acme.test"]}, "hosts[0]: a DNS name"),
        ({"hosts": ["api.acme.test", "api.acme.test"]}, "hosts[1]: host listed twice"),
        ({"credential": {"secret": "acme"}}, "credential: set exactly one of header"),
        ({"credential": {"secret": "acme", "query_param": "k", "scheme": "Bearer"}}, "credential.scheme: a scheme prefixes"),
        ({"headers": {"authorization": "x"}}, "headers.authorization: the credential step strips this header"),
        ({"headers": {"x-v": "(a+)+"}}, "headers.x-v: a repeated group that itself repeats"),
        ({"actions": []}, "actions: List should have at least 1 item"),
        ({"actions": [_action() | {"method": "TRACE"}]}, "actions[0].method: Input should be"),
        ({"actions": [_action() | {"path": "v1/a"}]}, "actions[0].path: a path template starts with /"),
        ({"actions": [_action() | {"path": "/v1/%2e%2e/a"}]}, "actions[0].path: each segment is a literal"),
        ({"actions": [_action() | {"path": "/v1/{id}.json"}]}, "actions[0].path: each segment is a literal"),
        ({"actions": [_action() | {"path": "/v1/{id}/{id}"}]}, "actions[0].path: a path parameter is named twice"),
        ({"actions": [_action() | {"method": "GET"}]}, "actions[0].encoding: a GET takes its parameters in the query"),
        ({"actions": [_action(), _action() | {"name": "b"}]}, "actions: connector 'acme': actions 'a' and 'b' both serve"),
        ({"actions": [_action(n={"type": "integer", "max_length": 3})]}, "actions[0].fields.n.max_length: does not apply"),
        ({"actions": [_action(n={"type": "integer", "min": "1"})]}, "actions[0].fields.n.min: Input should be a valid number"),
        ({"actions": [_action(n={"type": "integer", "min": 1.5})]}, "actions[0].fields.n: an integer field's min and max"),
        ({"actions": [_action(n={"type": "string", "min_length": 5, "max_length": 2})]}, "actions[0].fields.n.min_length: is greater"),
        ({"actions": [_action(n={"type": "string", "pattern": "(?<=a)b"})]}, "actions[0].fields.n.pattern: not a regular expression"),
        ({"actions": [_action(n={"type": "string", "enum": ["a", "a"]})]}, "actions[0].fields.n.enum: a value is listed twice"),
        ({"actions": [_action(n={"type": "strin"})]}, "actions[0].fields.n.type: Input should be 'string'"),
        ({"actions": [_action(n={"type": "array"})]}, "actions[0].fields.n: an array field says what its items are"),
        ({"actions": [_action(n={"type": "object"})]}, "actions[0].fields.n: an object field lists its fields"),
        ({"actions": [_action(Email={"type": "string"}, email={"type": "string"})]}, "actions[0].fields.email: reads as field 'Email'"),
        ({"actions": [_action(_path={"type": "string"})]}, "actions[0].fields._path: a field name is a letter"),
        ({"actions": [_action(n={"type": "array", "items": {"type": "string", "required": True}})]},
         "actions[0].fields.n.items.required: applies to fields"),
    ],
)
def test_a_bad_document_names_the_field_and_the_reason(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DocumentError) as e:
        parse(document(**changes))
    assert e.value.first().startswith(message), e.value.first()


def test_nesting_is_bounded() -> None:
    spec: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_DEPTH):
        spec = {"type": "object", "fields": {"x": spec}}
    with pytest.raises(DocumentError) as e:
        parse(document(actions=[_action(top=spec)]))
    assert "nests deeper than 5 levels" in e.value.first()
    assert parse(document(actions=[_action(top=spec["fields"]["x"])])).actions[0].request is not None


def test_a_file_with_a_mistake_names_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(
        "name: acme\nhosts: [api.acme.test]\nactions:\n  - name: create\n    method: POST\n"
        "    path: /v1/x\n    fields:\n      amount: {type: integer, max: 10, maximum: 5}\n"
    )
    with pytest.raises(ConfigError) as e:
        read_document(path)
    assert str(e.value) == f"{path}:8: actions[0].fields.amount.maximum: unknown key"
    path.write_text(json.dumps(document()))  # JSON is read by the same loader
    assert read_document(path).name == "acme"


def test_an_inline_config_entry_names_its_index_and_field() -> None:
    with pytest.raises(ConfigError) as e:
        config_connectors(2, document(credential={"secret": "acme"}))
    assert str(e.value) == "connectors[2].credential: set exactly one of header (with an optional scheme, e.g. Bearer) or query_param"
    assert [c.name for c in config_connectors(0, document())] == ["acme"]
    assert [c.name for c in config_connectors(1, "tests.connectors.weather:CONNECTOR")] == ["weather"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["name", "hosts", "actions", "credential", "fields", "type", "method", "path", "items", "x"]), inner, max_size=5),
    max_leaves=30,
)


@given(JSON)
def test_any_json_is_a_document_or_a_document_error(data: Any) -> None:
    """Never a TypeError or a pydantic exception escaping: whatever arrives, a located reason."""
    with pytest.raises(DocumentError) as e:
        parse(data)
    assert e.value.problems and all(reason for _, reason in e.value.problems)


def test_connector_secrets_must_name_a_configured_secret(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text("connector_secrets: {acme: [api.acme.test]}\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "gateway.yaml")
    assert "connector_secrets.acme: not in secrets:" in str(e.value)
    cfg = Config.model_validate({"secrets": {"acme": "env:X"}, "connector_secrets": {"acme": ["API.Acme.Test."]}})
    assert cfg.connector_secrets == {"acme": ("api.acme.test",)}
    cfg.check_secrets([])  # offered to registered connectors: not an unused secret


def test_registering_never_takes_an_egress_allow_host_and_a_store_failure_registers_nothing(tmp_path: Path) -> None:
    cfg = Config.model_validate({"egress": {"allow": ["API.acme.test"]}, "secrets": {"acme": "env:X"},
                                 "connector_secrets": {"acme": [ACME_HOST]}})
    store = ConnectorStore(tmp_path / "connectors.sqlite")
    admin = ConnectorAdmin(cfg, build_registry(cfg, store), store, None)
    with pytest.raises(Refusal) as e:
        admin.register(document(), "ops")
    assert (e.value.code, e.value.message) == ("conflict", "hosts[0]: api.acme.test is an egress.allow pass-through host")
    admin.config = Config.model_validate({"secrets": {"acme": "env:X"}, "connector_secrets": {"acme": [ACME_HOST]}})
    store.close()  # the store is down: nothing may be half registered
    with pytest.raises(Refusal) as e:
        admin.register(document(), "ops")
    assert e.value.code == "store_unavailable" and admin.registry.get("acme") is None


def test_a_document_declares_a_bounded_number_of_fields() -> None:
    wide = {f"f{i}": {"type": "object", "fields": {f"g{j}": {"type": "boolean"} for j in range(9)}} for i in range(101)}
    with pytest.raises(DocumentError) as e:
        parse(document(actions=[_action(**wide)]))
    assert e.value.first() == "actions: declares 1010 fields in all; at most 1000"


def test_an_alias_bomb_in_a_connector_file_is_refused_at_once(tmp_path: Path) -> None:
    """Nested YAML aliases of object fields: 8 short lines are 10^8 field specs once expanded, which
    pydantic validated before any size check (minutes of CPU); the loader now refuses the expansion."""
    ladder = ["f0: &f0 {type: string}"] + [
        f"f{i}: &f{i} {{type: object, fields: {{{', '.join(f'k{j}: *f{i - 1}' for j in range(10))}}}}}"
        for i in range(1, 9)
    ]
    path = tmp_path / "acme.yaml"
    path.write_text(
        "name: acme\nhosts: [api.acme.test]\nactions:\n  - name: create\n    method: POST\n    path: /v1/x\n"
        "    fields:\n" + "".join(f"        {line}\n" for line in ladder)
    )
    with pytest.raises(ConfigError) as e:
        read_document(path)
    assert str(e.value) == f"{path}:13: bad YAML: the document expands to more than 200000 nodes (aliases included)"
