"""The benchmark's load generator: keep-alive HTTPS clients, direct or through a CONNECT proxy.

A deliberately small HTTP/1.1 client on asyncio streams. A general-purpose client (httpx,
requests) spends more CPU per request than the difference being measured, and on a 2-core machine
the client shares the CPUs with the proxy and the vendor. It runs in a process of its own
(`run_in_worker`), so its event loop never waits on the fake vendor's threads for the GIL.

Every response must be a 200 with a Content-Length body: a refusal measured as a fast success
would make the gateway look better than it is, so anything else fails the run loudly.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    """One HTTP request, sent unchanged many times; `host` is the vendor name (SNI, Host, CONNECT)."""

    host: str
    method: str
    path: str
    content_type: str
    body: bytes

    def wire(self) -> bytes:
        head = (
            f"{self.method} {self.path} HTTP/1.1\r\n"
            f"Host: {self.host}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            "Authorization: Bearer agent-has-no-vendor-key\r\n"
            "\r\n"
        )
        return head.encode() + self.body


@dataclass(frozen=True)
class Load:
    """Where to connect and how hard: `clients` connections, each sending `requests` after `warmup`.

    With `proxy_auth` None and `via_proxy` False the client dials the vendor itself (127.0.0.1:port,
    SNI and Host naming the vendor); otherwise it sends CONNECT vendor:443 to the proxy at `port`
    and speaks TLS inside the tunnel, trusting `ca_file` (the proxy's CA, or the test CA direct).
    """

    port: int
    via_proxy: bool
    proxy_auth: str | None
    ca_file: str
    request: Request
    clients: int
    requests: int
    warmup: int
    proxy_pid: int | None = None  # whose CPU time to take over the measured requests (Linux /proc)
    timeout: float = 120.0


@dataclass(frozen=True)
class Result:
    latencies: list[float]  # seconds, one per measured request
    wall: float  # seconds from the first measured request to the last response
    proxy_cpu: float | None  # CPU seconds the proxy process spent meanwhile (None: no proxy or no /proc)
    side_cpu: float | None = None  # of which its threads other than the main one (the event loop's)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time so far of `pid` and its descendants (a supervisor and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu_seconds(p) or 0.0
        todo += children.get(p, [])
    return total


def cpu_seconds(pid: int | None, stat: str = "stat") -> float | None:
    """User + system CPU time of process `pid` so far, from /proc (None where there is none);
    `stat="task/TID/stat"` for one thread's."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/{stat}") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def side_cpu_seconds(pid: int | None) -> float | None:
    """CPU time so far of the threads of `pid` other than its main one (a gateway's export threads)."""
    if pid is None:
        return None
    try:
        tids = [tid for tid in os.listdir(f"/proc/{pid}/task") if tid != str(pid)]
    except OSError:
        return None
    return sum(cpu_seconds(pid, f"task/{tid}/stat") or 0.0 for tid in tids)


async def _connect(load: Load) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    tls = ssl.create_default_context(cafile=load.ca_file)
    host = load.request.host
    if not load.via_proxy:
        return await asyncio.open_connection("127.0.0.1", load.port, ssl=tls, server_hostname=host)
    reader, writer = await asyncio.open_connection("127.0.0.1", load.port)
    auth = f"Proxy-Authorization: {load.proxy_auth}\r\n" if load.proxy_auth else ""
    writer.write(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n{auth}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"CONNECT refused: {head.splitlines()[0]!r}")
    await writer.start_tls(tls, server_hostname=host)
    return reader, writer


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: bytes) -> None:
    writer.write(wire)
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, fields = head.partition(b"\r\n")
    length = None
    for line in fields.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    if status_line.split(b" ", 2)[1] != b"200" or length is None:
        raise RuntimeError(f"expected a 200 with Content-Length, got {status_line!r}: {body[:300]!r}")


async def _client(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], wire: bytes, n: int
) -> list[float]:
    reader, writer = stream
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await _exchange(reader, writer, wire)
        out.append(time.perf_counter() - t)
    return out


