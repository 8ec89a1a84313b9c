"""Declarative connectors in a real gateway: from the config (a file and an inline mapping) and
registered through `POST /v1/connectors`, then called by an agent through the proxy to a fake
vendor on hosts no built-in claims (routed with `upstreams:`).

One gateway serves the module; the tests run in file order (the registration test leaves `acme`
registered; the restart test restarts the gateway and deletes it).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.clients import client, error_of
from tests.connectors.acme import ACME_HOST, ACME_KEY, document
from tests.fakes import PKI, VENDOR_HOSTS, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

TOKEN = re.compile(r"tok_EMAIL_ADDRESS_[a-z2-7]{20}")
EMAIL = "jane.doe@example.com"
NOTES_HOST, INLINE_HOST, GHOST_HOST = "notes.acme.test", "inline.acme.test", "ghost.acme.test"
NOTES_KEY = "notes-secret-key-0006"
NOTES_FILE = f"""\
# A connector kept in a file next to the config.
name: notes
hosts: [{NOTES_HOST}]
credential: {{secret: notes, query_param: api_key}}
actions:
  - name: search
    method: GET
    path: /v2/search
    encoding: query
    fields:
      q: {{type: string, max_length: 200, required: true, dlp: true}}
"""
INLINE = {"name": "inline", "hosts": [INLINE_HOST],
          "actions": [{"name": "ping", "method": "POST", "path": "/ping", "fields": {"n": {"type": "integer", "max": 9}}}]}
BASE_POLICY = """version: 1
subjects: {roles: [crm]}
rules:
  - {connector: notes, actions: [search]}
  - {connector: inline, actions: [ping]}
dlp: {tokenize: [EMAIL_ADDRESS]}
"""
ACME_POLICY = """version: 1
subjects: {roles: [crm]}
rules:
  - connector: acme
    actions: [create_contact, update_contact, get_contact]
    params:
      seats: {max: 100}
"""


@pytest.fixture(scope="module")
def acme_vendor(pki: PKI) -> Iterator[FakeVendor]:
    vendor = FakeVendor(pki.leaf("acme", (ACME_HOST, NOTES_HOST, INLINE_HOST, GHOST_HOST)))
    yield vendor
    vendor.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor, acme_vendor: FakeVendor) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("connectors-api")
    (root / "policies").mkdir()
    (root / "policies" / "base.yaml").write_text(BASE_POLICY)
    base = vendor_settings(pki, vendor_server)
    settings = {
        **base,
        "policies": str(root / "policies"),
        "connectors": ["notes.yaml", INLINE],  # the file relative to the config, as an operator writes it
        "upstreams": {**{h: vendor_server.url for h in VENDOR_HOSTS},
                      **{h: acme_vendor.url for h in (ACME_HOST, NOTES_HOST, INLINE_HOST)}},
        "secrets": {**base["secrets"], "acme": "env:TEST_ACME_KEY", "notes": "env:TEST_NOTES_KEY"},
        "connector_secrets": {"acme": [ACME_HOST]},
    }
    gateway = GatewayProcess(root / "gw", settings, {"TEST_ACME_KEY": ACME_KEY, "TEST_NOTES_KEY": NOTES_KEY})
    (root / "gw" / "notes.yaml").write_text(NOTES_FILE)
    with gateway.start():
        yield gateway


@pytest.fixture(scope="module")
def api(gw: GatewayProcess) -> Iterator[httpx.Client]:
    """One client for the API calls: a new httpx client per call costs ~0.2 s (its TLS context)."""
    with httpx.Client(base_url=gw.api_url, timeout=20) as c:
        yield c


@pytest.fixture
def acme(acme_vendor: FakeVendor) -> Iterator[FakeVendor]:
    acme_vendor.reset()
    yield acme_vendor
    acme_vendor.reset()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ops(gw: GatewayProcess) -> str:
    return gw.token(sub="ops", role="admin", scopes=())


def register(api: httpx.Client, gw: GatewayProcess, doc: Any, token: str | None = None) -> httpx.Response:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return api.post("/v1/connectors", content=body, headers={**bearer(token or ops(gw)), "Content-Type": "application/json"})


def delete(api: httpx.Client, name: str, token: str) -> httpx.Response:
    return api.delete(f"/v1/connectors/{name}", headers=bearer(token))


def listed(api: httpx.Client, gw: GatewayProcess) -> dict[str, str]:
    r = api.get("/v1/connectors", headers=bearer(ops(gw)))
    assert r.status_code == 200, r.text
    return {c["name"]: c["origin"] for c in r.json()["connectors"]}


def crm(gw: GatewayProcess) -> httpx.Client:
    return client(gw, gw.token(sub="crm-agent", role="crm"))


def until(check: Any, seconds: float = 5.0) -> Any:
    """The first truthy result of `check()`, polling (policy reloads take about a second)."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_config_connectors_from_a_file_and_inline_serve_calls(api: httpx.Client, gw: GatewayProcess, acme: FakeVendor) -> None:
    assert listed(api, gw) == {"stripe": "builtin", "openai": "builtin", "serpapi": "builtin", "notes": "config", "inline": "config"}
    with crm(gw) as c:
        r = c.get(f"https://{NOTES_HOST}/v2/search", params={"q": f"mail {EMAIL}", "api_key": "agent-own"})
        assert r.status_code == 200, r.text
        assert c.post(f"https://{INLINE_HOST}/ping", json={"n": 3}).status_code == 200
        assert error_of(c.post(f"https://{INLINE_HOST}/ping", json={"n": 10}))["code"] == "schema_violation"
    search, ping = acme.received
    query = httpx.URL(search.path).params
    assert query.get_list("api_key") == [NOTES_KEY]  # the agent's own key parameter stripped, the vendor's set
    assert EMAIL not in search.path and TOKEN.search(httpx.URL(search.path).params["q"])
    assert (ping.path, ping.json()) == ("/ping", {"n": 3}) and "authorization" not in ping.headers


