"""Whole-process behaviour: the CLI, and a clean interpreter exit after traps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
PRINT_OK = '(module (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))' \
    ' (memory (export "memory") 1) (data (i32.const 64) "{\\"ok\\":1}")' \
    ' (func (export "_start") (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 8))' \
    ' (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))'


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _cli(state_dir: Path, *argv: str) -> int:
    return main(["sandbox", "run", "--state-dir", str(state_dir), *argv])


def test_cli_runs_a_tool(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(state_dir, "stats", "--input", '{"values": [1, 2, 3]}') == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"]["sum"] == 6
    assert printed["host_calls"] == 0 and printed["fuel_used"] > 0
    assert printed["decision_id"].startswith("dec_")


def test_cli_refuses_host_calls_without_a_gateway(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(state_dir, "fetch_any", "--input", '{"url": "https://api.stripe.com/v1/balance"}') == 0
    output = json.loads(capsys.readouterr().out)["output"]
    assert output["status"] == 403 and output["error"] == "sandbox_forbidden"


def test_cli_prints_a_refusal_and_exits_1(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(state_dir, "currency_convert", "--role", "support") == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "sandbox_forbidden" and error["decision_id"].startswith("dec_")


def test_cli_finds_registered_tools_and_reuses_the_state_dirs_compile_cache(
    state_dir: Path, make_tool, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    make_tool("registered_ok", PRINT_OK, ".wat")  # under tmp_path/tools: not yet the state dir's
    assert _cli(state_dir, "registered_ok") == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "sandbox_unknown_tool"
    (state_dir / "tools").parent.mkdir(parents=True, exist_ok=True)
    (state_dir.parent / "tools").rename(state_dir / "tools")  # where POST /v1/tools keeps them
    assert _cli(state_dir, "registered_ok") == 0
    assert json.loads(capsys.readouterr().out)["output"] == {"ok": 1}
    compiled = list((state_dir / "sandbox-cache").glob("*.cwasm"))
    assert len(compiled) == 1
    before = compiled[0].stat()
    assert _cli(state_dir, "registered_ok") == 0  # a new runner: loads the file, writes nothing
    after = compiled[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_cli_takes_the_tools_dir_and_connectors_from_config(
    tmp_path: Path, state_dir: Path, make_variant, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    make_variant("stats", "configured_stats")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(state_dir), "sandbox": {"tools": str(tmp_path / "tools")}}))
    assert main(["sandbox", "run", "--config", str(config), "configured_stats", "--input", '{"values": [4]}']) == 0
    assert json.loads(capsys.readouterr().out)["output"]["sum"] == 4
    assert main(["sandbox", "run", "--config", str(config), "stats"]) == 1  # the shipped dir is not configured
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "sandbox_unknown_tool"
    assert list((state_dir / "sandbox-cache").glob("*.cwasm"))


def test_the_interpreter_exits_cleanly_after_trapping_runs(state_dir: Path) -> None:
    """A store left for the garbage collector is finalized at shutdown, where wasmtime's stdout
    callback thread aborts the process ("panic in a function that cannot unwind")."""
    code = (
        "import sys\n"
        "from gateway.cli.main import main\n"
        "for tool in ('memory_bomb', 'spin', 'output_flood'):\n"
        "    assert main(['sandbox', 'run', '--state-dir', sys.argv[1], tool]) == 1\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(state_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "panicked" not in proc.stderr
