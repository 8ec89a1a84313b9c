"""Run a `kind: component` tool: a component of the world in sandbox/wit/tool.wit, under its manifest.

Registered Python tools are built into such components with componentize-py (sandbox/build.py). With
`--stub-wasi` their one import is our `egress:tool/http.request`, so the linker here defines nothing
else: no WASI at all (no files, environment, clocks or sockets; the stubs trap if reached). A component
that imports anything more is refused before it runs.

The limits are the WASI runner's: an engine with fuel metering and epoch interruption, a fresh
`Store` per run with the manifest's fuel, a memory cap and an epoch deadline advanced by a ticker.
The import sends through the same `EgressSession` as a C tool's `egress.http_request`
(sandbox/hostcall.py: call budget, deadline, the manifest's ceiling, then the sender), so a refusal
comes back to the guest as an ordinary response carrying the gateway's JSON error.

How a run ends maps to the same codes as a WASI tool (sandbox/outcome.py): `ok(json)` is the output,
`err(message)` a failure with status 1 whose message is the stderr tail; a component whose initial
memory is over limits.memory_pages fails to instantiate with a memory-limit trap.
A refused memory growth is a Python `MemoryError` inside the guest: caught, it is the tool's own
`err`; uncaught it traps like any uncaught exception (componentize-py prints the traceback through
the stubbed WASI stderr, which traps), and wasmtime's component API does not expose the memory's
size afterwards, so that case is `sandbox_trap`, not `sandbox_memory_limit`.

wasmtime-py raises component traps as a plain `WasmtimeError` whose text ends with the cause, hence
the matching on that text in sandbox/outcome.py. The host function never raises into wasmtime-py.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component

from gateway.errors import Refusal
from sandbox.cache import ComponentCache
from sandbox.epoch import EpochTicker
from sandbox.hostcall import AbiError, EgressSession, HttpRequest, ResolveAction, bound, current
from sandbox.outcome import Ending, RunResult, error_line, judge
from sandbox.registry import Tool

HTTP_INTERFACE = "egress:tool/http@0.1.0"


def make_component_engine() -> wasmtime.Engine:
    """Fuel, epochs and the component model: the flags in sandbox/cache.py's COMPONENT_FLAGS."""
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.wasm_component_model = True
    return wasmtime.Engine(config)


class ComponentRunner:
    """Compiles (once, cached on disk), checks and runs components; `run` blocks its thread."""

    def __init__(self, engine: wasmtime.Engine, cache_dir: Path | None, tick_ms: int):
        self.engine = engine
        self.cache = ComponentCache(engine, cache_dir)
        self._tick_ms = tick_ms
        self._linker = component.Linker(engine)
        with self._linker.root() as root, root.add_instance(HTTP_INTERFACE) as http:
            http.add_func("request", _request)
        self._checked: set[str] = set()
        self._check_lock = threading.Lock()
        self._ticker = EpochTicker(engine, tick_ms / 1000)
        self._ticker.start()

    def close(self) -> None:
        self._ticker.stop()

    def prepare(self, tool: Tool) -> component.Component:
        """The compiled component, refused if it imports anything but our http interface."""
        compiled = self.cache.get(tool.manifest.sha256, tool.module_path)
        if tool.manifest.sha256 not in self._checked:
            with self._check_lock:
                extra = sorted(set(compiled.type.imports(self.engine)) - {HTTP_INTERFACE})
                if extra:
                    reason = error_line(", ".join(extra))
                    raise Refusal("sandbox_forbidden", f"tool {tool.name!r} cannot be linked: it imports {reason}")
                self._checked.add(tool.manifest.sha256)
        return compiled

    def run(
        self, tool: Tool, input_json: bytes, http_request: HttpRequest, resolve_action: ResolveAction, decision_id: str
    ) -> RunResult:
        """Run `tool` in this thread (a first run's compile is not its duration). Raises `Refusal`."""
        limits = tool.manifest.limits
        compiled = self.prepare(tool)
        started = time.monotonic()
        session = EgressSession(
            manifest=tool.manifest, http_request=http_request, resolve_action=resolve_action,
            deadline=started + limits.timeout_ms / 1000, clock=time.monotonic, decision_id=decision_id,
        )
        with bound(session), self._ticker.running():
            ending = self._execute(compiled, tool, input_json.decode())
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        output = judge(f"tool {tool.name!r}", limits, ending)
        return RunResult(output, limits.fuel - ending.fuel_left, duration_ms, session.calls)

    def _execute(self, compiled: component.Component, tool: Tool, input_json: str) -> Ending:
        limits = tool.manifest.limits
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_fuel(limits.fuel)
        store.set_epoch_deadline(math.ceil(limits.timeout_ms / self._tick_ms) + 1)
        try:
            result: object = None
            try:
                instance = self._linker.instantiate(store, compiled)
                run = instance.get_func(store, "run")
                if run is None:
                    return Ending(fuel_left=store.get_fuel(), trap="the component exports no run function")
                result = run(store, input_json)
                run.post_return(store)
            except wasmtime.WasmtimeError as e:
                traceback.clear_frames(e.__traceback__)
                return Ending(fuel_left=store.get_fuel(), trap=str(e))
            return _ending(result, store.get_fuel())
        finally:
            del store


def _ending(result: object, fuel_left: int) -> Ending:
    """The export's `result<string, string>` as an Ending; anything else is no output at all."""
    if not isinstance(result, component.Variant) or not isinstance(result.payload, str):
        return Ending(fuel_left=fuel_left, output=None)
    if result.tag == "err":
        return Ending(fuel_left=fuel_left, status=1, stderr=result.payload)
    return Ending(fuel_left=fuel_left, output=result.payload.encode())


def _request(store: Any, request_json: str) -> component.Variant:
    """`egress:tool/http.request`: the run's EgressSession decides and sends. Never raises."""
    try:
        session = current()
        if session is None:
            return component.Variant("err", "no run is in progress")
        return component.Variant("ok", session.request(request_json.encode()).decode())
    except AbiError:
        return component.Variant("err", "the request is not {method, url, headers?, body?} JSON of at most 1 MiB")
    except Exception:  # noqa: BLE001 - fail closed, never raise into wasmtime-py
        return component.Variant("err", "http request failed")
