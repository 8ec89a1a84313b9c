"""Registering a tool at run time: the checks' order, nothing written on refusal, a reloadable layout."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import Refusal
from sandbox.manifest import ToolManifest, sign
from sandbox.registration import register
from sandbox.registry import ToolRegistry
from sandbox.runner import SandboxRunner

# A WASI command printing {"ok": 1}; `salt` makes each test's module (and sha256) its own.
_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{{\\"ok\\": 1}}")
  (data (i32.const 200) "{salt}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 9))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
"""


def _module(salt: str) -> bytes:
    return _WAT.format(salt=salt).encode()


def _manifest(name: str, module: bytes, **fields: Any) -> dict[str, Any]:
    return {"name": name, "module": "tool.wat", "sha256": hashlib.sha256(module).hexdigest(), "roles": ["*"], **fields}


@pytest.fixture
def runner(tmp_path: Path):  # type: ignore[no-untyped-def]
    r = SandboxRunner(cache_dir=tmp_path / "cwasm")
    yield r
    r.close()


def _register(runner: SandboxRunner, registry: ToolRegistry, tools: Path, manifest: Any, module: bytes, **kw: Any) -> Any:
    return register(registry, runner, tools, manifest, module, kw.get("trusted", {}), kw.get("required", False))


def test_registered_tool_runs_and_reloads_from_its_directory(tmp_path, runner, run) -> None:  # type: ignore[no-untyped-def]
    module, registry, tools = _module("a"), ToolRegistry(), tmp_path / "state" / "tools"
    tool = _register(runner, registry, tools, _manifest("fresh", module), module)
    assert registry.get("fresh") is tool and tool.module_path == tools / "fresh" / "tool.wat"
    assert run("fresh", tools=registry).output == {"ok": 1}
    reloaded = ToolRegistry.load(tools)
    assert reloaded.names() == ["fresh"] and not reloaded.errors
    assert reloaded.get("fresh").manifest == tool.manifest  # type: ignore[union-attr]
    assert not list((tmp_path / "state" / ".staging").iterdir())


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"sha256": "0" * 64}, "sandbox_hash_mismatch"),
        ({"limits": {"fuel": 0}}, "schema_violation"),
        ({"limits": {"fuel": "100000"}}, "schema_violation"),  # lax mode read a string as a number
        ({"limits": {"max_host_calls": True}}, "schema_violation"),
        ({"surprise": 1}, "schema_violation"),
        ({"module": "../escape.wasm"}, "schema_violation"),
    ],
)
def test_refusals_write_and_compile_nothing(tmp_path, runner, change, code) -> None:  # type: ignore[no-untyped-def]
    module, registry, tools = _module("b"), ToolRegistry(), tmp_path / "tools"
    with pytest.raises(Refusal) as e:
        _register(runner, registry, tools, {**_manifest("refused", module), **change}, module)
    assert e.value.code == code
    assert registry.names() == [] and not tools.exists() and runner.cache.compiles == 0


def test_a_module_that_does_not_compile_is_refused_and_not_stored(tmp_path, runner) -> None:  # type: ignore[no-untyped-def]
    module = b"(module (func (export \"_start\") (i32.add)))"
    with pytest.raises(Refusal) as e:
        _register(runner, ToolRegistry(), tmp_path / "tools", _manifest("broken", module), module)
    assert e.value.code == "schema_violation" and "does not compile" in e.value.message
    assert not (tmp_path / "tools").exists()


def test_a_taken_name_is_a_conflict(tmp_path, runner) -> None:  # type: ignore[no-untyped-def]
    module, registry, tools = _module("c"), ToolRegistry(), tmp_path / "tools"
    _register(runner, registry, tools, _manifest("twice", module), module)
    other = _module("d")
    with pytest.raises(Refusal) as e:
        _register(runner, registry, tools, _manifest("twice", other), other)
    assert e.value.code == "conflict"
    assert (tools / "twice" / "tool.wat").read_bytes() == module


def test_signatures_are_checked_when_required(tmp_path, runner) -> None:  # type: ignore[no-untyped-def]
    key = Ed25519PrivateKey.generate()
    module, registry, tools = _module("e"), ToolRegistry(), tmp_path / "tools"
    unsigned = _manifest("signed", module)
    with pytest.raises(Refusal) as e:
        _register(runner, registry, tools, unsigned, module, trusted={"acme": key.public_key()}, required=True)
    assert e.value.code == "sandbox_hash_mismatch"
    signed = sign(ToolManifest.model_validate(unsigned), "acme", key).model_dump(mode="json")
    tool = _register(runner, registry, tools, signed, module, trusted={"acme": key.public_key()}, required=True)
    assert tool.manifest.signature is not None
    assert ToolRegistry.load(tools, {"acme": key.public_key()}, True).get("signed").attestation_error is None  # type: ignore[union-attr]
