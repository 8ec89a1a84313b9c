"""A tool's manifest: what the module is (sha256), who vouches for it, what it may use and who may run it.

Modelled on Extism's manifests (LESSONS.md): a module hash that must match before anything runs,
`memory_pages` as the memory cap, `timeout_ms`, and an allow-list that is empty by default (no HTTP).
Our allow-list names connector actions (`stripe:retrieve_balance`, `openai:*`) rather than hosts,
because a host call enters the gateway's pipeline, which already maps every URL to one action.

`kind` says what the module is: `module` (the default), a WASI preview 1 command (sandbox/ABI.md), or
`component`, a component of the world in sandbox/wit/tool.wit (registered Python tools, built with
componentize-py). A missing `kind` is `module`, so manifests written before it existed stay valid.

The optional signature is Ed25519 over `canonical_bytes()`: the manifest as sorted, compact JSON
without the signature itself. It covers the sha256, so a signed manifest pins the module's bytes too.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.errors import ConfigError

PAGE_BYTES = 65536
_ACTION = re.compile(r"[a-z][a-z0-9_-]*:(\*|[A-Za-z_][A-Za-z0-9_]*)")
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# No separator and no control character: a NUL failed only at the file's creation, as a 500.
_MODULE_FILE = re.compile(r"[^/\\\x00-\x1f\x7f]+\.(wasm|wat)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Per-run ceilings. The defaults suit a small pure-compute tool; raise them per tool, not globally.
    Whole numbers only: lax mode read `"100000"` or `true` as a number (`POST /v1/tools` takes these)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    fuel: int = Field(default=100_000_000, ge=1, le=100_000_000_000)
    memory_pages: int = Field(default=256, ge=1, le=65536)  # 64 KiB pages: 256 = 16 MiB
    timeout_ms: int = Field(default=1000, ge=1, le=60_000)
    max_output_bytes: int = Field(default=65536, ge=2, le=16 * 1024 * 1024)
    max_host_calls: int = Field(default=0, ge=0, le=1000)

    @property
    def memory_bytes(self) -> int:
        return self.memory_pages * PAGE_BYTES


class Signature(_Strict):
    publisher: str = Field(min_length=1, max_length=128)
    ed25519: str  # base64 of the 64-byte signature


class ToolManifest(_Strict):
    name: str
    description: str = ""
    kind: Literal["module", "component"] = "module"
    module: str  # file name next to the manifest: a .wasm, or a .wat for corner cases (modules only)
    sha256: str
    limits: Limits = Limits()
    allowed: tuple[str, ...] = ()  # connector:action or connector:*; empty = no host calls at all
    roles: tuple[str, ...] = ()  # roles that may run it; "*" = any role; empty = nobody
    signature: Signature | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError("use lowercase letters, digits, _ and -, starting with a letter")
        return v

    @field_validator("module")
    @classmethod
    def _module(cls, v: str) -> str:
        if v.startswith(".") or not _MODULE_FILE.fullmatch(v):
            raise ValueError("a plain .wasm or .wat file name next to the manifest")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("64 lowercase hex digits")
        return v

    @field_validator("allowed")
    @classmethod
    def _allowed(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            if not _ACTION.fullmatch(item):
                raise ValueError(f"{item!r}: expected connector:action or connector:*")
        return v

    @model_validator(mode="after")
    def _component_is_binary(self) -> ToolManifest:
        if self.kind == "component" and not self.module.endswith(".wasm"):
            raise ValueError("a component's module is a .wasm file")
        return self

    def allows(self, connector: str, action: str) -> bool:
        """Whether the manifest's ceiling lets a host call to `connector:action` through."""
        return f"{connector}:{action}" in self.allowed or f"{connector}:*" in self.allowed

    def runnable_by(self, role: str) -> bool:
        return "*" in self.roles or role in self.roles

    def canonical_bytes(self) -> bytes:
        """What a publisher signs: every field but the signature, as sorted compact JSON."""
        content = self.model_dump(mode="json", exclude={"signature"})
        if self.kind == "module":
            del content["kind"]  # signatures made before `kind` existed still verify
        return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class ManifestError(ConfigError):
    """A manifest file that cannot be used: unreadable, invalid, or badly signed."""


def load_manifest(path: Path) -> ToolManifest:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return ToolManifest.model_validate(data)
    except (OSError, yaml.YAMLError, ValueError) as e:
        raise ManifestError(f"{path}: {e}") from None


def sign(manifest: ToolManifest, publisher: str, key: Ed25519PrivateKey) -> ToolManifest:
    """The manifest with a publisher's signature over its canonical content (for publishers and tests)."""
    value = base64.b64encode(key.sign(manifest.canonical_bytes())).decode()
    return manifest.model_copy(update={"signature": Signature(publisher=publisher, ed25519=value)})


def verify_signature(
    manifest: ToolManifest, trusted: dict[str, Ed25519PublicKey], required: bool
) -> str | None:
    """None if the manifest's attestation holds, else the reason (fail closed: unknown publisher,
    undecodable or wrong signature, or a missing one where signatures are required)."""
    sig = manifest.signature
    if sig is None:
        return "the manifest is not signed and signatures are required" if required else None
    key = trusted.get(sig.publisher)
    if key is None:
        return f"publisher {sig.publisher!r} is not a trusted key"
    try:
        key.verify(base64.b64decode(sig.ed25519, validate=True), manifest.canonical_bytes())
    except (InvalidSignature, ValueError):
        return f"the signature of publisher {sig.publisher!r} does not verify"
    return None