async def _run(load: Load) -> Result:
    wire = load.request.wire()
    streams = await asyncio.gather(*(_connect(load) for _ in range(load.clients)))
    try:
        # Warm every connection (TLS, tunnel, upstream connection, caches) before the clock starts.
        await asyncio.gather(*(_client(s, wire, load.warmup) for s in streams))
        side_start, cpu_start = side_cpu_seconds(load.proxy_pid), cpu_seconds(load.proxy_pid)
        start = time.perf_counter()
        per_client = await asyncio.gather(*(_client(s, wire, load.requests) for s in streams))
        wall, cpu_end, side_end = time.perf_counter() - start, cpu_seconds(load.proxy_pid), side_cpu_seconds(load.proxy_pid)
    finally:
        for _, writer in streams:
            writer.close()
    cpu = cpu_end - cpu_start if cpu_start is not None and cpu_end is not None else None
    side = side_end - side_start if side_start is not None and side_end is not None else None
    return Result([x for xs in per_client for x in xs], wall, cpu, side)


async def _paced_client(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], wire: bytes, n: int, first: float, interval: float
) -> list[float]:
    reader, writer = stream
    out = []
    for k in range(n):
        due = first + k * interval
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await _exchange(reader, writer, wire)
        # From when the request was due, not when it went: a slow answer delays the next request,
        # and that wait is latency the agent sees (no coordinated omission).
        out.append(time.perf_counter() - due)
    return out


async def _run_paced(load: Load, rate: float) -> Result:
    wire = load.request.wire()
    streams = await asyncio.gather(*(_connect(load) for _ in range(load.clients)))
    try:
        await asyncio.gather(*(_client(s, wire, load.warmup) for s in streams))
        interval = load.clients / rate
        start = time.perf_counter()
        # The clients' schedules are spread over one interval, so the offered load is even.
        per_client = await asyncio.gather(*(
            _paced_client(s, wire, load.requests, start + i * interval / load.clients, interval)
            for i, s in enumerate(streams)
        ))
        wall = time.perf_counter() - start
    finally:
        for _, writer in streams:
            writer.close()
    return Result([x for xs in per_client for x in xs], wall, None)


def run_paced(load: Load, rate: float) -> Result:
    """`load.clients` keep-alive connections offering `rate` requests per second between them,
    each sending on a fixed schedule (an open-loop load, unlike `run`'s back-to-back requests)."""
    return asyncio.run(asyncio.wait_for(_run_paced(load, rate), load.timeout))


@dataclass(frozen=True)
class Reconnecting:
    """Latencies of clients that open a new connection every `every` requests: each connection's
    first request (CONNECT, the agent's TLS handshake with the proxy, the proxy's with the vendor,
    then the call) apart from the warm ones after it on the same connection."""

    first: list[float]
    warm: list[float]
    wall: float


async def _reconnecting_client(load: Load, wire: bytes, every: int) -> tuple[list[float], list[float]]:
    first: list[float] = []
    warm: list[float] = []
    for _ in range(max(1, load.requests // every)):
        t = time.perf_counter()
        reader, writer = await _connect(load)
        try:
            await _exchange(reader, writer, wire)
            first.append(time.perf_counter() - t)
            warm += await _client((reader, writer), wire, every - 1)
        finally:
            writer.close()
    return first, warm


async def _run_reconnecting(load: Load, every: int) -> Reconnecting:
    wire = load.request.wire()
    start = time.perf_counter()
    per_client = await asyncio.gather(*(_reconnecting_client(load, wire, every) for _ in range(load.clients)))
    wall = time.perf_counter() - start
    return Reconnecting([x for f, _ in per_client for x in f], [x for _, w in per_client for x in w], wall)


def run_reconnecting(load: Load, every: int) -> Reconnecting:
    """`load.clients` clients, each sending `load.requests` on a new connection every `every`."""
    return asyncio.run(asyncio.wait_for(_run_reconnecting(load, every), load.timeout))


def run(load: Load) -> Result:
    """Run one load to completion (or fail after `load.timeout` seconds)."""
    return asyncio.run(asyncio.wait_for(_run(load), load.timeout))


def run_in_worker(pool: ProcessPoolExecutor, load: Load) -> Result:
    """`run` in the pool's worker process, so the client never competes with the vendor for the GIL."""
    return pool.submit(run, load).result(timeout=load.timeout + 30)
