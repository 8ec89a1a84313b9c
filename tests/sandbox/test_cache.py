"""Compiled modules: compiled once, serialized, loaded from disk by the next process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.pipeline.call import new_decision_id
from sandbox.cache import engine_fingerprint
from sandbox.registry import ToolRegistry
from sandbox.runner import SandboxRunner
from sandbox.service import run_tool


def _run_stats(runner: SandboxRunner, registry: ToolRegistry, resolve) -> dict:  # type: ignore[no-untyped-def]
    return asyncio.run(run_tool(runner, registry, "stats", {"values": [1, 2]}, "any", _never, resolve, new_decision_id())).output


def test_a_second_runner_loads_from_disk_without_compiling(tmp_path: Path, registry, resolve) -> None:  # type: ignore[no-untyped-def]
    first = SandboxRunner(cache_dir=tmp_path)
    try:
        assert _run_stats(first, registry, resolve)["sum"] == 3
        assert _run_stats(first, registry, resolve)["sum"] == 3
        assert (first.cache.compiles, first.cache.disk_loads) == (1, 0)  # the second run used memory
    finally:
        first.close()
    files = list(tmp_path.glob("*.cwasm"))
    sha = registry.get("stats").manifest.sha256
    assert [f.name for f in files] == [f"{sha}-{engine_fingerprint()}.cwasm"]
    assert files[0].stat().st_mode & 0o077 == 0  # owner-only

    second = SandboxRunner(cache_dir=tmp_path)
    try:
        assert _run_stats(second, registry, resolve)["sum"] == 3
        assert (second.cache.compiles, second.cache.disk_loads) == (0, 1)
    finally:
        second.close()


def test_a_corrupt_cache_file_is_replaced_by_a_fresh_compile(tmp_path: Path, registry, resolve) -> None:  # type: ignore[no-untyped-def]
    sha = registry.get("stats").manifest.sha256
    (tmp_path / f"{sha}-{engine_fingerprint()}.cwasm").write_bytes(b"not a serialized module")
    runner = SandboxRunner(cache_dir=tmp_path)
    try:
        assert _run_stats(runner, registry, resolve)["sum"] == 3
        assert (runner.cache.compiles, runner.cache.disk_loads) == (1, 0)
    finally:
        runner.close()


def test_without_a_cache_dir_nothing_is_written(tmp_path: Path, registry, resolve) -> None:  # type: ignore[no-untyped-def]
    runner = SandboxRunner(cache_dir=None)
    try:
        assert _run_stats(runner, registry, resolve)["sum"] == 3
        assert runner.cache.compiles == 1
    finally:
        runner.close()


def _never(request: dict) -> dict:
    raise AssertionError("no host call expected")