def test_only_a_global_admin_registers(api: httpx.Client, gw: GatewayProcess) -> None:
    tenant_admin = gw.token(sub="t-ops", role="admin", scopes=(), tenant="acme-corp")
    for token, status in [(gw.token(sub="crm-agent", role="crm"), 403), (tenant_admin, 403)]:
        r = register(api, gw, document(), token)
        assert (r.status_code, error_of(r)["code"]) == (status, "admin_required")
    r = api.post("/v1/connectors", json=document())
    assert (r.status_code, error_of(r)["code"]) == (401, "identity_missing")
    assert "acme" not in listed(api, gw)


def _paths(node: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield here, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, (*here, key))


def _set(doc: Any, at: tuple[Any, ...], value: Any) -> None:
    for key in at[:-1]:
        doc = doc[key]
    doc[at[-1]] = value


REQUIRED: list[tuple[Any, ...]] = [("name",), ("hosts",), ("actions",), ("actions", 0, "name"), ("actions", 0, "method"),
            ("actions", 0, "path"), ("actions", 0, "fields", "email", "type"), ("credential", "secret")]


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    """A document broken in one of the ways an author (or an attacker) breaks one."""
    doc = document()
    nodes = list(_paths(doc))
    kind = draw(st.sampled_from(["unknown_key", "wrong_type", "missing", "not_an_object", "not_json"]))
    if kind == "unknown_key":  # a key no model has, in any object (inside `fields:` it is a field whose spec is 1)
        at, node = draw(st.sampled_from([(p, n) for p, n in nodes if isinstance(n, dict)]))
        node["zz-unknown"] = 1
    elif kind == "wrong_type":  # an object where a scalar belongs
        at, _ = draw(st.sampled_from([(p, n) for p, n in nodes if p and not isinstance(n, (dict, list))]))
        _set(doc, at, {"zz": [1]})
    elif kind == "missing":
        at = draw(st.sampled_from(REQUIRED))
        parent: Any = doc
        for key in at[:-1]:
            parent = parent[key]
        del parent[at[-1]]
    elif kind == "not_an_object":
        return json.dumps(draw(st.lists(st.integers(), max_size=3) | st.text(max_size=10) | st.integers())).encode()
    else:
        return draw(st.binary(min_size=1, max_size=40).filter(lambda b: not b.strip().startswith(b"{")))
    return json.dumps(doc).encode()


