"""Compiled modules, kept in memory by sha256 and serialized to the state directory.

Compiling is the slow part of a first run (milliseconds for a C tool, seconds for a large one), so a
module is compiled once per process and its machine code is written to disk, where a restarted
gateway loads it instead of compiling. A serialized module loads only under the same wasmtime
version and the same engine settings (fuel and epoch instrumentation change the code), so the file
name carries all three; a file that fails to load anyway is deleted and the module recompiled.

The cache dir must be as trusted as the rest of the state dir: a serialized module is native code that
wasmtime maps executable without re-validating it. Files are written owner-only and atomically.

The module's bytes are hashed before anything else on every miss in memory, including when a
serialized copy exists on disk: `sandbox_hash_mismatch` means the file beside the manifest differs,
and that is refused before compiling or loading anything. `compiles` and `disk_loads` count what the
cache did, so tests can show a refused module was never compiled.

`ComponentCache` is the same for `kind: component` tools (sandbox/component.py): a component engine's
flags differ, so its files are named by their own fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component

from gateway.errors import Refusal
from sandbox.outcome import error_line
from sandbox.precompile import CompileError, compile_in_child

# Must match the engine flags in sandbox/runner.py (`make_engine`); part of every cache file's name.
ENGINE_FLAGS = "consume_fuel=1,epoch_interruption=1"
# The same for component engines (sandbox/component.py, sandbox/python_guest.py).
COMPONENT_FLAGS = f"{ENGINE_FLAGS},component_model=1"


def engine_fingerprint(flags: str = ENGINE_FLAGS) -> str:
    """What a serialized module depends on: wasmtime's version, the engine flags and the machine."""
    text = f"wasmtime={version('wasmtime')};{flags};arch={platform.machine()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ModuleCache:
    flags = ENGINE_FLAGS

    def __init__(self, engine: wasmtime.Engine, cache_dir: Path | None):
        self._engine = engine
        self._dir = cache_dir
        self._fingerprint = engine_fingerprint(self.flags)
        self._modules: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.compiles = 0
        self.disk_loads = 0
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def get(self, sha256: str, path: Path) -> Any:
        """The compiled module attested by `sha256`, whose bytes are at `path`.

        Raises `Refusal("sandbox_hash_mismatch")` if the file's bytes hash differently (or cannot be
        read); nothing is compiled or loaded then. One thread compiles a given module at a time: the
        others wait for its result instead of compiling the same bytes in parallel.
        """
        module = self._modules.get(sha256)
        if module is not None:
            return module
        with self._guard:
            lock = self._locks.setdefault(sha256, threading.Lock())
        with lock:
            module = self._modules.get(sha256)
            if module is None:
                module = self._load_verified(sha256, path)
                self._modules[sha256] = module
        return module

    def _load_verified(self, sha256: str, path: Path) -> Any:
        try:
            data = path.read_bytes()
        except OSError:
            raise Refusal("sandbox_hash_mismatch", f"module file {path.name} cannot be read") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise Refusal("sandbox_hash_mismatch", f"module file {path.name} does not match the manifest's sha256")
        cached = self._disk_path(sha256)
        if cached is not None and cached.exists():
            try:
                module = self._deserialize(cached)
                self.disk_loads += 1
                return module
            except wasmtime.WasmtimeError:
                cached.unlink(missing_ok=True)
        module = self._compile_and_store(data, path, cached)
        self.compiles += 1
        return module

    def _compile_and_store(self, data: bytes, path: Path, cached: Path | None) -> Any:
        module = self._compile(data, path)
        if cached is not None:
            write_private(cached, bytes(module.serialize()))
        return module

    def _disk_path(self, sha256: str) -> Path | None:
        return None if self._dir is None else self._dir / f"{sha256}-{self._fingerprint}.cwasm"

    def _compile(self, data: bytes, path: Path) -> wasmtime.Module:
        """Raises `Refusal("sandbox_trap")` for bytes that are not a module (nothing to run)."""
        source: str | bytes = data.decode("utf-8") if path.suffix == ".wat" else data
        try:
            return wasmtime.Module(self._engine, source)
        except (wasmtime.WasmtimeError, UnicodeDecodeError) as e:
            raise Refusal("sandbox_trap", f"module file {path.name} does not compile: {error_line(str(e), first=True)}") from None

    def _deserialize(self, cached: Path) -> wasmtime.Module:
        return wasmtime.Module.deserialize_file(self._engine, str(cached))


class ComponentCache(ModuleCache):
    """Compiled components (`kind: component`), keyed and attested like modules."""

    flags = COMPONENT_FLAGS

    def _compile(self, data: bytes, path: Path) -> component.Component:  # type: ignore[override]  # a component cache
        try:
            return component.Component(self._engine, data)
        except wasmtime.WasmtimeError as e:
            raise Refusal("sandbox_trap", f"module file {path.name} is not a component: {error_line(str(e), first=True)}") from None

    def _compile_and_store(self, data: bytes, path: Path, cached: Path | None) -> component.Component:
        """With a cache dir, the compile (hundreds of MiB for a Python tool) happens in a child."""
        if cached is None:
            return self._compile(data, path)
        try:
            compile_in_child(data, cached)
        except CompileError as e:
            raise Refusal("sandbox_trap", f"module file {path.name} is not a component: {e}") from None
        return self._deserialize(cached)

    def _deserialize(self, cached: Path) -> component.Component:  # type: ignore[override]  # a component cache
        return component.Component.deserialize_file(self._engine, str(cached))


def write_private(path: Path, data: bytes) -> None:
    """Owner-only and atomic, so a reader never maps a half-written module."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
