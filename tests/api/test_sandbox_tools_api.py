"""`POST /v1/tools` and `GET /v1/tools`, and registered Python tools run through a real gateway.

The Python tool is the session's componentize-py build of `sandbox/tools/py_convert`; the gateway's
state dir is seeded with its compiled code (as a previous run would have left it), so registering
it loads rather than compiles. Its host call goes through the gateway's proxy like a C tool's.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.clients import error_of
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess
from tests.python_tools import PythonTools

# A WASI command printing {}; the salt gives each test's module its own sha256.
WAT = b"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{}")
  (data (i32.const 200) "%s")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 2))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"""


@pytest.fixture(scope="module")
def tools_gw(tmp_path_factory, pki: PKI, vendor_server: FakeVendor, python_tools: PythonTools) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("tools-api-gw"), vendor_settings(pki, vendor_server))
    python_tools.seed(gw.state_dir)  # before the start, as a previous run would have left it
    with gw.start():
        yield gw


def admin(gw: GatewayProcess) -> str:
    return gw.token(sub="ops", role="admin", scopes=())


def post_tool(gw: GatewayProcess, token: str, body: Any, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{gw.api_url}/v1/tools", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)


def list_tools(gw: GatewayProcess, token: str) -> list[str]:
    r = httpx.get(f"{gw.api_url}/v1/tools", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return [t["name"] for t in r.json()["tools"]]


def run(gw: GatewayProcess, token: str, tool: str, tool_input: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.api_url}/v1/sandbox/run", json={"tool": tool, "input": tool_input},
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)


def wat_tool(name: str, salt: str, **fields: Any) -> dict[str, Any]:
    module = WAT % salt.encode()
    manifest = {"name": name, "module": "tool.wat", "sha256": hashlib.sha256(module).hexdigest(), "roles": ["*"], **fields}
    return {"manifest": manifest, "module_base64": base64.b64encode(module).decode()}


def compiled(gw: GatewayProcess, sha256: str) -> bool:
    return any((gw.state_dir / "sandbox-cache").glob(f"{sha256}-*.cwasm"))


def test_register_a_python_tool_and_run_it_through_the_gateway(tools_gw, python_tools, vendor) -> None:  # type: ignore[no-untyped-def]
    r = post_tool(tools_gw, admin(tools_gw), python_tools.register_body("py_convert"))
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "py_convert", "kind": "component", "sha256": python_tools.manifest("py_convert")["sha256"]}
    finance = tools_gw.token(sub="py-user", role="finance", scopes=("stripe:*",))
    r = run(tools_gw, finance, "py_convert", {"to": "eur", "rates": {"usd": 0.5}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"] == {"currency": "eur", "available": 7500, "pending": 200, "unconverted": 1, "status": 200}
    assert body["host_calls"] == 1 and body["fuel_used"] > 0
    assert vendor.received[-1].path == "/v1/balance"
    assert vendor.received[-1].headers["authorization"].startswith("Bearer sk_test_")  # injected by the gateway
    audit = tools_gw.audit()
    assert any(x.get("tool") == "py_convert" and x.get("phase") == "outcome" and x.get("sub") == "py-user" for x in audit)
    assert any(x.get("phase") == "tool_register" and x.get("tool_name") == "py_convert" and x.get("sub") == "ops" for x in audit)


def test_manifest_ceiling_and_limits_of_a_registered_python_tool(tools_gw, python_tools, vendor) -> None:  # type: ignore[no-untyped-def]
    token = admin(tools_gw)
    ceiling = python_tools.register_body("py_convert", name="py_openai_only", allowed=["openai:*"])
    starved = python_tools.register_body("py_convert", name="py_starved", limits={"fuel": 10_000})
    assert post_tool(tools_gw, token, ceiling).status_code == 200
    assert post_tool(tools_gw, token, starved).status_code == 200
    finance = tools_gw.token(role="finance", scopes=("*",))  # the agent itself may call Stripe
    r = run(tools_gw, finance, "py_openai_only", {"to": "eur"})
    assert r.status_code == 200 and r.json()["output"] == {"status": 403, "error": "sandbox_forbidden"}
    assert not vendor.received
    r = run(tools_gw, finance, "py_starved", {"to": "eur"})
    assert (r.status_code, error_of(r)["code"]) == (422, "sandbox_fuel_exhausted")


def test_only_admins_register(tools_gw) -> None:  # type: ignore[no-untyped-def]
    body = wat_tool("not_by_agents", "agent")
    r = post_tool(tools_gw, tools_gw.token(role="finance", scopes=("*",)), body)
    assert (r.status_code, error_of(r)["code"]) == (403, "admin_required")
    r = httpx.post(f"{tools_gw.api_url}/v1/tools", json=body, timeout=10)
    assert r.status_code == 401
    assert not (tools_gw.state_dir / "tools" / "not_by_agents").exists()
    assert not compiled(tools_gw, body["manifest"]["sha256"])


def test_a_hash_mismatch_is_refused_and_never_compiled(tools_gw) -> None:  # type: ignore[no-untyped-def]
    body = wat_tool("mismatched", "real")
    real_sha = body["manifest"]["sha256"]
    body["manifest"]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    r = post_tool(tools_gw, admin(tools_gw), body)
    assert (r.status_code, error_of(r)["code"]) == (403, "sandbox_hash_mismatch")
    assert not compiled(tools_gw, real_sha) and not compiled(tools_gw, body["manifest"]["sha256"])
    assert not (tools_gw.state_dir / "tools" / "mismatched").exists()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"manifest": {"name": "x"}, "module_base64": "AAAA"}, 400, "schema_violation"),
        ({"manifest": {}, "module_base64": "not base64!"}, 400, "malformed_body"),
        ({"manifest": {}}, 400, "malformed_body"),
        ([1, 2], 400, "malformed_body"),
        (wat_tool("stats", "clash"), 409, "conflict"),  # a shipped sample's name
    ],
)
def test_bad_registrations(tools_gw, body: Any, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    r = post_tool(tools_gw, admin(tools_gw), body)
    assert (r.status_code, error_of(r)["code"]) == (status, code)


def test_the_body_is_bounded_by_max_tool_body(tools_gw) -> None:  # type: ignore[no-untyped-def]
    oversized = b"x" * (32 * 2**20 + 1)  # sandbox.max_tool_body's default
    r = httpx.post(f"{tools_gw.api_url}/v1/tools", content=oversized, timeout=60,
                   headers={"Authorization": f"Bearer {admin(tools_gw)}", "content-type": "application/json"})
    assert (r.status_code, error_of(r)["code"]) == (413, "body_too_large")


def test_list_shows_a_role_only_what_it_may_run_and_registrations_survive_a_restart(tools_gw, python_tools) -> None:  # type: ignore[no-untyped-def]
    token = admin(tools_gw)
    assert post_tool(tools_gw, token, wat_tool("finance_only", "fin", roles=["finance"])).status_code == 200
    assert post_tool(tools_gw, token, python_tools.register_body("py_convert", name="py_kept")).status_code == 200
    finance = tools_gw.token(role="finance", scopes=("stripe:*",))
    research = tools_gw.token(role="research", scopes=("*",))
    assert {"finance_only", "py_kept", "currency_convert", "stats"} <= set(list_tools(tools_gw, finance))
    seen_by_research = set(list_tools(tools_gw, research))
    assert "stats" in seen_by_research and not seen_by_research & {"finance_only", "py_kept", "currency_convert"}

    tools_gw.stop()
    tools_gw.start()
    finance = tools_gw.token(role="finance", scopes=("stripe:*",))
    assert {"finance_only", "py_kept"} <= set(list_tools(tools_gw, finance))
    r = run(tools_gw, finance, "py_kept", {"to": "usd"})
    assert r.status_code == 200 and r.json()["output"]["status"] == 200, r.text
    assert run(tools_gw, finance, "finance_only", {}).json()["output"] == {}
