"""A hostile or broken vendor: what it answers never carries the injected credential to the agent,
never costs the gateway unbounded memory, and an answer the gateway cannot check is a JSON refusal.

The vendor here is a raw-socket HTTPS server (no HTTP library would compress twice, send `x-gzip`,
name a header after the key or answer 103 before its 200); each test sets what it writes.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import brotli
import pytest
import requests

from gateway.pipeline.scrub import REPLACEMENT
from tests.fakes import PKI, VENDOR_ENV, VENDOR_HOSTS, vendor_settings
from tests.processes import GatewayProcess

KEY = VENDOR_ENV["TEST_OPENAI_KEY"]
EMBED = ("https://api.openai.com/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"})
MAX_RESPONSE_BODY = 8 << 20

Answer = Callable[[ssl.SSLSocket, bytes], None]  # the connection and the request head it answers


class RawVendor:
    """Reads one request per connection, hands its head to `answer`, then closes."""

    def __init__(self, pki: PKI, hosts: tuple[str, ...] = VENDOR_HOSTS) -> None:
        self.answer: Answer = lambda conn, head: _send(conn, 200, [("Content-Type", "application/json")], b"{}")
        self.bodies: list[bytes] = []  # every request body, as received
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(*pki.leaf("raw-vendor", hosts))
        self._sock = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(20)
        try:
            with self._tls.wrap_socket(raw, server_side=True) as conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")), 0)
                while len(body) < length:  # read it all: closing on unread bytes would reset the connection
                    body += conn.recv(65536)
                self.bodies.append(body)
                self.answer(conn, head)
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self._sock.close()


def _send(conn: ssl.SSLSocket, status: int, headers: list[tuple[str, str]], body: bytes, informational: bytes = b"") -> None:
    head = "".join(f"{k}: {v}\r\n" for k, v in [*headers, ("Content-Length", str(len(body)))])
    conn.sendall(informational + f"HTTP/1.1 {status} X\r\n{head}\r\n".encode() + body)


def _credential(head: bytes) -> bytes:
    """The credential the gateway injected, as the vendor received it."""
    line = next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"authorization:"))
    return line.split(b":", 1)[1].strip()


@pytest.fixture(scope="module")
def raw_vendor(pki: PKI) -> Iterator[RawVendor]:
    v = RawVendor(pki)
    yield v
    v.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, raw_vendor: RawVendor) -> Iterator[GatewayProcess]:
    settings = vendor_settings(pki, raw_vendor, timeouts={"connect": "2s", "read": "3s"}, max_response_body=MAX_RESPONSE_BODY,
                               breaker={"failures": 100, "reset": "30s"})  # the malformed answers here count as vendor faults
    with GatewayProcess(tmp_path_factory.mktemp("hostile-vendor"), settings).start() as g:
        yield g


def _call(gw: GatewayProcess) -> requests.Response:
    """An embeddings call with requests, which decodes what httpx does not (`x-gzip`, stacked codings)."""
    url, body = EMBED
    proxies = {"https": gw.proxy_url(gw.token(scopes=("openai:*",)))}
    return requests.post(url, json=body, proxies=proxies, verify=str(gw.ca_file), timeout=20)


def _outcome(gw: GatewayProcess, r: requests.Response) -> dict:
    [rec] = [x for x in gw.audit() if x["decision_id"] == r.headers["x-egress-decision-id"] and x.get("phase") == "outcome"]
    return rec


def _zstd_encoder() -> Callable[[bytes], bytes]:
    """A real zstd frame, from the encoder mitmproxy brings: zstandard (mitmproxy 11, Python 3.11),
    the standard library's compression.zstd (3.14+) or its backport (mitmproxy 12 on 3.12, 3.13).
    Before, 3.12 sent the frame's magic number before plain JSON, so the case never showed that a
    decodable zstd answer is refused too."""
    try:
        import zstandard

        return zstandard.ZstdCompressor().compress
    except ModuleNotFoundError:
        pass
    try:
        from compression import zstd
    except ModuleNotFoundError:
        from backports import zstd
    return zstd.compress


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "GZip": gzip.compress,
    "deflate": zlib.compress,
    "gzip, gzip": lambda b: gzip.compress(gzip.compress(b)),
    "x-gzip": gzip.compress,
    "br": brotli.compress,
    "zstd": _zstd_encoder(),
}


@pytest.mark.parametrize("encoding", list(ENCODERS))
def test_an_echo_in_any_content_encoding_never_reaches_the_agent(gw: GatewayProcess, raw_vendor: RawVendor, encoding: str) -> None:
    """The gateway asks for an uncompressed answer; one gzip or deflate layer sent anyway is decoded
    (the agent gets it plain, the echoed key scrubbed), any other coding the agent's client would
    decode and the gateway would not read is refused. Before: `gzip, gzip` and `x-gzip` handed the
    key to a requests/urllib3 agent."""

    def echo(conn: ssl.SSLSocket, head: bytes) -> None:
        body = ENCODERS[encoding](json.dumps({"echo": _credential(head).decode()}).encode())
        _send(conn, 200, [("Content-Type", "application/json"), ("Content-Encoding", encoding)], body)

    raw_vendor.answer = echo
    r = _call(gw)
    assert KEY not in r.text + str(r.headers)
    if encoding.lower() in ("gzip", "deflate"):
        assert (r.status_code, "content-encoding" in r.headers) == (200, False)
        assert r.json() == {"echo": f"Bearer {REPLACEMENT.decode()}"}
        assert _outcome(gw, r)["secrets_scrubbed"] == 1
    else:
        assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_failed")
        assert "cannot check" in r.json()["error"]["message"]
        assert _outcome(gw, r)["code"] == "upstream_failed"


def test_a_compressed_event_stream_is_refused_before_any_byte_is_relayed(gw: GatewayProcess, raw_vendor: RawVendor) -> None:
    """A stream passes chunk by chunk through the scrubber, which reads plain bytes: a gzip'ed SSE
    echo reached the agent whole before."""

    def sse(conn: ssl.SSLSocket, head: bytes) -> None:
        events = b"data: " + json.dumps({"echo": _credential(head).decode()}).encode() + b"\n\ndata: [DONE]\n\n"
        _send(conn, 200, [("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip")], gzip.compress(events))

    raw_vendor.answer = sse
    r = _call(gw)
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_failed")
    assert KEY not in r.text


def test_a_compression_bomb_is_refused_without_inflating_it(gw: GatewayProcess, raw_vendor: RawVendor) -> None:
    """~100 KiB of gzip that inflate to 100 MiB: decoded only up to max_response_body (8 MiB here).
    Before, the gateway inflated it whole (a 400 KiB bomb took it from 216 MB to 1 GB of RSS)."""
    bomb = gzip.compress(b"[" + b"0," * (50 << 20) + b"0]", 9)
    raw_vendor.answer = lambda conn, head: _send(conn, 200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], bomb)
    assert gw.proc is not None
    Path(f"/proc/{gw.proc.pid}/clear_refs").write_text("5")  # VmHWM from here
    r = _call(gw)
    peak_growth = _kib(gw.proc.pid, "VmHWM:") - _kib(gw.proc.pid, "VmRSS:")
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_failed")
    assert f"max_response_body ({MAX_RESPONSE_BODY} bytes) once decoded" in r.json()["error"]["message"]
    assert peak_growth < 3 * MAX_RESPONSE_BODY // 1024
    raw_vendor.answer = lambda conn, head: _send(conn, 200, [("Content-Type", "application/json")], b'{"ok": true}')
    assert _call(gw).json() == {"ok": True}


def test_an_event_stream_over_the_limit_is_refused_with_its_own_decision_and_reason(gw: GatewayProcess, raw_vendor: RawVendor) -> None:
    """mitmproxy refuses a Content-Length over max_response_body at the head, after the headers
    hook made the answer a stream: the agent got an unclaimed page, `the request failed`, whose
    decision id no record of the call held."""
    events = b"data: " + b"x" * (MAX_RESPONSE_BODY + 1) + b"\n\n"
    raw_vendor.answer = lambda conn, head: _send(conn, 200, [("Content-Type", "text/event-stream")], events)
    r = _call(gw)
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_failed")
    assert r.json()["error"]["message"] == f"the vendor's response exceeds max_response_body ({MAX_RESPONSE_BODY} bytes)"
    assert _outcome(gw, r)["code"] == "upstream_failed"


def test_chunked_trailers_from_the_vendor_are_a_prompt_json_refusal_never_a_crash(gw: GatewayProcess, raw_vendor: RawVendor) -> None:
    """mitmproxy 11 raised NotImplementedError on a vendor's trailers: `mitmproxy has crashed!`
    and a traceback in the log, and an agent talking to a keep-alive vendor waited for the read
    timeout's 504."""
    body = b'{"data": []}'

    def trailers(conn: ssl.SSLSocket, head: bytes) -> None:
        chunked = b"%x\r\n%s\r\n0\r\nX-Checksum: 1\r\n\r\n" % (len(body), body)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n" + chunked)
        conn.recv(1)  # a keep-alive vendor: the connection stays open until the gateway closes it

    raw_vendor.answer = trailers
    r = _call(gw)
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_failed")
    assert _outcome(gw, r)["code"] == "upstream_failed"
    assert "has crashed" not in gw.log_file.read_text() and "NotImplementedError" not in gw.log_file.read_text()
    raw_vendor.answer = lambda conn, head: _send(conn, 200, [("Content-Type", "application/json")], b'{"ok": true}')
    assert _call(gw).json() == {"ok": True}


