"""Registered Python tools (`kind: component`): built with componentize-py, run through `run_tool`.

Host calls leave through the component's `egress:tool/http.request` import and reach the local vendor
server over a socket; variants of the built `py_convert` (the same component under other manifests,
so one compile serves them all) trip each limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import Refusal
from gateway.pipeline.call import new_decision_id
from sandbox.hostcall import HttpRequest, ResolveAction
from sandbox.manifest import ToolManifest
from sandbox.registry import ToolRegistry
from sandbox.runner import SandboxRunner
from sandbox.service import run_tool
from tests.python_tools import PythonTools

CONVERT_INPUT = {"to": "eur", "rates": {"usd": 0.5}}


@pytest.fixture(scope="module")
def py_runner(python_tools: PythonTools) -> Iterator[SandboxRunner]:
    """A runner over the session's compiled components: it loads them from disk, never compiles."""
    r = SandboxRunner(cache_dir=python_tools.cache_dir)
    yield r
    r.close()


@pytest.fixture
def variants(tmp_path: Path, python_tools: PythonTools):  # type: ignore[no-untyped-def]
    """`variants(**{name: manifest_overrides})` -> a registry of renamed py_convert copies."""

    def make(**tools: dict[str, Any]) -> ToolRegistry:
        for name, overrides in tools.items():
            python_tools.variant(tmp_path / "tools", "py_convert", name, **overrides)
        registry = ToolRegistry.load(tmp_path / "tools")
        assert not registry.errors
        return registry

    return make


def _run(runner: SandboxRunner, registry: ToolRegistry, name: str, sender: HttpRequest, resolve: ResolveAction,
         tool_input: dict[str, Any] | None = None, role: str = "finance") -> Any:
    return asyncio.run(run_tool(runner, registry, name, CONVERT_INPUT if tool_input is None else tool_input, role, sender, resolve, new_decision_id()))


def test_python_tool_converts_the_balance_through_the_host_import(py_runner, python_tools, http_vendor, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    registry = ToolRegistry.load(python_tools.tools_dir)
    result = _run(py_runner, registry, "py_convert", sender, resolve)
    # usd 10000*0.5 + eur 2500 available; usd 400*0.5 pending, jpy has no rate.
    assert result.output == {"currency": "eur", "available": 7500, "pending": 200, "unconverted": 1, "status": 200}
    assert result.host_calls == 1 and result.fuel_used > 0
    assert [(r["method"], r["path"], r["host"]) for r in http_vendor.seen] == [("GET", "/v1/balance", "api.stripe.com")]
    assert py_runner.components.cache.compiles == 0  # loaded from the session's compile


def test_manifest_ceiling_refuses_an_action_it_does_not_allow(py_runner, variants, http_vendor, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    registry = variants(py_openai_only={"allowed": ["openai:*"]}, py_no_calls={"limits": {"max_host_calls": 0}})
    for name in ("py_openai_only", "py_no_calls"):
        assert _run(py_runner, registry, name, sender, resolve).output == {"status": 403, "error": "sandbox_forbidden"}
    assert http_vendor.seen == []


def test_refusals_from_the_sender_reach_the_tool_as_responses(py_runner, python_tools, resolve) -> None:  # type: ignore[no-untyped-def]
    def refuse(request: dict[str, Any]) -> dict[str, Any]:
        raise Refusal("rate_limited", "the rule's rate limit is used up")

    result = _run(py_runner, ToolRegistry.load(python_tools.tools_dir), "py_convert", refuse, resolve)
    assert result.output == {"status": 429, "error": "rate_limited"}


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"limits": {"fuel": 10_000, "timeout_ms": 10_000}}, "sandbox_fuel_exhausted"),
        ({"limits": {"memory_pages": 64}}, "sandbox_memory_limit"),  # under the interpreter's initial memory
        ({"limits": {"max_output_bytes": 16, "max_host_calls": 1}}, "sandbox_bad_output"),
    ],
)
def test_limits_trip_with_their_codes(py_runner, variants, sender, resolve, overrides, code) -> None:  # type: ignore[no-untyped-def]
    registry = variants(py_limited={**overrides, "allowed": ["stripe:retrieve_balance"]})
    with pytest.raises(Refusal) as e:
        _run(py_runner, registry, "py_limited", sender, resolve)
    assert e.value.code == code


