"""Ad-hoc Python (CPython as a WASI p2 component): limits, the shadowed wasi:http, and dispatch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import Refusal
from gateway.pipeline.call import new_decision_id
from sandbox.manifest import Limits

pytest.importorskip("python_guest", reason="optional: pip install hyperlight-sandbox-python-guest")

from sandbox.python_guest import PythonGuest


@pytest.fixture(scope="module")
def guest(python_guest_cache: Path) -> Iterator[PythonGuest]:
    """Loaded from the session's compiled copy (tests/conftest.py), in milliseconds."""
    g = PythonGuest(cache_dir=python_guest_cache)
    yield g
    g.close()


def _run(guest: PythonGuest, code: str, sender, resolve, allowed=(), **limits) -> object:  # type: ignore[no-untyped-def]
    ceiling = guest.ceiling(allowed, Limits(**{**guest.ceiling().limits.model_dump(), **limits}))
    return asyncio.run(guest.run_async(code, {"n": 21}, ceiling, sender, resolve, new_decision_id()))


def test_python_runs_with_its_input(guest, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    result = _run(guest, "print(INPUT['n'] * 2)", sender, resolve)
    assert result.output == {"stdout": "42\n", "stderr": "", "exit_code": 0}
    assert result.fuel_used > 0


def test_no_files_no_env_and_errors_come_back_as_stderr(guest, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    result = _run(guest, "import os\nprint(dict(os.environ))\nopen('/etc/passwd')", sender, resolve)
    assert result.output["stdout"] == "{}\n"
    assert result.output["exit_code"] == 1
    assert "FileNotFoundError" in result.output["stderr"]


def test_direct_wasi_http_is_refused_and_never_reaches_the_server(guest, http_vendor, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    result = _run(guest, f"print(http_get('http://127.0.0.1:{http_vendor.port}/v1/balance'))", sender, resolve)
    assert "HttpRequestDenied" in result.output["stderr"]
    assert http_vendor.seen == []


def test_call_tool_goes_through_the_ceiling_and_the_sender(guest, http_vendor, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import json\n"
        "ok = call_tool('http_request', method='GET', url='https://api.stripe.com/v1/balance')\n"
        "no = call_tool('http_request', method='POST', url='https://api.openai.com/v1/embeddings')\n"
        "print(json.dumps([ok['status'], json.loads(ok['body'])['object'], no['status'], json.loads(no['body'])['error']['code']]))\n"
    )
    result = _run(guest, code, sender, resolve, allowed=("stripe:retrieve_balance",), max_host_calls=2)
    assert json.loads(result.output["stdout"]) == [200, "balance", 403, "sandbox_forbidden"]
    assert result.host_calls == 2
    assert [r["path"] for r in http_vendor.seen] == ["/v1/balance"]


def test_python_limits_trip_with_their_codes(guest, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refusal) as e:
        _run(guest, "while True: pass", sender, resolve, fuel=200_000_000, timeout_ms=10_000)
    assert e.value.code == "sandbox_fuel_exhausted"
    with pytest.raises(Refusal) as e:
        _run(guest, "while True: pass", sender, resolve, fuel=100_000_000_000, timeout_ms=200)
    assert e.value.code == "sandbox_timeout"
    with pytest.raises(Refusal) as e:
        _run(guest, "print('x' * 100000)", sender, resolve, max_output_bytes=1000)
    assert e.value.code == "sandbox_bad_output"
