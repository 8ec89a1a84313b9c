"""Sandbox micro-benchmark (not a test): what a tool run costs, in-process, without the HTTP API.

Rows: cold compile of the C pure-compute tool (`stats`), its first run, a load from the serialized
cache as a restarted process would do, and warm runs (compiled module cached) through `run_tool`,
reported as p50/p99. With `hyperlight-sandbox-python-guest` installed, the same for a Python snippet
(compile, load, warm p50/p99) and the process RSS with the Python guest loaded.
Usage: python bench/sandbox_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox.registry import ToolRegistry, builtin_tools_dir
from sandbox.runner import SandboxRunner
from sandbox.service import run_tool

BENCH_DECISION = "dec_bench"  # the runs make no host calls, so no refusal carries it

INPUT = {"values": list(range(100))}


def _no_calls(request: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("the benchmark tool makes no host calls")


def _no_action(method: str, url: str) -> None:
    return None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    registry = ToolRegistry.load(builtin_tools_dir())
    tool = registry.get("stats")
    assert tool is not None
    payload = b'{"values": [1, 2, 3]}'

    with tempfile.TemporaryDirectory() as cache_dir:
        runner = SandboxRunner(cache_dir=Path(cache_dir))
        t0 = time.perf_counter()
        runner.cache.get(tool.manifest.sha256, tool.module_path)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        runner.run(tool, payload, _no_calls, _no_action, BENCH_DECISION)
        first_s = time.perf_counter() - t0
        runner.close()

        restarted = SandboxRunner(cache_dir=Path(cache_dir))
        t0 = time.perf_counter()
        restarted.cache.get(tool.manifest.sha256, tool.module_path)
        load_s = time.perf_counter() - t0
        assert restarted.cache.disk_loads == 1

        async def warm() -> list[float]:
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                await run_tool(restarted, registry, "stats", INPUT, "bench", _no_calls, _no_action, BENCH_DECISION)
                times.append(time.perf_counter() - t)
            return times

        times = sorted(asyncio.run(warm()))
        restarted.close()

    print("sandbox: C pure-compute tool `stats` (wasmtime, fuel + epoch)")
    print(f"  cold compile              {_ms(compile_s)}")
    print(f"  first run after compile   {_ms(first_s)}")
    print(f"  load from .cwasm cache    {_ms(load_s)}")
    print(f"  warm run p50 (run_tool)   {_ms(statistics.median(times))}   ({args.runs} runs, 100 values)")
    print(f"  warm run p99 (run_tool)   {_ms(times[int(len(times) * 0.99) - 1])}")
    print(f"  process max RSS           {_rss_mib():8.1f} MiB")
    _bench_python(max(args.runs // 10, 50))


def _rss_mib() -> float:
    """Current resident set size (not the peak: compiling the Python guest peaks far above it)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _bench_python(runs: int) -> None:
    try:
        from sandbox.python_guest import PythonGuest
    except ImportError:
        print("python guest: not installed (pip install hyperlight-sandbox-python-guest)")
        return
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        PythonGuest(cache_dir=Path(cache_dir)).close()
        compile_s = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        guest = PythonGuest(cache_dir=Path(cache_dir))
        load_s = time.perf_counter() - t0
        assert not guest.compiled
        fresh_rss = _fresh_process_rss(Path(cache_dir))
    ceiling = guest.ceiling()
    t0 = time.perf_counter()
    guest.run("print(sum(INPUT['values']))", INPUT, ceiling, _no_calls, _no_action, BENCH_DECISION)
    first_s = time.perf_counter() - t0

    async def warm() -> list[float]:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            await guest.run_async("print(sum(INPUT['values']))", INPUT, ceiling, _no_calls, _no_action, BENCH_DECISION)
            times.append(time.perf_counter() - t)
        return times

    times = sorted(asyncio.run(warm()))
    print("sandbox: Python snippet (CPython 3.14 WASI p2 component)")
    print(f"  cold compile + serialize  {_ms(compile_s)}   (peak RSS {peak:.0f} MiB)")
    print(f"  load from .cwasm cache    {_ms(load_s)}")
    print(f"  first run after load      {_ms(first_s)}")
    print(f"  warm run p50 (run_async)  {_ms(statistics.median(times))}   ({runs} runs)")
    print(f"  warm run p99 (run_async)  {_ms(times[int(len(times) * 0.99) - 1])}")
    print(f"  RSS of a fresh process that loaded the guest and ran once {fresh_rss}")
    guest.close()


def _fresh_process_rss(cache_dir: Path) -> str:
    """A new interpreter that loads the serialized guest and runs one snippet: the gateway's figure."""
    code = (
        "import sys; from pathlib import Path; from sandbox.python_guest import PythonGuest\n"
        "from bench.sandbox_bench import _rss_mib\n"
        "g = PythonGuest(cache_dir=Path(sys.argv[1])); assert not g.compiled\n"
        "g.run('print(1)', {}, g.ceiling(), None, None, 'dec_bench'); print(f'{_rss_mib():.1f} MiB'); g.close()\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code, str(cache_dir)], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() or f"failed: {proc.stderr[-300:]}"


if __name__ == "__main__":
    main()
