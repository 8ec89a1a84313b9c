"""Whole-process behaviour: the CLI, and a clean interpreter exit after traps."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.cli import add_commands

ROOT = Path(__file__).resolve().parents[2]


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sandbox", "run", *argv])
    return args.func(args)


def test_cli_runs_a_tool(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("stats", "--input", '{"values": [1, 2, 3]}') == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"]["sum"] == 6
    assert printed["host_calls"] == 0 and printed["fuel_used"] > 0


def test_cli_refuses_host_calls_without_a_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("fetch_any", "--input", '{"url": "https://api.stripe.com/v1/balance"}') == 0
    output = json.loads(capsys.readouterr().out)["output"]
    assert output["status"] == 403 and output["error"] == "sandbox_forbidden"


def test_cli_prints_a_refusal_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("currency_convert", "--role", "support") == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "sandbox_forbidden"


def test_the_interpreter_exits_cleanly_after_trapping_runs() -> None:
    """A store left for the garbage collector is finalized at shutdown, where wasmtime's stdout
    callback thread aborts the process ("panic in a function that cannot unwind")."""
    code = (
        "import argparse, sys\n"
        "from sandbox.cli import add_commands\n"
        "p = argparse.ArgumentParser(); add_commands(p.add_subparsers())\n"
        "for tool in ('memory_bomb', 'spin', 'output_flood'):\n"
        "    a = p.parse_args(['sandbox', 'run', tool]); assert a.func(a) == 1\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "panicked" not in proc.stderr
