"""Real receivers for what the gateway sends out about itself: an OTLP/HTTP trace collector that
decodes the protobuf payload (`opentelemetry-proto`), a syslog (UDP) listener and an HTTPS SIEM.

Both record everything they receive; tests wait for what they expect with `wait_for`, since the
gateway exports in batches off its request path.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

T = TypeVar("T")


def wait_for(found: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll until `found()` is truthy (the exporters send in batches, off the request path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := found():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    service: str
    events: int


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP collector on a free loopback port: POST /v1/traces, protobuf.

    `deferred`: keep the payloads and decode them only at `decode_deferred` (a benchmark's
    receiver must not take the CPU the gateway it measures runs on)."""

    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    deferred: bool = False
    # Each accepted POST: its headers (lower-case names) and the services its spans came from
    posts: list[tuple[dict[str, str], set[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()
        self._payloads: list[tuple[bytes, dict[str, str]]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and self.headers.get("content-type") == "application/x-protobuf"
                headers = {k.lower(): v for k, v in self.headers.items()}
                if ok and receiver.deferred:
                    receiver._payloads.append((body, headers))
                elif ok:
                    receiver._take(ExportTraceServiceRequest.FromString(body), headers)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _take(self, req: ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests += 1
            services: set[str] = set()
            self.posts.append((headers, services))
            for rs in req.resource_spans:
                service = next((_value(a.value) for a in rs.resource.attributes if a.key == "service.name"), "")
                services.add(service)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(Span(
                            name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(), kind=s.kind,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            status_code=s.status.code, status_message=s.status.message, service=service,
                            events=len(s.events),
                        ))

    def decode_deferred(self) -> None:
        """Decode the payloads kept so far (`deferred`) into `spans`."""
        payloads, self._payloads = self._payloads, []
        for body, headers in payloads:
            self._take(ExportTraceServiceRequest.FromString(body), headers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def trace_of(self, decision_id: str) -> list[Span]:
        """The decision span carrying `decision_id` and its children."""
        with self._lock:
            roots = [s for s in self.spans if s.name == "egress.decision" and s.attributes.get("egress.decision_id") == decision_id]
            if not roots:
                return []
            root = roots[0]
            return [root, *(s for s in self.spans if s.trace_id == root.trace_id and s.parent_span_id == root.span_id)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SyslogReceiver:
    """A UDP syslog listener on a free loopback port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:  # closed
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


class SiemServer:
    """An HTTPS endpoint taking NDJSON batches of events; it answers 503 to the first `fail_next`
    batches (a SIEM restarting) and, while `gate` is set and unset, holds every batch."""

    def __init__(self, cert: tuple[Path, Path]) -> None:
        self.lines: list[bytes] = []
        self.attempts = 0
        self.fail_next = 0
        self.gate: threading.Event | None = None
        siem = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                siem.attempts += 1
                if siem.gate is not None:
                    siem.gate.wait(30)
                ndjson = self.headers.get("content-type") == "application/x-ndjson"
                status = 503 if siem.fail_next > 0 else 200 if ndjson else 415
                if status == 503:
                    siem.fail_next -= 1
                elif status == 200:
                    siem.lines += [line for line in body.split(b"\n") if line]
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*cert)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server.server_address[1]}/ingest"

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()
