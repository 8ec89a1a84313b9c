"""Manifests, signatures and module hashes: a module that is not the attested one never compiles."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import Refusal
from gateway.pipeline.call import new_decision_id
from sandbox.manifest import ManifestError, ToolManifest, load_manifest, sign, verify_signature
from sandbox.registry import ToolRegistry, builtin_tools_dir
from sandbox.runner import SandboxRunner
from sandbox.service import run_tool

TOOLS = builtin_tools_dir()
SAMPLES = sorted(p.parent.name for p in TOOLS.glob("*/manifest.yaml"))


def test_hash_mismatch_never_compiles(tmp_path: Path, make_variant, tools_dir, resolve) -> None:  # type: ignore[no-untyped-def]
    tool_dir = make_variant("stats", "tampered")
    wasm = tool_dir / "tool.wasm"
    wasm.write_bytes(wasm.read_bytes() + b"\x00")  # one byte more: still loads as wasm, hashes differently
    runner = SandboxRunner(cache_dir=tmp_path / "cache")
    try:
        import asyncio

        with pytest.raises(Refusal) as e:
            asyncio.run(run_tool(runner, ToolRegistry.load(tools_dir), "tampered", {"values": [1]}, "x", _never, resolve, new_decision_id()))
        assert e.value.code == "sandbox_hash_mismatch"
        assert (runner.cache.compiles, runner.cache.disk_loads) == (0, 0)
        assert not any((tmp_path / "cache").iterdir())
    finally:
        runner.close()


def test_a_missing_module_is_refused_like_a_mismatch(run, make_variant, tools_dir) -> None:  # type: ignore[no-untyped-def]
    (make_variant("stats", "gone") / "tool.wasm").unlink()
    with pytest.raises(Refusal) as e:
        run("gone", tools=ToolRegistry.load(tools_dir))
    assert e.value.code == "sandbox_hash_mismatch"


def test_signed_manifest_verifies_and_tampering_breaks_it() -> None:
    key = Ed25519PrivateKey.generate()
    trusted = {"acme": key.public_key()}
    manifest = sign(load_manifest(TOOLS / "stats" / "manifest.yaml"), "acme", key)
    assert verify_signature(manifest, trusted, required=True) is None
    widened = manifest.model_copy(update={"allowed": ("openai:*",)})
    assert "does not verify" in str(verify_signature(widened, trusted, required=False))
    other = manifest.model_copy(update={"sha256": "1" * 64})
    assert "does not verify" in str(verify_signature(other, trusted, required=False))
    assert "not a trusted key" in str(verify_signature(manifest, {}, required=False))
    unsigned = manifest.model_copy(update={"signature": None})
    assert verify_signature(unsigned, trusted, required=False) is None
    assert "not signed" in str(verify_signature(unsigned, trusted, required=True))


def test_a_badly_signed_tool_is_refused_as_hash_mismatch(run, make_variant, tools_dir) -> None:  # type: ignore[no-untyped-def]
    key, impostor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    tool_dir = make_variant("stats", "signed_stats")
    manifest = load_manifest(tool_dir / "manifest.yaml")
    for name, signer in (("signed_stats", key), ("forged_stats", impostor)):
        target = tool_dir.parent / name
        if name != "signed_stats":
            shutil.copytree(tool_dir, target)
        signed = sign(manifest.model_copy(update={"name": name}), "acme", signer)
        (target / "manifest.yaml").write_text(yaml.safe_dump(signed.model_dump(mode="json")))
    tools = ToolRegistry.load(tools_dir, trusted_publishers={"acme": key.public_key()}, require_signature=True)
    assert run("signed_stats", {"values": [3]}, tools=tools).output["count"] == 1
    with pytest.raises(Refusal) as e:
        run("forged_stats", {"values": [3]}, tools=tools)
    assert e.value.code == "sandbox_hash_mismatch"


@pytest.mark.parametrize(
    "change",
    [
        {"allowed": ["stripe"]},
        {"allowed": ["https://api.stripe.com"]},
        {"module": "../stats/tool.wasm"},
        {"module": "tool.so"},
        {"sha256": "ABC"},
        {"limits": {"fuel": 0}},
        {"limits": {"memory_pages": 70000}},
        {"limits": {"unknown": 1}},
        {"name": "Bad Name"},
        {"network": True},
    ],
)
def test_invalid_manifests_are_rejected(change: dict, tmp_path: Path) -> None:
    data = yaml.safe_load((TOOLS / "stats" / "manifest.yaml").read_text())
    data.update(change)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError):
        load_manifest(path)


def test_a_broken_manifest_does_not_take_the_others_down(tmp_path: Path, make_variant, tools_dir) -> None:  # type: ignore[no-untyped-def]
    make_variant("stats", "fine")
    (tools_dir / "broken").mkdir()
    (tools_dir / "broken" / "manifest.yaml").write_text("name: [unclosed\n")
    tools = ToolRegistry.load(tools_dir)
    assert tools.names() == ["fine"]
    assert list(tools.errors) == [str(tools_dir / "broken" / "manifest.yaml")]


def test_allows_and_roles() -> None:
    m = ToolManifest(name="t", module="t.wasm", sha256="0" * 64, allowed=("stripe:retrieve_balance", "openai:*"),
                     roles=("finance",))
    assert m.allows("stripe", "retrieve_balance") and m.allows("openai", "embeddings")
    assert not m.allows("stripe", "create_refund") and not m.allows("serpapi", "search")
    assert m.runnable_by("finance") and not m.runnable_by("support")
    assert not ToolManifest(name="t", module="t.wasm", sha256="0" * 64).runnable_by("finance")  # empty = nobody
    assert ToolManifest(name="t", module="t.wasm", sha256="0" * 64).limits.max_host_calls == 0  # no HTTP by default


@pytest.mark.parametrize("tool", SAMPLES)
def test_committed_wasm_matches_its_manifest(tool: str) -> None:
    manifest = load_manifest(TOOLS / tool / "manifest.yaml")
    assert hashlib.sha256((TOOLS / tool / manifest.module).read_bytes()).hexdigest() == manifest.sha256


def _wasm_clang() -> str | None:
    clang = shutil.which("clang")
    if clang is None or not Path("/usr/lib/wasm32-wasi/libc.a").exists():
        return None
    return clang


@pytest.mark.skipif(_wasm_clang() is None, reason="clang with the wasm32-wasi sysroot is not installed "
                    "(apt-get install clang lld wasi-libc libclang-rt-dev-wasm32); the committed .wasm are checked above")
def test_rebuild_is_reproducible(tmp_path: Path) -> None:
    subprocess.run([str(TOOLS / "build.sh"), str(tmp_path)], check=True, capture_output=True)
    for tool in SAMPLES:
        manifest = load_manifest(TOOLS / tool / "manifest.yaml")
        assert hashlib.sha256((tmp_path / f"{tool}.wasm").read_bytes()).hexdigest() == manifest.sha256, tool


def _never(request: dict) -> dict:
    raise AssertionError("no host call expected")
