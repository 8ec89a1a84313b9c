"""The registered tools: one directory per tool holding `manifest.yaml` and its module.

The gateway loads two directories: the shipped (or configured) tools and the state dir's `tools/`,
which `POST /v1/tools` fills (sandbox/registration.py); a name may be registered once.

A manifest that does not parse is left out and its reason kept in `errors` (one broken tool must not
take the others down). A manifest whose signature does not verify is kept but marked, so a run of it
is refused as `sandbox_hash_mismatch` with the reason rather than looking like an unknown tool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sandbox.manifest import ManifestError, ToolManifest, load_manifest, verify_signature

MANIFEST_FILE = "manifest.yaml"


@dataclass(frozen=True)
class Tool:
    manifest: ToolManifest
    module_path: Path
    attestation_error: str | None = None  # set when the manifest's signature failed to verify

    @property
    def name(self) -> str:
        return self.manifest.name


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()):
        self._tools: dict[str, Tool] = {}
        self.errors: dict[str, str] = {}  # manifest path -> why it was not registered
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ManifestError(f"tool {tool.name!r} is registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def visible_to(self, role: str) -> list[str]:
        """The tools `role` may run: what a tool list shows, so it never offers a tool that refuses."""
        return [n for n in self.names() if self._tools[n].manifest.runnable_by(role)]

    @classmethod
    def load(
        cls,
        directory: Path,
        trusted_publishers: Mapping[str, Ed25519PublicKey] | None = None,
        require_signature: bool = False,
    ) -> ToolRegistry:
        """Every `*/manifest.yaml` under `directory`, with signatures checked against `trusted_publishers`."""
        registry = cls()
        registry.load_dir(directory, trusted_publishers, require_signature)
        return registry

    def load_dir(
        self,
        directory: Path,
        trusted_publishers: Mapping[str, Ed25519PublicKey] | None = None,
        require_signature: bool = False,
    ) -> None:
        """Add the tools of another directory; one whose name is already taken goes to `errors`."""
        trusted = dict(trusted_publishers or {})
        for path in sorted(Path(directory).glob(f"*/{MANIFEST_FILE}")):
            try:
                manifest = load_manifest(path)
                tool = Tool(
                    manifest=manifest,
                    module_path=path.parent / manifest.module,
                    attestation_error=verify_signature(manifest, trusted, require_signature),
                )
                self.add(tool)
            except ManifestError as e:
                self.errors[str(path)] = str(e)


def builtin_tools_dir() -> Path:
    """The sample tools shipped in this package (sandbox/tools/)."""
    return Path(__file__).parent / "tools"
