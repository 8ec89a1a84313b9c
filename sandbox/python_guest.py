"""Ad-hoc Python from agents: CPython 3.14 as a WASI preview 2 component, under the same limits.

The guest is the PyPI package `hyperlight-sandbox-python-guest` (optional: `pip install
hyperlight-sandbox-python-guest`), whose `python-sandbox.wasm` exports
`hyperlight:sandbox/executor.run(code) -> {stdout, stderr, exit-code}` and imports WASI p2,
`wasi:http` and `hyperlight:sandbox/tools.dispatch(name, args-json) -> result<string, string>`.

Security catch: with wasmtime's `add_wasi_http()` alone, the guest's `http_get` reaches the network
directly. `wasi:http/outgoing-handler.handle` is therefore shadowed by a function that answers
`HTTP-request-denied`, and the only way out is `call_tool("http_request", method=..., url=...,
headers=..., body=...)`, which `dispatch` sends through the same `EgressSession` as a C tool's
`egress.http_request` (manifest ceiling, call budget, deadline, then the gateway).

Compiling the component takes seconds and hundreds of MiB once, so it is serialized to the cache dir
(keyed like core modules, with the component-model flag) and loaded in milliseconds afterwards.
The code's input is bound to `INPUT` by a first line prepended to the source.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component

from sandbox.cache import COMPONENT_FLAGS, engine_fingerprint
from sandbox.component import make_component_engine
from sandbox.epoch import EpochTicker
from sandbox.hostcall import AbiError, EgressSession, HttpRequest, ResolveAction, bound, current
from sandbox.manifest import Limits, ToolManifest
from sandbox.outcome import STDERR_TAIL_BYTES, Ending, RunResult, fail
from sandbox.precompile import compile_in_child
from sandbox.runner import MAX_CONCURRENT_RUNS

GUEST_FLAGS = COMPONENT_FLAGS
DEFAULT_LIMITS = Limits(fuel=2_000_000_000, memory_pages=1024, timeout_ms=5000, max_output_bytes=65536)


def guest_wasm() -> bytes:
    """The packaged guest's bytes; ImportError when the optional package is not installed."""
    return resources.files("python_guest").joinpath("resources", "python-sandbox.wasm").read_bytes()


