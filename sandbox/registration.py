"""Register a tool at run time: check a manifest and its module's bytes, then keep both on disk.

`POST /v1/tools` (gateway/sandbox_service.py) calls `register`, which checks, in this order, and refuses at the
first failure without writing anything:
1. the manifest is valid (`schema_violation`);
2. the module's sha256 is the manifest's (`sandbox_hash_mismatch`, before anything is compiled);
3. its signature verifies against the trusted publishers, or it has none and none is required
   (`sandbox_hash_mismatch`, as at load time);
4. no tool of that name is registered (`conflict`);
5. the module compiles and links on the runner (a component imports nothing but our http
   interface): a broken module is refused now rather than on its first run, whose caller would
   wait seconds for a Python component's compile; the compiled code lands in the cache on disk.
Then manifest and module go to `<tools_dir>/<name>/`, the same layout as shipped tools, written into
a staging directory and renamed into place so a restart never finds half a tool, and the tool is added
to the running registry. The caller serializes registrations (the name check and the rename are not
atomic together).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from gateway.errors import Refusal, describe
from sandbox.cache import write_private
from sandbox.manifest import ToolManifest, verify_signature
from sandbox.registry import MANIFEST_FILE, Tool, ToolRegistry
from sandbox.runner import SandboxRunner

STAGING = ".staging"  # under the tools dir's parent: the registry never loads from it


def register(
    registry: ToolRegistry,
    runner: SandboxRunner,
    tools_dir: Path,
    manifest_data: Any,
    module: bytes,
    trusted_publishers: Mapping[str, Ed25519PublicKey],
    require_signature: bool,
) -> Tool:
    """Check, compile, store and register one tool; raises `Refusal` (see the module docstring)."""
    try:
        manifest = ToolManifest.model_validate(manifest_data)
    except ValidationError as e:
        raise Refusal("schema_violation", f"the manifest's {describe(e, root='document')}") from None
    if hashlib.sha256(module).hexdigest() != manifest.sha256:
        raise Refusal("sandbox_hash_mismatch", f"the module does not match the manifest's sha256 (tool {manifest.name!r})")
    reason = verify_signature(manifest, dict(trusted_publishers), require_signature)
    if reason is not None:
        raise Refusal("sandbox_hash_mismatch", f"tool {manifest.name!r}: {reason}")
    if registry.get(manifest.name) is not None or (tools_dir / manifest.name).exists():
        raise Refusal("conflict", f"a tool named {manifest.name!r} is already registered")
    staging = tools_dir.parent / STAGING / uuid.uuid4().hex
    staging.mkdir(parents=True, mode=0o700)
    try:
        write_private(staging / manifest.module, module)
        tool = Tool(manifest=manifest, module_path=staging / manifest.module)
        _prepare(runner, tool)
        manifest_yaml = yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True), sort_keys=False)
        write_private(staging / MANIFEST_FILE, manifest_yaml.encode())
        tools_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = tools_dir / manifest.name
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tool = Tool(manifest=manifest, module_path=final / manifest.module)
    registry.add(tool)
    return tool


def _prepare(runner: SandboxRunner, tool: Tool) -> None:
    """Compile and link-check; a module that cannot run is the request's fault, not a crash."""
    try:
        runner.prepare(tool)
    except Refusal as r:
        if r.code == "sandbox_trap":  # the bytes do not compile
            raise Refusal("schema_violation", r.message) from None
        raise