def test_a_header_named_after_the_credential_is_dropped(gw: GatewayProcess, raw_vendor: RawVendor) -> None:
    """Header values were scrubbed, names were not: `X-<key>: 1` reached the agent."""

    def named(conn: ssl.SSLSocket, head: bytes) -> None:
        key = _credential(head).split()[-1].decode()
        _send(conn, 200, [("Content-Type", "application/json"), (f"X-{key}", "1"), ("X-Kept", "yes")], b"{}")

    raw_vendor.answer = named
    r = _call(gw)
    assert (r.status_code, r.headers["x-kept"]) == (200, "yes")
    assert KEY not in str(r.headers)
    assert _outcome(gw, r)["secrets_scrubbed"] == 1


def _spellings(key: str) -> dict[str, str]:
    """Echoes of the key no plain search finds: upper-cased (a server normalising headers), every
    character escaped (percent, JSON, HTML references), and escapes mixed with plain characters."""
    return {
        "upper": f"BEARER {key.upper()}",
        "percent": "".join(f"%{b:02X}" for b in key.encode()),
        "json": "".join(f"\\u{ord(c):04x}" for c in key),
        "html": "".join(f"&#{ord(c)};" if i % 2 else f"&#x{ord(c):X};" for i, c in enumerate(key)),
        "mixed": key.replace("-", "&#45;", 1).replace("-", "%2d", 1).replace("-", "\\u002D", 1),
    }


