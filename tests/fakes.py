"""Real parts for tests, the demo and the benchmark: a test PKI, a fake vendor, the shared values.

Nothing here is mocked: the fake vendor is an HTTPS server with a certificate from a test CA for
the vendor host names, and it records exactly what reached it. The values every suite shares (the
vendor hosts, the vendor keys, the repository root) live here, in a plain module, never in a
conftest. The gateway and redis-server processes are started by `tests.processes`.
"""

from __future__ import annotations

import datetime
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VENDOR_HOSTS = ("api.stripe.com", "api.openai.com", "serpapi.com")
# The vendor keys every gateway under test is started with (`tests.processes.GatewayProcess`).
VENDOR_ENV = {
    "TEST_STRIPE_KEY": "sk_test_fake_stripe_key_0001",
    "TEST_OPENAI_KEY": "sk-fake-openai-key-0002",
    "TEST_SERPAPI_KEY": "fake-serpapi-key-0003",
}
# What the fake answers besides its echo, by path: enough of Stripe's balance for the sandbox tool.
CANNED = {
    "/v1/balance": {
        "available": [{"amount": 10000, "currency": "usd"}, {"amount": 2500, "currency": "eur"}],
        "pending": [{"amount": 400, "currency": "usd"}, {"amount": 700, "currency": "jpy"}],
    }
}
REPO = Path(__file__).resolve().parent.parent


# --- PKI ---------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass
class PKI:
    """A CA and leaf certificates written as PEM files into `root`."""

    root: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(_name("egress-gateway test CA"))
            .issuer_name(_name("egress-gateway test CA"))
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_file.write_bytes(self._ca.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_file(self) -> Path:
        return self.root / "test-ca.pem"

    def leaf(self, name: str, hosts: tuple[str, ...], *, expired: bool = False) -> tuple[Path, Path]:
        """(cert chain file, key file) for `hosts`, signed by the test CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired else (
            now - datetime.timedelta(days=1),
            now + datetime.timedelta(days=30),
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self._ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        cert_file, key_file = self.root / f"{name}.pem", self.root / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self._ca.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        return cert_file, key_file


# --- fake vendor -------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def host(self) -> str:
        return self.headers.get("host", "").split(":")[0]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeVendor:
    """An HTTPS server standing in for every vendor host; records what it receives.

    Behaviour is set by attributes between calls: `status` (default 200), `delay` seconds before
    the response headers. Chat completions with `"stream": true` answer with OpenAI-style SSE that
    says back the last message in 7-character pieces (so a token in it is split across events);
    if `stream_gate` is set, the stream waits for it after the first event; `stream_interval`
    seconds pass between events (a slow, long-lived stream). With `echo_headers`
    it misbehaves as some vendors' error pages do: every request header (the injected credential
    too) is said back in the body, in the stream, and in response headers.
    """

    cert: tuple[Path, Path]
    received: list[Received] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    connections: int = 0
    stream_gate: threading.Event | None = None
    echo_headers: bool = False
    stream_interval: float = 0.0

    def __post_init__(self) -> None:
        vendor = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with vendor._lock:
                    vendor.connections += 1

            def _handle(self) -> None:
                body = self._body()
                rec = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with vendor._lock:
                    vendor.received.append(rec)
                if vendor.delay:
                    time.sleep(vendor.delay)
                if rec.path.startswith("/v1/chat/completions") and b'"stream":true' in body.replace(b" ", b""):
                    self._stream(rec)
                    return
                echo: dict[str, Any] = {"object": "fake", "host": rec.host, "path": rec.path, "method": rec.method, "echo": body.decode("utf-8", "replace")}
                if vendor.echo_headers:
                    echo["headers"] = rec.headers
                payload = json.dumps({**echo, **CANNED.get(rec.path, {})}).encode()
                self.send_response(vendor.status)
                self._echo_headers(rec)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _body(self) -> bytes:
                """The request body, framed by its length or chunked (as Node and aiohttp send
                a body they stream, and as the gateway forwards it)."""
                if "chunked" not in (self.headers.get("transfer-encoding") or "").lower():
                    length = int(self.headers.get("content-length") or 0)
                    return self.rfile.read(length) if length else b""
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return body

            def _stream(self, rec: Received) -> None:
                self.send_response(200)
                self._echo_headers(rec)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                said = f"You said: {rec.json()['messages'][-1]['content']}"
                if vendor.echo_headers:  # an error event echoing the request, its bytes cut mid-header
                    echoed = f"data: {json.dumps({'error': {'echo': rec.headers}})}\n\n".encode()
                    cut = echoed.index(b"Bearer ") + 12
                    self._chunk(echoed[:cut])
                    self._chunk(echoed[cut:])
                for i in range(0, len(said), 7):
                    event = {"id": "chatcmpl-fake", "choices": [{"index": 0, "delta": {"content": said[i : i + 7]}, "finish_reason": None}]}
                    self._chunk(f"data: {json.dumps(event)}\n\n".encode())
                    if i == 0 and vendor.stream_gate is not None:
                        vendor.stream_gate.wait(10)
                    time.sleep(vendor.stream_interval)
                done = {"id": "chatcmpl-fake", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                self._chunk(f"data: {json.dumps(done)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _echo_headers(self, rec: Received) -> None:
                if vendor.echo_headers:
                    for name, value in rec.headers.items():
                        self.send_header(f"X-Echo-{name}", value)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # http.server's 5 drops connections when 32 clients arrive at once
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(*self.cert)
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
        self.status, self.delay, self.stream_gate, self.echo_headers, self.stream_interval = 200, 0.0, None, False, 0.0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- settings ------------------------------------------------------------------------------


class Upstream(Protocol):
    """What a gateway config needs of a vendor: `FakeVendor` here, the chaos suite's `FaultVendor`."""

    @property
    def url(self) -> str: ...


def vendor_settings(pki: PKI, vendor: Upstream, **extra: Any) -> dict[str, Any]:
    """A gateway config that routes every vendor host to `vendor` and trusts the test CA."""
    settings: dict[str, Any] = {
        "upstreams": {h: vendor.url for h in VENDOR_HOSTS},
        "upstream_ca": str(pki.ca_file),
        "secrets": {"stripe": "env:TEST_STRIPE_KEY", "openai": "env:TEST_OPENAI_KEY", "serpapi": "env:TEST_SERPAPI_KEY"},
    }
    settings.update(extra)
    return settings

