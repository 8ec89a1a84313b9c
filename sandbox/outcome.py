"""How a run ends, for every engine: one `Ending` in, one output or one `Refusal` out.

The WASI runner (sandbox/runner.py), the component runner (sandbox/component.py) and the Python
guest (sandbox/python_guest.py) stop for the same reasons, and an agent must get the same code for
the same reason whichever engine ran its code. Each engine therefore only describes how its call
ended, as plain values (`Ending`: no wasmtime object may outlive its store), and `judge` decides,
checking in this order:

- output over limits.max_output_bytes                               -> sandbox_bad_output
- trap OUT_OF_FUEL / "all fuel consumed"                             -> sandbox_fuel_exhausted
- trap INTERRUPT / "wasm trap: interrupt" (the epoch deadline)       -> sandbox_timeout
- a trap naming a memory limit, or a failed run whose memory ended
  within max(1 page, cap/8) of the cap                               -> sandbox_memory_limit
- any other trap, or a non-zero status                               -> sandbox_trap (+ stderr tail)
- (tools only) output that is not one JSON object                    -> sandbox_bad_output

Core modules report traps as a wasmtime `TrapCode` name; components and the Python guest as the
error's text (wasmtime-py raises their traps as a plain `WasmtimeError`), hence both spellings.
A refused `memory.grow` is not a trap (wasmtime's C API does not expose the limiter's grow-failed
hook), so where the engine can see the memory (core modules) the memory rule also looks at where it
ended. Every run-ending refusal carries `fuel_used`, which the gateway's audit record keeps.

`error_line` is the one place that picks the line of an error's text worth showing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.errors import Refusal
from sandbox.manifest import PAGE_BYTES, Limits

STDERR_TAIL_BYTES = 2048
MAX_LINE_CHARS = 200
_FUEL = ("OUT_OF_FUEL", "all fuel consumed")
_TIMEOUT = ("INTERRUPT", "wasm trap: interrupt")


@dataclass(frozen=True)
class RunResult:
    """A finished run, as every engine reports it."""

    output: dict[str, Any]
    fuel_used: int
    duration_ms: float
    host_calls: int


@dataclass(frozen=True)
class Ending:
    """How one guest call ended.

    `trap` is None when the guest returned (or exited); else its cause, a TrapCode name or an
    error's text. `status` is the guest's failure status: a WASI exit code, or 1 for a component's
    `err(...)`. `output` is None when the guest returned something that is not output at all.
    """

    fuel_left: int
    trap: str | None = None
    status: int = 0
    output: bytes | None = b""
    overflow: bool = False  # the guest wrote past max_output_bytes (its write failed)
    stderr: str = ""
    memory_bytes: int | None = None  # where the memory ended, when the engine can see it


def judge(subject: str, limits: Limits, ending: Ending) -> dict[str, Any]:
    """A tool's output object, or the `Refusal` that says why there is none."""
    fail(subject, limits, ending)
    output = _json_object(ending.output)
    if output is None:
        raise _refusal("sandbox_bad_output", f"{subject} did not print or return one JSON object", limits, ending)
    return output


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    """`raw` as a JSON object the gateway can send on as its answer, else None.

    Python's reader takes more than JSON: NaN and Infinity, `1e999` (inf), lone surrogate escapes
    (`"\\ud800"`, not writable as UTF-8), and nesting deep enough to exhaust the stack. Each of
    those would fail later, in the answer's rendering, as a 500 instead of this refusal; so the
    output counts only if it parses and writes back as strict UTF-8 JSON.
    """
    if raw is None:
        return None
    try:
        output = json.loads(raw, parse_constant=_not_json)
        if isinstance(output, dict):
            json.dumps(output, ensure_ascii=False, allow_nan=False).encode()
            return output
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        pass
    return None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def fail(subject: str, limits: Limits, ending: Ending) -> None:
    """Raise the `Refusal` for a run that broke a limit, trapped or failed; return if it did none."""
    if ending.overflow or len(ending.output or b"") > limits.max_output_bytes:
        raise _refusal("sandbox_bad_output", f"{subject} wrote more than limits.max_output_bytes ({limits.max_output_bytes})", limits, ending)
    trap = ending.trap
    if trap is not None and any(t in trap for t in _FUEL):
        raise _refusal("sandbox_fuel_exhausted", f"{subject} used up limits.fuel ({limits.fuel})", limits, ending)
    if trap is not None and any(t in trap for t in _TIMEOUT):
        raise _refusal("sandbox_timeout", f"{subject} ran past limits.timeout_ms ({limits.timeout_ms})", limits, ending)
    if trap is None and ending.status == 0:
        return
    slack = max(PAGE_BYTES, limits.memory_bytes // 8)
    near_cap = ending.memory_bytes is not None and ending.memory_bytes + slack > limits.memory_bytes
    if near_cap or (trap is not None and "memory" in trap and "limit" in trap):
        raise _refusal("sandbox_memory_limit", f"{subject} reached limits.memory_pages ({limits.memory_pages})", limits, ending)
    what = f"trapped: {error_line(trap)}" if trap is not None else f"exited with status {ending.status}"
    raise _refusal("sandbox_trap", f"{subject} {what}", limits, ending, stderr_tail=ending.stderr[-STDERR_TAIL_BYTES:])


def _refusal(code: str, message: str, limits: Limits, ending: Ending, **details: object) -> Refusal:
    return Refusal(code, message, details={**details, "fuel_used": limits.fuel - ending.fuel_left})


def error_line(text: str, *, first: bool = False, default: str = "unknown error") -> str:
    """The line of an error's text that names the cause, stripped and capped.

    wasmtime and Python tracebacks put the cause last ("unknown import: ...", "wasm trap: ..."); a
    compile error puts its summary first.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return default
    return (lines[0] if first else lines[-1])[:MAX_LINE_CHARS]