@pytest.mark.parametrize("stream", [False, True])
def test_an_echo_spelled_in_another_case_or_escaped_never_reaches_the_agent(gw: GatewayProcess, raw_vendor: RawVendor, stream: bool) -> None:
    """Before, only whole forms of the key were scrubbed (as is, URL- or JSON-escaped as a whole,
    base64): `BEARER SK-FAKE-...`, `&#115;&#107;...` or `sk\\u002dfake-...` reached the agent. A
    stream framed by Content-Length is re-framed chunked: its scrubbed length is not the vendor's
    (the agent waited for the missing bytes until its own timeout)."""

    def echo(conn: ssl.SSLSocket, head: bytes) -> None:
        forms = _spellings(_credential(head).split()[-1].decode())
        body = b"".join(f"{'data: ' if stream else ''}{name}: {form}\n\n".encode() for name, form in forms.items())
        _send(conn, 200, [("Content-Type", "text/event-stream" if stream else "text/html"), ("X-Echo", forms["upper"])], body)

    raw_vendor.answer = echo
    r = _call(gw)
    assert r.status_code == 200
    for form in _spellings(KEY).values():
        assert form not in r.text + str(r.headers)
    assert r.headers["x-echo"] == f"BEARER {REPLACEMENT.decode()}"
    assert r.text.count(REPLACEMENT.decode()) == 5
    assert _outcome(gw, r)["secrets_scrubbed"] == 6


@pytest.mark.parametrize("informational", [
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
])
def test_an_informational_answer_is_refused_and_its_connection_never_reused(
    gw: GatewayProcess, raw_vendor: RawVendor, informational: bytes
) -> None:
    """mitmproxy took a 103 for the final answer (the agent waited on it until its own timeout, the
    real 200 left on the vendor connection) and relayed a 101 the agent never asked for. Then,
    refused: mitmproxy still made the vendor's connection a pipe after its 101 and handed what
    followed to a call already answered (`mitmproxy has crashed!` and a traceback in the log)."""
    raw_vendor.answer = lambda conn, head: _send(conn, 200, [("Content-Type", "application/json")], b'{"late": 1}', informational)
    r = _call(gw)
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_failed")
    assert "informational" in r.json()["error"]["message"]
    assert _outcome(gw, r)["code"] == "upstream_failed"
    raw_vendor.answer = lambda conn, head: _send(conn, 200, [("Content-Type", "application/json")], b'{"ok": true}')
    assert _call(gw).json() == {"ok": True}
    assert "Traceback" not in gw.log_file.read_text()  # the crash was logged right after the refusal


def _kib(pid: int, field: str) -> int:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith(field))
    return int(line.split()[1])
