"""sandbox/outcome.py on its own: every engine's spelling of a cause gets the same code.

The engines themselves are exercised end to end in the other files of this directory; these table
and property tests pin the one decision they now share, in milliseconds.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import Refusal
from sandbox.manifest import PAGE_BYTES, Limits
from sandbox.outcome import Ending, error_line, fail, judge

LIMITS = Limits(fuel=1000, memory_pages=16, timeout_ms=100, max_output_bytes=64)

# How each engine reports a cause: a core module's TrapCode name, a component's WasmtimeError text.
COMPONENT_TRAP = "error while executing at wasm backtrace:\n    0: 0x1 - run\n\nCaused by:\n    {}"
SPELLINGS = [
    ("OUT_OF_FUEL", "sandbox_fuel_exhausted"),
    (COMPONENT_TRAP.format("all fuel consumed by WebAssembly"), "sandbox_fuel_exhausted"),
    ("INTERRUPT", "sandbox_timeout"),
    (COMPONENT_TRAP.format("wasm trap: interrupt"), "sandbox_timeout"),
    ("memory minimum size of 100 pages exceeds memory limits", "sandbox_memory_limit"),
    ("UNREACHABLE", "sandbox_trap"),
    (COMPONENT_TRAP.format("wasm trap: wasm `unreachable` instruction executed"), "sandbox_trap"),
]


def _refusal(ending: Ending) -> Refusal:
    with pytest.raises(Refusal) as e:
        judge("tool 't'", LIMITS, ending)
    return e.value


@pytest.mark.parametrize(("trap", "code"), SPELLINGS)
def test_each_spelling_of_a_cause_gets_its_code_and_the_fuel_used(trap: str, code: str) -> None:
    refusal = _refusal(Ending(fuel_left=400, trap=trap, output=b'{"a": 1}'))
    assert refusal.code == code
    assert refusal.details["fuel_used"] == 600
    assert "\n" not in refusal.message


def test_output_past_the_cap_wins_over_any_other_cause() -> None:
    assert _refusal(Ending(fuel_left=0, trap="OUT_OF_FUEL", overflow=True)).code == "sandbox_bad_output"
    assert _refusal(Ending(fuel_left=0, output=b"{}" + b" " * 63)).code == "sandbox_bad_output"


@pytest.mark.parametrize(
    ("memory_bytes", "code"),
    [(16 * PAGE_BYTES, "sandbox_memory_limit"), (15 * PAGE_BYTES, "sandbox_memory_limit"),
     (14 * PAGE_BYTES, "sandbox_trap"), (None, "sandbox_trap")],
)
def test_a_failure_near_the_memory_cap_is_the_memory_limit(memory_bytes: int | None, code: str) -> None:
    refusal = _refusal(Ending(fuel_left=0, status=1, stderr="out of memory", memory_bytes=memory_bytes))
    assert refusal.code == code


def test_a_failure_carries_the_stderr_tail_and_the_status() -> None:
    refusal = _refusal(Ending(fuel_left=990, status=2, stderr="x" * 5000 + "the end"))
    assert (refusal.code, refusal.message) == ("sandbox_trap", "tool 't' exited with status 2")
    assert refusal.details == {"stderr_tail": ("x" * 5000 + "the end")[-2048:], "fuel_used": 10}


@given(st.one_of(st.none(), st.binary(max_size=64), st.from_regex(rb"\A\[[0-9, ]{0,20}\]\Z")))
def test_output_that_is_not_one_json_object_is_bad_output(output: bytes | None) -> None:
    try:
        is_object = output is not None and isinstance(json.loads(output), dict)
    except ValueError:
        is_object = False
    ending = Ending(fuel_left=0, output=output)
    if is_object:
        assert isinstance(judge("t", LIMITS, ending), dict)
    else:
        assert _refusal(ending).code == "sandbox_bad_output"


def test_a_clean_ending_passes_fail_and_returns_the_object() -> None:
    fail("python", LIMITS, Ending(fuel_left=1, output=b"not json: python's output is text"))
    assert judge("t", LIMITS, Ending(fuel_left=1, output=b'{"k": [1, 2]}')) == {"k": [1, 2]}


@given(st.text(max_size=600))
def test_error_line_is_one_stripped_line_of_the_text(text: str) -> None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last, first = error_line(text), error_line(text, first=True)
    assert len(last) <= 200 and len(first) <= 200
    assert "\n" not in last and "\r" not in last
    if lines:
        assert (last, first) == (lines[-1][:200], lines[0][:200])
    else:
        assert last == first == "unknown error"
