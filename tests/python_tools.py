"""The sample Python tools, built once per test session (componentize-py, ~10 s) and compiled once.

The component is not committed (~18 MB, and its build is not reproducible), so tests build it from
`sandbox/tools/py_*` with `sandbox.build`, as `make tools` does. Compiling it takes ~10 s and
hundreds of MiB, so it is compiled once here into `cache_dir`; unit tests run on a runner over that
cache and gateways get a copy in their state dir, so each loads the machine code in milliseconds.
"""

from __future__ import annotations

import base64
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sandbox.build import BuildError, build_tool, componentize_py
from sandbox.cache import ComponentCache
from sandbox.component import make_component_engine
from sandbox.registry import MANIFEST_FILE, builtin_tools_dir


@dataclass(frozen=True)
class PythonTools:
    tools_dir: Path  # <name>/manifest.yaml + tool.wasm, loadable by ToolRegistry
    cache_dir: Path  # the compiled components (.cwasm)

    def manifest(self, tool: str, **overrides: Any) -> dict[str, Any]:
        data = yaml.safe_load((self.tools_dir / tool / MANIFEST_FILE).read_text())
        return {**data, **overrides}

    def module(self, tool: str) -> bytes:
        return (self.tools_dir / tool / "tool.wasm").read_bytes()

    def register_body(self, tool: str, **overrides: Any) -> dict[str, Any]:
        """A `POST /v1/tools` body for the built tool, manifest fields overridden."""
        return {"manifest": self.manifest(tool, **overrides), "module_base64": base64.b64encode(self.module(tool)).decode()}

    def variant(self, root: Path, tool: str, new_name: str, **overrides: Any) -> Path:
        """A renamed copy of a built tool under `root` (same component, so the same cache entry)."""
        dest = root / new_name
        dest.mkdir(parents=True)
        shutil.copy(self.tools_dir / tool / "tool.wasm", dest / "tool.wasm")
        (dest / MANIFEST_FILE).write_text(yaml.safe_dump(self.manifest(tool, name=new_name, **overrides)))
        return dest

    def seed(self, state_dir: Path) -> None:
        """Give a gateway's state dir the compiled components, as a previous run would have left them."""
        cache = state_dir / "sandbox-cache"
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        for f in self.cache_dir.glob("*.cwasm"):
            shutil.copy(f, cache / f.name)


def build_python_tools(root: Path) -> PythonTools:
    """Build and compile every `sandbox/tools/py_*`."""
    tools_dir, cache_dir = root / "tools", root / "cwasm"
    cache = ComponentCache(make_component_engine(), cache_dir)
    for source in sorted(builtin_tools_dir().glob("py_*")):
        manifest = build_tool(source, tools_dir)
        cache.get(manifest.sha256, tools_dir / manifest.name / manifest.module)
    return PythonTools(tools_dir, cache_dir)


__all__ = ["BuildError", "PythonTools", "build_python_tools", "componentize_py"]
