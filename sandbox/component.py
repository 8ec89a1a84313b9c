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

How a run ends maps to the same codes as a WASI tool:
- `ok` that is not one JSON object, or over limits.max_output_bytes  -> sandbox_bad_output
- trap "all fuel consumed"                                           -> sandbox_fuel_exhausted
- trap "interrupt" (epoch deadline)                                  -> sandbox_timeout
- a component whose initial memory is over limits.memory_pages       -> sandbox_memory_limit
- `err(message)` from the tool, or any other trap                    -> sandbox_trap
A refused memory growth is a Python `MemoryError` inside the guest: caught, it is the tool's own
`err`; uncaught it traps like any uncaught exception (componentize-py prints the traceback through
the stubbed WASI stderr, which traps), and wasmtime's component API does not expose the memory's
size afterwards, so that case is `sandbox_trap`, not `sandbox_memory_limit`.

wasmtime-py raises component traps as a plain `WasmtimeError` whose text ends with the cause, hence
the matching on that text (as python_guest does). The host function never raises into wasmtime-py.
"""

from __future__ import annotations

import json
import math
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component

from gateway.errors import Refusal
from sandbox.cache import ComponentCache
from sandbox.hostcall import AbiError, EgressSession, HttpRequest, ResolveAction, bound, current
from sandbox.registry import Tool

HTTP_INTERFACE = "egress:tool/http@0.1.0"
MESSAGE_TAIL_CHARS = 2048


@dataclass(frozen=True)
class ComponentOutcome:
    """How the call ended, as plain values (no wasmtime object may outlive the run)."""

    result: component.Variant | None  # the export's result<string, string>, or None if it trapped
    error: str  # the trap or instantiation error's text when `result` is None
    fuel_left: int


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
        with self._linker.root() as root:
            with root.add_instance(HTTP_INTERFACE) as http:
                http.add_func("request", _request)
        self._checked: set[str] = set()
        self._check_lock = threading.Lock()

    def prepare(self, tool: Tool) -> component.Component:
        """The compiled component, refused if it imports anything but our http interface."""
        compiled = self.cache.get(tool.manifest.sha256, tool.module_path)
        if tool.manifest.sha256 not in self._checked:
            with self._check_lock:
                extra = sorted(set(compiled.type.imports(self.engine)) - {HTTP_INTERFACE})
                if extra:
                    raise Refusal("sandbox_forbidden", f"tool {tool.name!r} cannot be linked: it imports {', '.join(extra)[:200]}")
                self._checked.add(tool.manifest.sha256)
        return compiled

    def run(
        self, tool: Tool, input_json: bytes, http_request: HttpRequest, resolve_action: ResolveAction
    ) -> tuple[dict[str, Any], int, int]:
        """(output, fuel used, host calls made). Raises `Refusal` with a sandbox code."""
        limits = tool.manifest.limits
        compiled = self.prepare(tool)
        session = EgressSession(
            manifest=tool.manifest, http_request=http_request, resolve_action=resolve_action,
            deadline=time.monotonic() + limits.timeout_ms / 1000, clock=time.monotonic,
        )
        with bound(session):
            outcome = self._execute(compiled, tool, input_json.decode())
        return _judge(tool, outcome), limits.fuel - outcome.fuel_left, session.calls

    def _execute(self, compiled: component.Component, tool: Tool, input_json: str) -> ComponentOutcome:
        limits = tool.manifest.limits
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_fuel(limits.fuel)
        store.set_epoch_deadline(math.ceil(limits.timeout_ms / self._tick_ms) + 1)
        try:
            result: component.Variant | None = None
            error = ""
            try:
                instance = self._linker.instantiate(store, compiled)
                run = instance.get_func(store, "run")
                if run is None:
                    error = "the component exports no run function"
                else:
                    result = run(store, input_json)
                    run.post_return(store)
            except wasmtime.WasmtimeError as e:
                result, error = None, str(e)
                traceback.clear_frames(e.__traceback__)
            return ComponentOutcome(result, error, store.get_fuel())
        finally:
            del store


def _judge(tool: Tool, outcome: ComponentOutcome) -> dict[str, Any]:
    """The run's output object, or the Refusal that says why there is none."""
    name, limits = tool.name, tool.manifest.limits
    result = outcome.result
    if result is None:
        raise _trap_refusal(name, outcome.error, limits.fuel, limits.timeout_ms, limits.memory_pages)
    if not isinstance(result, component.Variant) or not isinstance(result.payload, str):
        raise Refusal("sandbox_bad_output", f"tool {name!r} did not return result<string, string>")
    if result.tag == "err":
        raise Refusal("sandbox_trap", f"tool {name!r} returned an error", details={"stderr_tail": result.payload[-MESSAGE_TAIL_CHARS:]})
    if len(result.payload.encode()) > limits.max_output_bytes:
        raise Refusal("sandbox_bad_output", f"tool {name!r} returned more than limits.max_output_bytes ({limits.max_output_bytes})")
    try:
        output = json.loads(result.payload)
    except ValueError:
        output = None
    if not isinstance(output, dict):
        raise Refusal("sandbox_bad_output", f"tool {name!r} did not return one JSON object")
    return output


def _trap_refusal(name: str, error: str, fuel: int, timeout_ms: int, memory_pages: int) -> Refusal:
    if "all fuel consumed" in error:
        return Refusal("sandbox_fuel_exhausted", f"tool {name!r} used up limits.fuel ({fuel})")
    if "wasm trap: interrupt" in error:
        return Refusal("sandbox_timeout", f"tool {name!r} ran past limits.timeout_ms ({timeout_ms})")
    if "exceeds memory limits" in error:
        return Refusal("sandbox_memory_limit", f"tool {name!r} needs more memory than limits.memory_pages ({memory_pages})")
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return Refusal("sandbox_trap", f"tool {name!r} trapped: {lines[-1][:200] if lines else 'unknown error'}")


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