@settings(max_examples=40)
@given(body=malformed())
def test_malformed_documents_are_a_400_naming_the_problem(api: httpx.Client, gw: GatewayProcess, body: bytes) -> None:
    r = register(api, gw, body)
    err = error_of(r)
    assert (r.status_code, err["code"]) in {(400, "schema_violation"), (400, "malformed_body")}, r.text
    assert err["message"] and "Traceback" not in r.text


def test_a_connector_may_not_shadow_claim_or_take_a_key_it_is_not_offered(api: httpx.Client, gw: GatewayProcess) -> None:
    """Also: none of the malformed documents above registered anything."""
    cases = [
        (document(name="stripe"), 409, "conflict", "name: a builtin connector is named 'stripe'"),
        (document(name="notes", hosts=["other.acme.test"], credential=None), 409, "conflict", "name: a config connector"),
        (document(hosts=["api.stripe.com"], credential=None), 409, "conflict", "hosts[0]: api.stripe.com is claimed by connector 'stripe'"),
        (document(credential={"secret": "stripe", "header": "Authorization", "scheme": "Bearer"}), 400,
         "schema_violation", "credential.secret: 'stripe' is not offered"),
        (document(hosts=[ACME_HOST, "evil.acme.test"]), 400, "schema_violation", "hosts[1]: the config's connector_secrets"),
        (document(actions=[{"name": "x", "method": "GET", "path": "/x"}]), 400, "schema_violation",
         "actions[0].encoding: a GET takes"),
    ]
    for doc, status, code, message in cases:
        r = register(api, gw, doc)
        err = error_of(r)
        assert (r.status_code, err["code"]) == (status, code) and err["message"].startswith(message), err
    assert set(listed(api, gw)) == {"stripe", "openai", "serpapi", "notes", "inline"}


def test_a_registered_connector_serves_calls_without_a_restart(api: httpx.Client, gw: GatewayProcess, acme: FakeVendor) -> None:
    policy = gw.root / ".." / "policies" / "acme.yaml"
    policy.write_text(ACME_POLICY)  # names a connector that does not exist yet: rejected, the old set serves
    assert until(lambda: "acme.yaml" in gw.log_file.read_text() and "unknown connector 'acme'" in gw.log_file.read_text())
    r = register(api, gw, document())
    assert r.status_code == 201, r.text
    assert r.json()["origin"] == "api" and [a["name"] for a in r.json()["actions"]] == ["create_contact", "update_contact", "get_contact"]
    assert listed(api, gw)["acme"] == "api"
    url = f"https://{ACME_HOST}/v1/contacts"
    body = {"email": EMAIL, "seats": 3, "metadata": {"owner": "jane.doe@example.com"}}
    headers = {"Authorization": "Bearer agent-own-key", "X-Acme-Account": "acct_other", "Acme-Version": "2026-01-01",
               "Idempotency-Key": "k1"}
    with crm(gw) as c:
        r = until(lambda: (resp := c.post(url, json=body, headers=headers)).status_code == 200 and resp)
        assert r, "the rejected policy did not load once its connector was registered"
        sent = acme.received[-1]
        assert sent.headers["authorization"] == f"Bearer {ACME_KEY}" and "x-acme-account" not in sent.headers
        assert sent.headers["acme-version"] == "2026-01-01" and sent.headers["idempotency-key"].startswith("egk_")
        assert EMAIL not in sent.body.decode() and len(TOKEN.findall(sent.body.decode())) == 2
        assert sent.json()["seats"] == 3
        n = len(acme.received)
        for bad, code in [({"email": EMAIL, "seats": 0}, "schema_violation"), ({"email": EMAIL, "nick": "x"}, "schema_violation"),
                          ({"email": EMAIL, "seats": 150}, "param_violation"), ({"seats": 2}, "schema_violation")]:
            err = error_of(c.post(url, json=bad))
            assert (err["code"], err["connector"], err["action"]) == (code, "acme", "create_contact"), err
        assert error_of(c.get(f"{url}/4111111111111111"))["code"] == "schema_violation"  # a card number is no id
        assert c.get(f"{url}/c_123").status_code == 200
        assert len(acme.received) == n + 1
    assert gw.cli("policy", "check", str(policy.parent)).returncode == 0
    assert "acme  (api.acme.test)  [api]" in gw.cli("connectors").stdout
    again = register(api, gw, document())
    assert (again.status_code, error_of(again)["code"]) == (409, "conflict")
    records = [rec for rec in gw.audit() if rec.get("phase") == "connector_register"]
    assert [(rec["sub"], rec["connector"], rec["hosts"], rec["decision"]) for rec in records] == [
        ("ops", "acme", [ACME_HOST], "allow")]
    assert ACME_KEY not in gw.audit_file.read_text() + gw.log_file.read_text()


