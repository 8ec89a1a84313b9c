"""Every limit trips with its own code, and other failures map to theirs."""

from __future__ import annotations

import pytest

from gateway.errors import Refusal
from sandbox.registry import ToolRegistry

# A WASI command that writes `text` to fd 1 (stdout) or 2 (stderr) and then runs `tail`.
_WRITE_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{text}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {length}))
    (drop (call $fd_write (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 16)))
    {tail}))
"""


def _writer(text: str, fd: int = 1, tail: str = "") -> str:
    return _WRITE_WAT.format(text=text.replace('"', '\\"'), length=len(text), fd=fd, tail=tail)


def test_infinite_loop_stops_at_the_deadline(run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refusal) as e:
        run("spin")
    assert e.value.code == "sandbox_timeout"
    assert e.value.status == 504


def test_infinite_loop_stops_when_fuel_runs_out(run, make_variant, tools_dir) -> None:  # type: ignore[no-untyped-def]
    make_variant("spin", "spin_low_fuel", limits={"fuel": 2_000_000, "timeout_ms": 10_000})
    with pytest.raises(Refusal) as e:
        run("spin_low_fuel", tools=ToolRegistry.load(tools_dir))
    assert e.value.code == "sandbox_fuel_exhausted"


def test_memory_bomb_hits_the_memory_cap(run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refusal) as e:
        run("memory_bomb")
    assert e.value.code == "sandbox_memory_limit"


def test_declared_memory_over_the_cap_is_refused_before_running(run, make_tool, tools_dir) -> None:  # type: ignore[no-untyped-def]
    make_tool("big_memory", '(module (memory (export "memory") 100) (func (export "_start")))', ".wat",
              limits={"memory_pages": 16})
    with pytest.raises(Refusal) as e:
        run("big_memory", tools=ToolRegistry.load(tools_dir))
    assert e.value.code == "sandbox_memory_limit"


def test_output_flood_is_bad_output(run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refusal) as e:
        run("output_flood")
    assert e.value.code == "sandbox_bad_output"


def test_output_that_is_not_a_json_object_is_bad_output(run, make_tool, tools_dir) -> None:  # type: ignore[no-untyped-def]
    make_tool("not_json", _writer("hello"), ".wat")
    make_tool("json_list", _writer("[1, 2]"), ".wat")
    make_tool("json_object", _writer('{"a": 1}'), ".wat")
    tools = ToolRegistry.load(tools_dir)
    for name in ("not_json", "json_list"):
        with pytest.raises(Refusal) as e:
            run(name, tools=tools)
        assert e.value.code == "sandbox_bad_output"
    assert run("json_object", tools=tools).output == {"a": 1}


def test_trap_carries_the_stderr_tail(run, make_tool, tools_dir) -> None:  # type: ignore[no-untyped-def]
    make_tool("crash", _writer("about to crash", fd=2, tail="unreachable"), ".wat")
    with pytest.raises(Refusal) as e:
        run("crash", tools=ToolRegistry.load(tools_dir))
    assert e.value.code == "sandbox_trap"
    assert "UNREACHABLE" in e.value.message
    assert e.value.details["stderr_tail"] == "about to crash"


def test_nonzero_exit_is_a_trap_with_the_tools_message(run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refusal) as e:
        run("stats", {"values": "not a list"})
    assert e.value.code == "sandbox_trap"
    assert "status 2" in e.value.message
    assert "input needs" in str(e.value.details["stderr_tail"])


def test_a_module_importing_anything_else_is_refused(run, make_tool, tools_dir) -> None:  # type: ignore[no-untyped-def]
    make_tool("wants_more", '(module (import "env" "open_socket" (func)) (func (export "_start")))', ".wat")
    with pytest.raises(Refusal) as e:
        run("wants_more", tools=ToolRegistry.load(tools_dir))
    assert e.value.code == "sandbox_forbidden"
    assert "open_socket" in e.value.message


def test_pure_compute_tool_runs_and_reports_fuel(run) -> None:  # type: ignore[no-untyped-def]
    result = run("stats", {"values": [2, 4, 4, 4, 5, 5, 7, 9]})
    assert result.output == {"count": 8, "sum": 40, "mean": 5, "min": 2, "max": 9, "stddev": 2}
    assert 0 < result.fuel_used < 50_000_000
    assert result.host_calls == 0
    assert result.duration_ms > 0
