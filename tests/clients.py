"""Small helpers for speaking to the gateway the way agents do, and the ways attackers do."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.processes import GatewayProcess


def trusting(gw: GatewayProcess) -> ssl.SSLContext:
    """What an agent's client trusts: the gateway's CA (as SSL_CERT_FILE would make it)."""
    return ssl.create_default_context(cafile=str(gw.ca_file))


def client(gw: GatewayProcess, token: str, timeout: float = 20, **kw: Any) -> httpx.Client:
    """An agent's HTTP client: the gateway as its proxy, with the token as proxy credentials.
    The one helper for every suite, the demo included; `timeout` only bounds a failing test."""
    return httpx.Client(proxy=gw.proxy_url(token), verify=trusting(gw), timeout=timeout, **kw)


def chat(content: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI chat completion request with one user message (the DLP and chaos suites' staple)."""
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) from a text/event-stream, comments and `retry:` skipped."""
    name = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def stream_decisions(stream: httpx.Response) -> list[dict[str, Any]]:
    """The records on an open decisions stream until it stays quiet for its read timeout (any
    other event, `lost` or `end`, fails: the caller expected only records)."""
    seen = []
    try:
        for name, data in sse_events(stream.iter_lines()):
            assert name == "decision", (name, data)
            seen.append(data)
    except httpx.ReadTimeout:
        return seen
    raise AssertionError("the stream ended while it was read")


def error_of(r: httpx.Response) -> dict[str, Any]:
    """The contract's error object; fails the test if the body is not that JSON."""
    assert r.headers.get("content-type", "").startswith("application/json"), r.text[:200]
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"code", "message", "decision_id", "connector", "action"} <= set(err), err
    assert r.headers["x-egress-decision-id"] == err["decision_id"]
    return err


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        err = json.loads(self.body)["error"]
        assert self.headers.get("x-egress-decision-id") == err["decision_id"]
        return err


def read_response(sock: socket.socket | ssl.SSLSocket) -> RawResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(status, headers, body)


def basic(token: str, user: str = "agent") -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def raw_connect(
    gw: GatewayProcess, host: str, auth: str | None, port: int = 443, headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[socket.socket | ssl.SSLSocket, RawResponse]:
    """Send a CONNECT by hand; returns the socket (a tunnel if the status is 200) and the refusal or
    the tunnel's 200. A refused CONNECT is answered 200 with `X-Egress-Error`, and the refusal is
    the answer to the first request inside the tunnel, as an SDK reads it: this follows it there,
    after checking the CONNECT answer names the same code and decision. `source` (any 127.x.y.z)
    is the client address refusals without a token are aggregated by."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=(source, 0))
    lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
    if auth is not None:
        lines.append(f"Proxy-Authorization: {auth}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = read_response(sock)
    if answer.status != 200 or "x-egress-error" not in answer.headers:
        return sock, answer
    ctx = trusting(gw)
    ctx.check_hostname = False  # the gateway's CA signs it; the name may be an IP literal like [::1]
    tls = ctx.wrap_socket(sock, server_hostname=host.strip("[]"))
    tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    refusal = read_response(tls)
    err = refusal.error()
    assert (err["code"], err["decision_id"]) == (answer.headers["x-egress-error"], answer.headers["x-egress-decision-id"])
    return tls, refusal


def tunnel_tls(gw: GatewayProcess, token: str, connect_host: str, sni: str | None = None) -> ssl.SSLSocket:
    sock, resp = raw_connect(gw, connect_host, basic(token))
    assert resp.status == 200, resp
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    ctx.check_hostname = sni is None or sni == connect_host
    return ctx.wrap_socket(sock, server_hostname=sni or connect_host)


def curl(gw: GatewayProcess, token: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--proxy", f"http://127.0.0.1:{gw.port}", "--proxy-user", f"agent:{token}",
         "--cacert", str(gw.ca_file), "-w", "\n%{http_code}", url, *args],
        capture_output=True, text=True, timeout=30,
    )


