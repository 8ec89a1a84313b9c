"""Real faulty parts for the chaos suite: a fault-injecting HTTPS vendor (redis-server, which the
suite kills, is `tests.processes.RedisServer`).

`FaultVendor` is a raw-socket HTTPS server (threads, no HTTP library), so it can do what a library
never would: reset a connection before the headers or in the middle of a body or an SSE stream,
trickle a body a byte at a time, answer with broken HTTP, or present a certificate for the wrong
host or an expired one. It records every connection it accepts and every request that reached it,
byte for byte, so tests can check "without dialing", "never retried" and, at the end of the
session, that nothing secret or raw reached a vendor and every call it saw was audited.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.fakes import PKI, VENDOR_HOSTS

MODES = (
    "ok",  # 200 JSON echo; a chat completion with "stream": true answers with SSE
    "reset_before_headers",  # read the request, then RST
    "reset_mid_body",  # headers and part of a Content-Length body, then RST
    "reset_mid_sse",  # SSE headers and two events, then RST
    "slow_headers",  # wait `slow` seconds before anything
    "trickle_body",  # headers at once, then the body one byte every `trickle` seconds
    "status_500",  # a well-formed 500 from the vendor
    "malformed",  # a status line that is not HTTP
    "hold",  # record the request, then wait for `release` before answering (SSE: after one event)
)
CERTS = ("good", "wrong_host", "expired")


@dataclass
class Seen:
    """One request that reached the vendor, exactly as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    raw: bytes

    @property
    def decision_id(self) -> str | None:
        return self.headers.get("x-egress-decision-id")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:  # the raw request holds the injected vendor credential
        return f"Seen({self.method} {self.path.split('?')[0]}, decision_id={self.decision_id})"


@dataclass
class FaultVendor:
    pki: PKI
    mode: str = "ok"
    cert: str = "good"
    slow: float = 5.0
    trickle: float = 0.2
    trickle_bytes: int = 20
    received: list[Seen] = field(default_factory=list)  # since the last `reset`
    history: list[Seen] = field(default_factory=list, repr=False)  # the whole session, for the final checks
    connections: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._contexts = {name: self._context(name) for name in CERTS}
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _context(self, name: str) -> ssl.SSLContext:
        if name == "good":
            chain = self.pki.leaf("fault-vendor", VENDOR_HOSTS)
        elif name == "wrong_host":
            chain = self.pki.leaf("fault-wrong-host", ("not-a-vendor.example",))
        else:
            chain = self.pki.leaf("fault-expired", VENDOR_HOSTS, expired=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*chain)
        return ctx

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._sock.getsockname()[1]}"

    def reset(self, mode: str = "ok") -> None:
        assert mode in MODES, mode
        with self._lock:
            self.received.clear()
            self.connections = 0
        self.mode, self.cert = mode, "good"
        self.release.set()  # let anything still held go before re-arming
        self.release = threading.Event()

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._stop.set()
        self.release.set()
        self._sock.close()

    # --- serving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.cert), daemon=True).start()

    def _serve(self, raw: socket.socket, cert: str) -> None:
        raw.settimeout(30)
        try:
            conn = self._contexts[cert].wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        try:
            buf = b""
            while True:
                req, buf = _read_request(conn, buf)
                if req is None:
                    return
                with self._lock:
                    self.received.append(req)
                    self.history.append(req)
                if not self._answer(conn, req):
                    return
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            conn.close()

    def _answer(self, conn: ssl.SSLSocket, req: Seen) -> bool:
        """Act out the current mode; False when the connection is finished."""
        mode = self.mode
        if mode == "reset_before_headers":
            _rst(conn)
            return False
        if mode == "slow_headers":
            self._stop.wait(self.slow)
            mode = "ok"
        if mode == "malformed":
            conn.sendall(b"HTTP/1.1 2OO OKAY\r\nContent-Length: x\r\n\r\n")
            return False
        if mode == "status_500":
            _send(conn, 500, {"error": {"type": "api_error", "message": "fake storm"}})
            return True
        if mode == "reset_mid_body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"a":' + b" " * 95)
            _rst(conn)
            return False
        if mode == "trickle_body":
            body = b"x" * self.trickle_bytes
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body))
            for i in range(len(body)):
                if self._stop.wait(self.trickle):
                    return False
                conn.sendall(body[i : i + 1])
            return True
        streaming = req.path.startswith("/v1/chat/completions") and b'"stream":true' in req.body.replace(b" ", b"")
        if streaming:
            return self._sse(conn, req, mode)
        if mode == "hold":
            self.release.wait(60)
        _send(conn, 200, {"object": "fault-vendor", "path": req.path, "method": req.method,
                          "echo": req.body.decode("utf-8", "replace")})
        return True

    def _sse(self, conn: ssl.SSLSocket, req: Seen, mode: str) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        said = "You said: " + json.loads(req.body)["messages"][-1]["content"]
        pieces = [said[i : i + 7] for i in range(0, len(said), 7)]
        for n, piece in enumerate(pieces):
            event = {"id": "chatcmpl-fault", "choices": [{"index": 0, "delta": {"content": piece}}]}
            _chunk(conn, f"data: {json.dumps(event)}\n\n".encode())
            if n == 0 and mode == "hold":
                self.release.wait(60)
            if n == 1 and mode == "reset_mid_sse":
                _rst(conn)
                return False
        _chunk(conn, b"data: [DONE]\n\n")
        _chunk(conn, b"")
        return True


def _read_request(conn: ssl.SSLSocket, buf: bytes) -> tuple[Seen | None, bytes]:
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, b""
        buf += data
        if len(buf) > 1 << 20:
            raise ValueError("request head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length") or 0)
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None, b""
        rest += data
    body, rest = rest[:length], rest[length:]
    return Seen(method, path, headers, body, head + b"\r\n\r\n" + body), rest


def _send(conn: ssl.SSLSocket, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    reason = {200: "OK", 500: "Internal Server Error"}[status]
    conn.sendall(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _chunk(conn: ssl.SSLSocket, data: bytes) -> None:
    conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _rst(conn: ssl.SSLSocket) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a clean FIN: what a crashed peer looks like."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class ReplyDropper:
    """A TCP relay in front of redis-server that loses one reply, as a dropped connection does.

    Armed with a marker, the relay passes the first command holding it on to Redis (which runs
    it) and then closes that client connection instead of relaying Redis's answer: the client
    sees `connection lost` for a command that took effect. Everything else is relayed as it is.
    """

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.marker: bytes | None = None
        self.dropped = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self, marker: bytes) -> None:
        with self._lock:
            self.marker = marker

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.redis_port))
            doomed = threading.Event()
            threading.Thread(target=self._to_redis, args=(client, upstream, doomed), daemon=True).start()
            threading.Thread(target=self._to_client, args=(upstream, client, doomed), daemon=True).start()

    def _to_redis(self, client: socket.socket, upstream: socket.socket, doomed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    if self.marker is not None and self.marker in data:
                        self.marker = None
                        doomed.set()
                upstream.sendall(data)
        upstream.close()

    def _to_client(self, upstream: socket.socket, client: socket.socket, doomed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if doomed.is_set():  # Redis ran the command; its answer never arrives
                    self.dropped += 1
                    client.shutdown(socket.SHUT_RDWR)
                    break
                client.sendall(data)
        client.close()
        upstream.close()

    def close(self) -> None:
        self._sock.close()
