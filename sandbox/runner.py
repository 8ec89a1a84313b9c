"""Run one tool module under its manifest's limits, and say precisely why a run stopped.

One `Engine` per runner, built with fuel metering and epoch interruption; a fresh `Store` per run
with the manifest's fuel, a memory cap (`Store.set_limits`) and an epoch deadline. A single ticker
thread advances the engine's epoch every `tick_ms`, so the deadline is wall-clock time with that
granularity, and it interrupts guest code, not host calls (those check the deadline before starting).

The guest gets WASI preview 1 with stdin = the input JSON (from memory, through the C API's
`wasi_config_set_stdin_bytes`, which wasmtime-py does not wrap), stdout and stderr captured in memory
(stdout capped at `max_output_bytes`: writes past it fail inside the guest and the run is refused),
argv = [tool name], no environment and no preopened directory. `poll_oneoff` is shadowed to fail
with ENOTSUP: a guest sleeping in the host would hold a worker thread past any epoch deadline.
Its one other import is `egress.http_request` (sandbox/hostcall.py). A `kind: component` tool runs
on the component engine of sandbox/component.py instead, under the same limits and worker pool.

How a run's end maps to a refusal code is sandbox/outcome.py's, shared with the other engines; this
engine adds what only it can see: stdout past the cap, and where the memory ended.

Stores must be dropped on the run's own thread: wasmtime runs WASI's stdout callbacks on its own
worker threads, and a store left to the garbage collector can be finalized during interpreter
shutdown, where that callback aborts the process. Hence `traceback.clear_frames` on every caught
wasm error, whose traceback would otherwise keep the store alive in a reference cycle.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import math
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from wasmtime import _ffi as wasmtime_ffi

from gateway.errors import Refusal
from sandbox.cache import ModuleCache
from sandbox.component import ComponentRunner, make_component_engine
from sandbox.epoch import EpochTicker
from sandbox.hostcall import EgressSession, HttpRequest, ResolveAction, bound, define_import
from sandbox.manifest import PAGE_BYTES
from sandbox.outcome import STDERR_TAIL_BYTES, Ending, RunResult, error_line, judge
from sandbox.registry import Tool

MAX_CONCURRENT_RUNS = 20
_ENOTSUP = 58  # WASI errno


@dataclass(frozen=True)
class _Prepared:
    pre: wasmtime.InstancePre
    min_memory_bytes: int  # the largest initial size any of the module's memories declares


def make_engine() -> wasmtime.Engine:
    """The engine every run shares; its flags are part of the serialized-module cache key."""
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    return wasmtime.Engine(config)


class _Capture:
    """A WASI output stream held in memory. Called on wasmtime's threads; never raises."""

    def __init__(self, cap: int, keep_tail: bool):
        self.data = bytearray()
        self.cap = cap
        self.keep_tail = keep_tail
        self.overflow = False

    def write(self, chunk: bytes) -> int:
        if self.keep_tail:
            self.data += chunk
            del self.data[: max(0, len(self.data) - self.cap)]
            return len(chunk)
        if len(self.data) + len(chunk) > self.cap:
            self.overflow = True
            return -errno.EFBIG
        self.data += chunk
        return len(chunk)


