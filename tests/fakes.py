"""Real parts for tests, the demo and the benchmark: a test PKI, fake vendors, a gateway process.

Nothing here is mocked: the fake vendor is an HTTPS server with a certificate from a test CA for
the vendor host names, it records exactly what reached it, and the gateway is started as the real
`egress-gateway run` in a subprocess on free ports.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VENDOR_HOSTS = ("api.stripe.com", "api.openai.com", "serpapi.com")
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
        now = datetime.datetime.now(datetime.timezone.utc)
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
        now = datetime.datetime.now(datetime.timezone.utc)
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
    seconds pass between events (a slow, long-lived stream).
    """

    cert: tuple[Path, Path]
    received: list[Received] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    connections: int = 0
    stream_gate: threading.Event | None = None
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
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with vendor._lock:
                    vendor.received.append(rec)
                if vendor.delay:
                    time.sleep(vendor.delay)
                if rec.path.startswith("/v1/chat/completions") and b'"stream":true' in body.replace(b" ", b""):
                    self._stream(rec)
                    return
                echo = {"object": "fake", "host": rec.host, "path": rec.path, "method": rec.method, "echo": body.decode("utf-8", "replace")}
                payload = json.dumps({**echo, **CANNED.get(rec.path, {})}).encode()
                self.send_response(vendor.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, rec: Received) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                said = f"You said: {rec.json()['messages'][-1]['content']}"
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
        self.status, self.delay, self.stream_gate, self.stream_interval = 200, 0.0, None, 0.0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the gateway as a real process ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


@dataclass
class GatewayProcess:
    """`egress-gateway run` in a subprocess with its own config, state dir and ports."""

    root: Path
    settings: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port, self.api_port = free_port(), free_port()
        self.state_dir = self.root / "state"
        self.config_file = self.root / "gateway.yaml"
        cfg = {"listen": f"127.0.0.1:{self.port}", "api_listen": f"127.0.0.1:{self.api_port}", **self.settings}
        self.config_file.write_text(yaml.safe_dump(cfg))
        self.log_file = self.root / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gateway.cli", *args]
        if args and args[0] not in ("--help",):
            cmd += ["--config", str(self.config_file), "--state-dir", str(self.state_dir)]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, cwd=REPO, env={**os.environ, **self.env}, timeout=60)

    def start(self) -> GatewayProcess:
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_file), "--state-dir", str(self.state_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **self.env},
        )
        wait_port(self.port, proc=self.proc)
        wait_port(self.api_port, proc=self.proc)
        return self

    def stop(self, sig: int | None = None) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def audit_file(self) -> Path:
        return self.state_dir / "audit.jsonl"

    def audit(self) -> list[dict[str, Any]]:
        """The audit log's records, less the chain's own signature records."""
        if not self.audit_file.exists():
            return []
        records = (json.loads(line) for line in self.audit_file.read_text().splitlines() if line.strip())
        return [rec for rec in records if rec.get("type") != "signature"]

    def token(self, sub: str = "agent-1", role: str = "finance", scopes: tuple[str, ...] = ("*",), **kw: Any) -> str:
        from gateway.identity import tokens as identity

        key = identity.load_or_create_key(self.state_dir / "signing-key.pem")
        kw.setdefault("ttl", 600)
        kw.setdefault("max_ttl", 1800)
        return identity.issue(key, sub=sub, role=role, scopes=scopes, **kw)

    def proxy_url(self, token: str, user: str = "agent") -> str:
        return f"http://{user}:{token}@127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@contextmanager
def running_gateway(root: Path, settings: dict[str, Any], env: dict[str, str] | None = None) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(root, settings, env or {}).start()
    try:
        yield gw
    finally:
        gw.stop()


def vendor_settings(pki: PKI, vendor: FakeVendor, **extra: Any) -> dict[str, Any]:
    """A gateway config that routes every vendor host to `vendor` and trusts the test CA."""
    settings: dict[str, Any] = {
        "upstreams": {h: vendor.url for h in VENDOR_HOSTS},
        "upstream_ca": str(pki.ca_file),
        "secrets": {"stripe": "env:TEST_STRIPE_KEY", "openai": "env:TEST_OPENAI_KEY", "serpapi": "env:TEST_SERPAPI_KEY"},
    }
    settings.update(extra)
    return settings


VENDOR_ENV = {
    "TEST_STRIPE_KEY": "sk_test_fake_stripe_key_0001",
    "TEST_OPENAI_KEY": "sk-fake-openai-key-0002",
    "TEST_SERPAPI_KEY": "fake-serpapi-key-0003",
}