def test_deadline_interrupts_the_guest_after_a_slow_host_call(py_runner, variants, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    registry = variants(py_slow={"limits": {"timeout_ms": 50, "max_host_calls": 1, "fuel": 1_000_000_000}})

    def slow(request: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.3)  # the call cannot be interrupted; the guest is, as soon as it runs again
        return sender(request)

    with pytest.raises(Refusal) as e:
        _run(py_runner, registry, "py_slow", slow, resolve)
    assert e.value.code == "sandbox_timeout"


def test_the_tools_own_error_is_a_trap_with_its_message(py_runner, python_tools, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refusal) as e:
        _run(py_runner, ToolRegistry.load(python_tools.tools_dir), "py_convert", sender, resolve, {"to": 5})
    assert e.value.code == "sandbox_trap"
    assert 'input needs "to"' in str(e.value.details["stderr_tail"])


def test_role_and_hash_are_checked_and_a_mismatch_never_compiles(tmp_path, python_tools, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    python_tools.variant(tmp_path / "tools", "py_convert", "py_tampered", sha256="0" * 64)
    registry = ToolRegistry.load(tmp_path / "tools")
    runner = SandboxRunner(cache_dir=tmp_path / "cwasm")  # an empty cache: anything compiled would show
    try:
        with pytest.raises(Refusal) as e:
            _run(runner, registry, "py_tampered", sender, resolve)
        assert e.value.code == "sandbox_hash_mismatch"
        with pytest.raises(Refusal) as e:
            _run(runner, ToolRegistry.load(python_tools.tools_dir), "py_convert", sender, resolve, role="research")
        assert e.value.code == "sandbox_forbidden"
        assert runner.components.cache.compiles == 0 and not list((tmp_path / "cwasm").iterdir())
    finally:
        runner.close()


def test_a_component_importing_more_than_our_interface_is_refused(make_tool, tools_dir, py_runner, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    import wasmtime

    component = bytes(wasmtime.wat2wasm('(component (import "wasi:cli/environment@0.2.0" (instance)))'))
    make_tool("wants_wasi", component, kind="component")
    with pytest.raises(Refusal) as e:
        _run(py_runner, ToolRegistry.load(tools_dir), "wants_wasi", sender, resolve)
    assert e.value.code == "sandbox_forbidden" and "wasi:cli/environment" in e.value.message


def test_kind_defaults_to_module_and_old_signatures_still_verify() -> None:
    m = ToolManifest(name="t", module="t.wasm", sha256="0" * 64)
    assert m.kind == "module" and b"kind" not in m.canonical_bytes()
    c = ToolManifest(name="t", kind="component", module="t.wasm", sha256="0" * 64)
    assert b'"kind":"component"' in c.canonical_bytes()
    with pytest.raises(ValueError):
        ToolManifest(name="t", kind="component", module="t.wat", sha256="0" * 64)


def test_built_manifest_attests_the_built_bytes(python_tools: PythonTools) -> None:
    manifest = ToolManifest.model_validate(python_tools.manifest("py_convert"))
    assert manifest.kind == "component"
    assert hashlib.sha256(python_tools.module("py_convert")).hexdigest() == manifest.sha256


def test_twenty_concurrent_runs(py_runner, python_tools, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    registry = ToolRegistry.load(python_tools.tools_dir)

    async def many() -> list[Any]:
        return await asyncio.gather(*(
            run_tool(py_runner, registry, "py_convert", {"to": "eur", "rates": {"usd": i}}, "finance", sender, resolve, new_decision_id())
            for i in range(20)
        ))

    results = asyncio.run(many())
    assert [r.output["available"] for r in results] == [10000 * i + 2500 for i in range(20)]