class SandboxRunner:
    """Compiles, caches and runs tool modules; `run` is blocking, `run_async` uses the worker pool."""

    def __init__(self, cache_dir: Path | None = None, max_workers: int = MAX_CONCURRENT_RUNS, tick_ms: int = 10):
        self.engine = make_engine()
        self.cache = ModuleCache(self.engine, cache_dir)
        self._tick_ms = tick_ms
        self._linker = wasmtime.Linker(self.engine)
        self._linker.define_wasi()
        self._linker.allow_shadowing = True
        i32 = wasmtime.ValType.i32()
        self._linker.define_func(
            "wasi_snapshot_preview1", "poll_oneoff", wasmtime.FuncType([i32] * 4, [i32]), lambda *_: _ENOTSUP
        )
        define_import(self._linker)
        self._prepared: dict[str, _Prepared] = {}
        self._prepare_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sandbox-run")
        self._ticker = EpochTicker(self.engine, tick_ms / 1000)
        self._ticker.start()
        self.components = ComponentRunner(make_component_engine(), cache_dir, tick_ms)

    def close(self) -> None:
        self._ticker.stop()
        self.components.close()
        self._executor.shutdown(wait=True)

    def prepare(self, tool: Tool) -> None:
        """Compile (or load) and link-check `tool` without running it: a registration's first check."""
        if tool.manifest.kind == "component":
            self.components.prepare(tool)
        else:
            self._prepare(tool)

    async def run_async(
        self, tool: Tool, input_json: bytes, http_request: HttpRequest, resolve_action: ResolveAction, decision_id: str
    ) -> RunResult:
        """`run` on the runner's bounded worker pool: the event loop keeps serving while the tool runs."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self.run, tool, input_json, http_request, resolve_action, decision_id
        )

    def run(
        self, tool: Tool, input_json: bytes, http_request: HttpRequest, resolve_action: ResolveAction, decision_id: str
    ) -> RunResult:
        """Run `tool` on `input_json` in this thread. Raises `Refusal` with a sandbox code.

        `decision_id` is the run's, carried by every refusal its host calls get.
        """
        if tool.manifest.kind == "component":
            return self.components.run(tool, input_json, http_request, resolve_action, decision_id)
        limits = tool.manifest.limits
        prepared = self._prepare(tool)
        if prepared.min_memory_bytes > limits.memory_bytes:
            raise Refusal(
                "sandbox_memory_limit",
                f"tool {tool.name!r} declares {prepared.min_memory_bytes} bytes of memory, over limits.memory_pages",
            )
        started = time.monotonic()
        session = EgressSession(
            manifest=tool.manifest,
            http_request=http_request,
            resolve_action=resolve_action,
            deadline=started + limits.timeout_ms / 1000,
            clock=time.monotonic,
            decision_id=decision_id,
        )
        stdout = _Capture(limits.max_output_bytes, keep_tail=False)
        stderr = _Capture(STDERR_TAIL_BYTES, keep_tail=True)
        with bound(session), self._ticker.running():
            ending = self._execute(prepared, tool, input_json, stdout, stderr)
        duration_ms = (time.monotonic() - started) * 1000
        output = judge(f"tool {tool.name!r}", limits, ending)
        return RunResult(
            output=output,
            fuel_used=limits.fuel - ending.fuel_left,
            duration_ms=round(duration_ms, 3),
            host_calls=session.calls,
        )

    def _prepare(self, tool: Tool) -> _Prepared:
        sha = tool.manifest.sha256
        prepared = self._prepared.get(sha)
        if prepared is not None:
            return prepared
        module = self.cache.get(sha, tool.module_path)
        with self._prepare_lock:
            prepared = self._prepared.get(sha)
            if prepared is None:
                try:
                    pre = self._linker.instantiate_pre(module)
                except wasmtime.WasmtimeError as e:
                    reason = error_line(str(e))
                    traceback.clear_frames(e.__traceback__)
                    raise Refusal("sandbox_forbidden", f"tool {tool.name!r} cannot be linked: {reason}") from None
                prepared = _Prepared(pre=pre, min_memory_bytes=_min_memory(module))
                self._prepared[sha] = prepared
        return prepared

    def _execute(
        self, prepared: _Prepared, tool: Tool, input_json: bytes, stdout: _Capture, stderr: _Capture
    ) -> Ending:
        limits = tool.manifest.limits
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=limits.memory_bytes, table_elements=100_000, instances=1, tables=4, memories=1)
        store.set_fuel(limits.fuel)
        store.set_epoch_deadline(math.ceil(limits.timeout_ms / self._tick_ms) + 1)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [tool.name]
        _set_stdin(wasi, input_json)
        wasi.stdout_custom = stdout.write
        wasi.stderr_custom = stderr.write
        store.set_wasi(wasi)
        instance: wasmtime.Instance | None = None
        try:
            status, trap = 0, None
            try:
                instance = prepared.pre.instantiate(store)
                start = instance.exports(store).get("_start")
                if not isinstance(start, wasmtime.Func):
                    trap = "the module exports no _start function"
                else:
                    start(store)
            except wasmtime.ExitTrap as e:
                status = e.code
                traceback.clear_frames(e.__traceback__)
            except wasmtime.Trap as e:
                code = e.trap_code
                trap = code.name if code is not None else e.message
                traceback.clear_frames(e.__traceback__)
            except wasmtime.WasmtimeError as e:
                trap = str(e)
                traceback.clear_frames(e.__traceback__)
            memory = instance.exports(store).get("memory") if instance is not None else None
            return Ending(
                fuel_left=store.get_fuel(), trap=trap, status=status, output=bytes(stdout.data),
                overflow=stdout.overflow, stderr=stderr.data.decode("utf-8", errors="replace"),
                memory_bytes=memory.data_len(store) if isinstance(memory, wasmtime.Memory) else None,
            )
        finally:
            del instance, wasi, store


def _set_stdin(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """stdin from memory: the C API's `wasi_config_set_stdin_bytes` takes ownership of a fresh vec."""
    vec = wasmtime_ffi.wasm_byte_vec_t()
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    wasmtime_ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buf)
    wasmtime_ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))


def _min_memory(module: wasmtime.Module) -> int:
    types = [i.type for i in module.imports] + [e.type for e in module.exports]
    sizes = [t.limits.min * PAGE_BYTES for t in types if isinstance(t, wasmtime.MemoryType)]
    return max(sizes, default=0)