class PythonGuest:
    """One compiled CPython component; each `run` gets a fresh store and instance."""

    def __init__(self, cache_dir: Path | None, max_workers: int = MAX_CONCURRENT_RUNS, tick_ms: int = 10):
        self.engine = make_component_engine()
        self.compiled = False  # True when this instance compiled rather than loaded the component
        data = guest_wasm()
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._component = self._load(data, cache_dir)
        self._linker = self._make_linker()
        self._tick_ms = tick_ms
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sandbox-py")
        self._ticker = EpochTicker(self.engine, tick_ms / 1000)
        self._ticker.start()

    def close(self) -> None:
        self._ticker.stop()
        self._executor.shutdown(wait=True)

    def ceiling(self, allowed: tuple[str, ...] = (), limits: Limits = DEFAULT_LIMITS) -> ToolManifest:
        """The manifest an ad-hoc snippet runs under: the caller picks its allowed actions and limits."""
        return ToolManifest(
            name="python", module="python-sandbox.wasm", sha256=self.sha256, allowed=allowed, limits=limits, roles=("*",)
        )

    async def run_async(
        self, code: str, tool_input: dict[str, Any], ceiling: ToolManifest,
        http_request: HttpRequest, resolve_action: ResolveAction, decision_id: str,
    ) -> RunResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self.run, code, tool_input, ceiling, http_request, resolve_action, decision_id
        )

    def run(
        self, code: str, tool_input: dict[str, Any], ceiling: ToolManifest,
        http_request: HttpRequest, resolve_action: ResolveAction, decision_id: str,
    ) -> RunResult:
        """Run `code` with `INPUT` bound; output is {stdout, stderr, exit_code}. Raises `Refusal`."""
        limits = ceiling.limits
        source = f"INPUT = __import__('json').loads({json.dumps(json.dumps(tool_input))})\n{code}"
        started = time.monotonic()
        session = EgressSession(
            manifest=ceiling, http_request=http_request, resolve_action=resolve_action,
            deadline=started + limits.timeout_ms / 1000, clock=time.monotonic, decision_id=decision_id,
        )
        with bound(session), self._ticker.running():
            result, ending = self._execute(source, limits)
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        fail("python", limits, ending)
        output = {"stdout": str(result["stdout"]), "stderr": ending.stderr, "exit_code": int(result["exit-code"])}
        return RunResult(output=output, fuel_used=limits.fuel - ending.fuel_left, duration_ms=duration_ms, host_calls=session.calls)

    def _execute(self, source: str, limits: Limits) -> tuple[dict[str, Any], Ending]:
        """The executor's {stdout, stderr, exit-code} (its exit code is output, not a failure) and how it ended."""
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_fuel(limits.fuel)
        store.set_epoch_deadline(math.ceil(limits.timeout_ms / self._tick_ms) + 1)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_wasi_http()
        try:
            try:
                instance = self._linker.instantiate(store, self._component)
                executor = instance.get_export_index(store, "hyperlight:sandbox/executor")
                index = instance.get_export_index(store, "run", executor) if executor is not None else None
                run = instance.get_func(store, index) if index is not None else None
                if run is None:
                    return {}, Ending(fuel_left=store.get_fuel(), trap="the guest exports no executor.run")
                result = dict(run(store, source).__dict__)
                run.post_return(store)
            except wasmtime.WasmtimeError as e:
                traceback.clear_frames(e.__traceback__)
                return {}, Ending(fuel_left=store.get_fuel(), trap=str(e))
            stdout, stderr = str(result["stdout"]), str(result["stderr"])
            return result, Ending(fuel_left=store.get_fuel(), output=stdout.encode(), stderr=stderr[-STDERR_TAIL_BYTES:])
        finally:
            del store

    def _load(self, data: bytes, cache_dir: Path | None) -> component.Component:
        cached = None if cache_dir is None else cache_dir / f"{self.sha256}-{engine_fingerprint(GUEST_FLAGS)}.cwasm"
        if cached is not None and cached.exists():
            try:
                return component.Component.deserialize_file(self.engine, str(cached))
            except wasmtime.WasmtimeError:
                cached.unlink(missing_ok=True)
        self.compiled = True
        if cached is None:
            return component.Component(self.engine, data)
        cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        compile_in_child(data, cached)  # its ~500 MiB peak stays out of the gateway (sandbox/precompile.py)
        return component.Component.deserialize_file(self.engine, str(cached))

    def _make_linker(self) -> component.Linker:
        linker = component.Linker(self.engine)
        linker.add_wasip2()
        linker.add_wasi_http()
        linker.allow_shadowing = True
        with linker.root() as root:
            with root.add_instance("hyperlight:sandbox/tools") as tools:
                tools.add_func("dispatch", _dispatch)
            with root.add_instance("wasi:http/outgoing-handler@0.2.0") as handler:
                handler.add_func("handle", _refuse_direct_http)
        return linker


def _dispatch(store: Any, name: str, args_json: str) -> component.Variant:
    """`call_tool(name, **kwargs)` from the guest (it returns the JSON response decoded). Never raises."""
    try:
        session = current()
        if session is None or name != "http_request":
            return component.Variant("err", f"unknown tool {name!r}; the only one is 'http_request'")
        return component.Variant("ok", session.request(args_json.encode()).decode())
    except AbiError:
        return component.Variant("err", "http_request takes method, url, and optional headers and body")
    except Exception:  # noqa: BLE001 - fail closed
        return component.Variant("err", "http_request failed")


def _refuse_direct_http(store: Any, *args: Any) -> component.Variant:
    """Shadows `wasi:http/outgoing-handler.handle`: the guest never opens a connection of its own."""
    return component.Variant("HTTP-request-denied")
