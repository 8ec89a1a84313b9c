"""The sample Python tools, built once per test session (componentize-py, ~10 s) and compiled once.

The component is not committed (~18 MB, and its build is not reproducible), so tests build it from
`sandbox/tools/py_*` with `sandbox.build`, as `make tools` does. Compiling it takes ~10 s and
hundreds of MiB, so it is compiled once here into `cache_dir`; unit tests run on a runner over that
cache and gateways get a copy in their state dir, so each loads the machine code in milliseconds.

Together with the CPython guest's compile that is ~40 s of CPU (~90 s on a loaded machine) that no
test needs to watch: `Prebuild` does both in a background process at the lowest priority from the
session's start, in CPU the tests leave idle (they mostly wait on gateways, sockets and sleeps),
and the tests that need them run last (the root conftest orders them) and wait only for what is left.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sandbox.build import BuildError, build_tool, componentize_py
from sandbox.cache import ComponentCache
from sandbox.component import make_component_engine
from sandbox.registry import MANIFEST_FILE, builtin_tools_dir
from tests.fakes import REPO
from tests.processes import _die_with_the_test_run


@dataclass(frozen=True)
class PythonTools:
    tools_dir: Path  # <name>/manifest.yaml + tool.wasm, loadable by ToolRegistry
    cache_dir: Path  # the compiled components (.cwasm)

    @classmethod
    def under(cls, root: Path) -> PythonTools:
        return cls(root / "tools", root / "cwasm")

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
    built = PythonTools.under(root)
    cache = ComponentCache(make_component_engine(), built.cache_dir)
    for source in sorted(builtin_tools_dir().glob("py_*")):
        manifest = build_tool(source, built.tools_dir)
        cache.get(manifest.sha256, built.tools_dir / manifest.name / manifest.module)
    return built


def compile_python_guest(cache_dir: Path) -> None:
    """The CPython guest compiled into `cache_dir` (loaded from it when it is there already)."""
    from sandbox.python_guest import PythonGuest

    PythonGuest(cache_dir=cache_dir).close()


def _lowest_priority() -> None:
    os.nice(19)
    _die_with_the_test_run()


class Prebuild:
    """`python -m tests.python_tools` in the background at nice 19: builds the tools under
    `tools_root` and compiles the guest into `guest_cache` (either may be None: not needed)."""

    def __init__(self, log: Path, tools_root: Path | None, guest_cache: Path | None) -> None:
        self.log, self.tools_root, self.guest_cache = log, tools_root, guest_cache
        self.proc: subprocess.Popen[bytes] | None = None
        if tools_root is None and guest_cache is None:
            return
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.python_tools", str(tools_root or ""), str(guest_cache or "")],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=_lowest_priority, start_new_session=True,
            )

    def wait(self) -> None:
        """Until the build is done; its log in the error when it failed. A test waits for it now:
        the rest runs at normal priority (the whole process group: every thread, componentize-py),
        where the system lets an unprivileged process raise it back."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(PermissionError, ProcessLookupError):
                os.setpriority(os.PRIO_PGRP, self.proc.pid, 0)
        if self.proc is not None and self.proc.wait(timeout=900) != 0:
            raise RuntimeError(f"the background build failed ({self.proc.returncode}):\n{self.log.read_text(errors='replace')[-4000:]}")

    def tools(self) -> PythonTools:
        assert self.tools_root is not None, "python_tools is requested by a collected test's fixtures, never dynamically"
        self.wait()
        return PythonTools.under(self.tools_root)

    def stop(self) -> None:
        """At the session's end: a build still running (a run stopped early) goes, componentize-py too."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


__all__ = ["BuildError", "Prebuild", "PythonTools", "build_python_tools", "compile_python_guest", "componentize_py"]

if __name__ == "__main__":
    if sys.argv[1]:
        build_python_tools(Path(sys.argv[1]))
    if sys.argv[2]:
        compile_python_guest(Path(sys.argv[2]))