def test_a_registered_host_is_not_routed_anywhere_by_registering_it(api: httpx.Client, gw: GatewayProcess, acme: FakeVendor) -> None:
    """No `upstreams:` entry for it: the gateway resolves the name like any vendor's and applies
    the address checks (here the name resolves nowhere); nothing reaches the fake vendor."""
    ghost = {"name": "ghost", "hosts": [GHOST_HOST], "actions": [{"name": "ping", "method": "POST", "path": "/ping"}]}
    assert register(api, gw, ghost).status_code == 201
    with client(gw, gw.token(sub="any", role="crm", scopes=("ghost:*",))) as c:
        err = error_of(c.post(f"https://{GHOST_HOST}/ping"))
    assert err["code"] in {"upstream_failed", "address_denied"} and acme.received == []
    r = delete(api, "ghost", ops(gw))
    assert (r.status_code, r.json()) == (200, {"deleted": "ghost"})
    with client(gw, gw.token(sub="any", role="crm", scopes=("ghost:*",))) as c:
        r = c.post(f"https://{GHOST_HOST}/ping")
    assert (r.status_code, error_of(r)["code"]) == (403, "host_denied")


def test_racing_registrations_of_one_name_register_it_once(api: httpx.Client, gw: GatewayProcess) -> None:
    race = {"name": "race", "hosts": ["race.acme.test"], "actions": [{"name": "ping", "method": "POST", "path": "/ping"}]}
    token = ops(gw)
    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(lambda _: register(api, gw, race, token).status_code, range(8)))
    assert statuses == [201] + [409] * 7
    assert delete(api, "race", token).status_code == 200 and "race" not in listed(api, gw)


def test_registered_connectors_survive_a_restart_and_deleting_one_needs_its_rules_gone(api: httpx.Client, gw: GatewayProcess, acme: FakeVendor) -> None:
    gw.stop()
    gw.start()
    assert listed(api, gw)["acme"] == "api"
    with crm(gw) as c:
        assert c.post(f"https://{ACME_HOST}/v1/contacts", json={"email": EMAIL}).status_code == 200
    tenant_admin = gw.token(sub="t-ops", role="admin", scopes=(), tenant="acme-corp")
    for name, token, status, code in [("acme", tenant_admin, 403, "admin_required"), ("acme", ops(gw), 409, "conflict"),
                                      ("stripe", ops(gw), 409, "conflict"), ("notes", ops(gw), 409, "conflict"),
                                      ("nope", ops(gw), 404, "not_found")]:
        r = delete(api, name, token)
        assert (r.status_code, error_of(r)["code"]) == (status, code), r.text
    (gw.root / ".." / "policies" / "acme.yaml").unlink()
    r = until(lambda: (resp := delete(api, "acme", ops(gw))).status_code == 200 and resp)
    assert r and r.json() == {"deleted": "acme"}
    assert "acme" not in listed(api, gw)
    assert [rec["connector"] for rec in gw.audit() if rec.get("phase") == "connector_delete"] == ["ghost", "race", "acme"]
    assert "acme  (" not in gw.cli("connectors").stdout  # the CLI reads the store a restart would load


def test_a_config_file_with_a_mistake_stops_commands_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(NOTES_FILE.replace("method: GET", "method: FETCH"))
    gw = GatewayProcess(tmp_path / "gw", {"connectors": [str(tmp_path / "broken.yaml")]})
    out = gw.cli("connectors", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{tmp_path / 'broken.yaml'}:7: actions[0].method: Input should be" in out.stderr
