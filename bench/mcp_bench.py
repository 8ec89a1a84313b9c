"""MCP `tools/call` through the gateway, against the same call direct and through a bare mitmproxy.

    python -m bench.mcp_bench [--runs N] [--clients C] [--rounds R]

One FastMCP server (`tests.mcp.server`, JSON answers, in a process of its own) over HTTPS with the
test CA; three paths to it: direct, "mitmproxy core" (`bench.mitm_core`: the gateway's mitmproxy set-up with a routing
script, nothing decided), and the gateway with a policy (params and a budget on the tool) and DLP
on (the call's e-mail argument is tokenized, the result restored). Each path opens one MCP session
and calls `create_refund` on one keep-alive connection (latency), then from C connections at once
(throughput), the paths taking turns R times. Targets, reported and not asserted: added p50 over
direct <= 2 ms; throughput >= 0.8 of mitmproxy core's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.fakes import PKI
from tests.processes import GatewayProcess, free_port, wait_port

HOST = "mcp.bench.test"
URL = f"https://{HOST}/mcp"
ADDED_P50_TARGET_MS = 2.0
THROUGHPUT_TARGET = 0.8
POLICY = """
version: 1
subjects: {roles: [bench]}
rules:
  - connector: payments
    actions: [create_refund]
    params: {amount: {max: 500000}}
    budget: {field: amount, limit: 100000000000, per: day}
dlp:
  tokenize: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD]
  reveal: [EMAIL_ADDRESS]
"""
ARGUMENTS = {"amount": 100, "customer_email": "ana.lopez@example.com", "note": "refund for order 1234"}
INIT = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
ACCEPT = "application/json, text/event-stream"


@dataclass(frozen=True)
class Path_:
    """How a client reaches the server on one path."""

    name: str
    client: dict[str, Any]  # httpx.AsyncClient keyword arguments
    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


async def session(p: Path_, client: httpx.AsyncClient) -> dict[str, str]:
    """initialize + initialized + tools/list (the gateway pins the tool): the session's headers."""
    r = await client.post(p.url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT},
                          headers=p.headers, extensions=p.extensions)
    r.raise_for_status()
    h = {**p.headers, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
    await client.post(p.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h, extensions=p.extensions)
    listed = await client.post(p.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=h, extensions=p.extensions)
    assert "create_refund" in listed.text, listed.text
    return h


async def call(p: Path_, client: httpx.AsyncClient, headers: dict[str, str], i: int) -> None:
    body = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "create_refund", "arguments": ARGUMENTS}}
    r = await client.post(p.url, json=body, headers=headers, extensions=p.extensions)
    answer = r.json()
    assert "result" in answer and answer["result"]["structuredContent"]["customer_email"] == ARGUMENTS["customer_email"], answer


async def measure(paths: list[Path_], runs: int, clients: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Per path: (p50 ms of calls on one connection, median calls per second from `clients`
    connections). The paths take turns, `rounds` times, so a change in the machine's load falls
    on all of them alike."""
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for p in paths:
            client = await stack.enter_async_context(httpx.AsyncClient(**p.client, limits=httpx.Limits(max_connections=clients)))
            h = await session(p, client)
            for i in range(20):
                await call(p, client, h, 10 + i)
            opened.append((p, client, h))
        times: dict[str, list[float]] = {p.name: [] for p in paths}
        rates: dict[str, list[float]] = {p.name: [] for p in paths}
        per_round, n = runs // rounds, 0
        for _ in range(rounds):
            for p, client, h in opened:
                for _ in range(per_round):
                    n += 1
                    t = time.perf_counter()
                    await call(p, client, h, 100 + n)
                    times[p.name].append(time.perf_counter() - t)

                async def worker(k: int, p: Path_ = p, client: httpx.AsyncClient = client, h: dict[str, str] = h) -> None:
                    for j in range(per_round // clients):
                        await call(p, client, h, 1_000_000 + k * 10_000 + j)

                t = time.perf_counter()
                await asyncio.gather(*(worker(k) for k in range(clients)))
                rates[p.name].append((per_round // clients) * clients / (time.perf_counter() - t))
    return {name: (statistics.median(times[name]) * 1000, statistics.median(rates[name])) for name in times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mcp_bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="calls per row")
    parser.add_argument("--clients", type=int, default=8, help="connections in the throughput row")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the paths taking turns")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mcp-bench-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        pki = PKI(root / "pki")
        cert, key = pki.leaf("mcp", (HOST,))
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.mcp.server", "--cert", str(cert), "--key", str(key), "--json"],
            stdout=subprocess.PIPE, text=True,
        )
        stack.callback(server.wait)
        stack.callback(server.terminate)
        assert server.stdout is not None
        port = int(server.stdout.readline())
        server_url = f"https://127.0.0.1:{port}"
        policies = root / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(POLICY)
        settings = {
            "upstreams": {HOST: server_url}, "upstream_ca": str(pki.ca_file), "policies": str(policies),
            "mcp_servers": {"payments": {"url": URL, "credential": "env:BENCH_MCP_TOKEN"}},
        }
        gw = stack.enter_context(GatewayProcess(root / "gw", settings, {"BENCH_MCP_TOKEN": "bench-token"}).start())
        token = gw.token(sub="bench-agent", role="bench", scopes=("payments:*",), ttl=1800)
        mport, confdir = free_port(), root / "mitm"
        core = subprocess.Popen(
            [sys.executable, "-m", "bench.mitm_core", "--port", str(mport), "--upstream", f"127.0.0.1:{port}",
             "--confdir", str(confdir), "--upstream-ca", str(pki.ca_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        stack.callback(core.wait)
        stack.callback(core.terminate)
        wait_port(mport, timeout=60, proc=core)
        accept = {"accept": ACCEPT}
        paths = [
            Path_("direct", {"verify": str(pki.ca_file)}, f"{server_url}/mcp", {**accept, "host": HOST}, {"sni_hostname": HOST}),
            Path_("mitmproxy core", {"verify": str(confdir / "mitmproxy-ca-cert.pem"), "proxy": f"http://127.0.0.1:{mport}"},
                  URL, accept, {}),
            Path_("gateway", {"verify": str(gw.ca_file), "proxy": gw.proxy_url(token)}, URL, accept, {}),
        ]
        results = asyncio.run(measure(paths, args.runs, args.clients, args.rounds))
    direct_p50 = results["direct"][0]
    print(f"MCP tools/call (create_refund, JSON answers, policy + DLP on the gateway), {args.runs} calls a row")
    print(f"{'path':<16} {'p50 ms':>8} {'added ms':>9} {f'calls/s ({args.clients} conns)':>22}")
    for name, (p50, rate) in results.items():
        print(f"{name:<16} {p50:>8.2f} {p50 - direct_p50:>9.2f} {rate:>22.0f}")
    added = results["gateway"][0] - direct_p50
    ratio = results["gateway"][1] / results["mitmproxy core"][1]
    print(f"target added p50 over direct <= {ADDED_P50_TARGET_MS} ms: {added:.2f} ms {'met' if added <= ADDED_P50_TARGET_MS else 'MISSED'}")
    print(f"target throughput >= {THROUGHPUT_TARGET} of mitmproxy core: {ratio:.2f} {'met' if ratio >= THROUGHPUT_TARGET else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
