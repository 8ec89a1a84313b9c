"""Section 6: hostile input gets a clear 4xx, the vendor sees nothing, the gateway keeps serving
others, and its memory stays bounded (VmRSS before and after, from /proc).

Raw cases are written byte for byte into a real TLS tunnel (no HTTP library would send them).
"""

from __future__ import annotations

import gzip
import json
import re
import select
import socket
import ssl
import time

import pytest

from tests.chaos import harness
from tests.chaos.faults import FaultVendor
from tests.chaos.harness import BALANCE, CHAT, PAY, agent, code_of, rss_kib, send
from tests.chaos.report import ChaosReport
from tests.clients import basic, chat, client, raw_connect, tunnel_tls
from tests.fakes import PKI
from tests.processes import GatewayProcess

H = "Host: api.stripe.com\r\n"
FORM = "Content-Type: application/x-www-form-urlencoded\r\n"
CLIENT_DEADLINE = 2.0
RSS_GROWTH_LIMIT_KIB = 200 * 1024  # generous: the point is "bounded", not a tight figure


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, fault_vendor_server: FaultVendor):
    g = harness.launch(tmp_path_factory.mktemp("hostile"), pki, fault_vendor_server,
                       timeouts={"connect": "2s", "read": "2s", "client": f"{CLIENT_DEADLINE}s"})
    assert g.proc is not None
    rss = rss_kib(g.proc.pid)
    yield g
    _memory_case(g, rss)
    harness.retire(g)


def _memory_case(g: GatewayProcess, before: int) -> None:
    assert g.proc is not None
    after = rss_kib(g.proc.pid)
    with harness.REPORT.case("hostile input: gateway memory (VmRSS)", f"grows < {RSS_GROWTH_LIMIT_KIB // 1024} MiB") as case:
        case.observed = f"{before // 1024} -> {after // 1024} MiB"
        assert after - before < RSS_GROWTH_LIMIT_KIB


def _raw(report: ChaosReport, g: GatewayProcess, data: bytes) -> str:
    """Send `data` inside a tunnel; `status code` of the answer, or how the connection ended."""
    s = tunnel_tls(g, agent(g, "chatter"), "api.stripe.com")
    try:
        got = _exchange(s, data)
    finally:
        s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    if not head:
        report.track(ConnectionError("closed without an answer"))
        return "closed without an answer"
    status = int(head.split(b" ", 2)[1])
    report.track(status)
    report.error_bodies.append(body)
    return f"{status} {json.loads(body)['error']['code']}" if status >= 400 else str(status)


def _exchange(s: ssl.SSLSocket, data: bytes) -> bytes:
    """Write `data` and read the answer in one non-blocking loop: the gateway may answer (and
    close) before it has read everything, and writing on into a closed connection would make its
    kernel reset it and discard the answer; a TLS session ticket must not pass for an answer."""
    s.setblocking(False)
    view, got = memoryview(data), b""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if view:
            try:
                view = view[s.send(view[:16384]) :]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
            except OSError:
                view = view[:0]  # closed by the gateway: read what it said
        try:
            chunk = s.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            select.select([s], [s] if view else [], [], 0.05)
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
        view = view[:0]
        head, sep, body = got.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if sep and length and len(body) >= int(length.group(1)):
            break
    return got


def _serves_others(report: ChaosReport, g: GatewayProcess) -> None:
    with client(g, agent(g, "chatter", sub="bystander")) as c:
        assert code_of(send(report, c, "GET", BALANCE)) == "200"


RAW_CASES = [
    ("oversized header (4 MiB)", f"GET /v1/balance HTTP/1.1\r\n{H}X-Big: {'a' * 4_000_000}\r\n\r\n", "400 bad_request"),
    ("20000 headers", f"GET /v1/balance HTTP/1.1\r\n{H}" + "".join(f"X-{i}: a\r\n" for i in range(20000)) + "\r\n",
     "400 bad_request"),
    ("header injection: bare CR", f"GET /v1/balance HTTP/1.1\r\n{H}X-A: b\rStripe-Account: acct_evil\r\n\r\n", "400 bad_request"),
    ("header injection: obs-fold", f"GET /v1/balance HTTP/1.1\r\n{H}X-A: b\r\n Stripe-Account: acct_evil\r\n\r\n",
     "400 bad_request"),
    ("header injection: NUL", f"GET /v1/balance HTTP/1.1\r\n{H}X-A: b\x00c\r\n\r\n", "400 bad_request"),
    ("smuggling: Content-Length + Transfer-Encoding",
     f"POST /v1/payment_intents HTTP/1.1\r\n{H}{FORM}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     "400 bad_request"),
    ("smuggling: two different Content-Length",
     f"POST /v1/payment_intents HTTP/1.1\r\n{H}{FORM}Content-Length: 23\r\nContent-Length: 5\r\n\r\namount=100&currency=usd",
     "400 bad_request"),
    ("smuggling: obfuscated Transfer-Encoding", f"POST /v1/payment_intents HTTP/1.1\r\n{H}{FORM}Content-Length: 4\r\n"
     "Transfer-Encoding: xchunked\r\n\r\nabcd", "400 bad_request"),
    ("absolute-form URL for another host", f"GET https://evil.example/v1/balance HTTP/1.1\r\n{H}\r\n", "403 domain_fronting"),
    ("path: dot segment", f"GET /v1/payment_intents/.. HTTP/1.1\r\n{H}\r\n", "400 bad_request"),
    ("path: %2e%2e", f"GET /v1/payment_intents/%2e%2e HTTP/1.1\r\n{H}\r\n", "400 bad_request"),
    ("path: double encoding %252e%252e", f"GET /v1/payment_intents/%252e%252e HTTP/1.1\r\n{H}\r\n", "400 bad_request"),
    ("path: encoded slash", f"GET /v1/payment_intents/pi_1%2f..%2fbalance HTTP/1.1\r\n{H}\r\n", "400 bad_request"),
]


@pytest.mark.parametrize(("name", "data", "expected"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_raw_hostile_request(gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport, name: str, data: str, expected: str) -> None:
    with report.case(f"hostile: {name}", f"{expected}, not sent") as case:
        observed = _raw(report, gw, data.encode("latin-1"))
        case.observed = f"{observed}, sent {len(fault_vendor.seen())}"
        assert observed == expected and not fault_vendor.seen()
        _serves_others(report, gw)


def _bodies() -> list[tuple[str, str, str, dict, str]]:
    bomb = gzip.compress(json.dumps(chat("x")).encode() + b" " * 50_000_000, compresslevel=9)
    return [
        ("body over max_body (2 MiB)", "POST", CHAT, {"content": b'{"model":"' + b"m" * (2 << 20) + b'"}',
                                                      "headers": {"content-type": "application/json"}}, "413 body_too_large"),
        ("JSON depth bomb (100000 levels)", "POST", CHAT, {"content": b"[" * 100_000 + b"]" * 100_000,
                                                           "headers": {"content-type": "application/json"}}, "400 malformed_body"),
        ("JSON number with 10^6 digits", "POST", CHAT, {"content": b'{"model":"gpt-4o-mini","n":' + b"9" * 1_000_000 + b"}",
                                                        "headers": {"content-type": "application/json"}}, "400 malformed_body"),
        ("gzip bomb body (50 MB inflated)", "POST", CHAT, {"content": bomb, "headers": {
            "content-type": "application/json", "content-encoding": "gzip"}}, "400 malformed_body"),
        ("Stripe form with 10^5 keys", "POST", PAY, {"content": "&".join(f"k{i}=1" for i in range(100_000)).encode(),
                                                     "headers": {"content-type": "application/x-www-form-urlencoded"}},
         "400 malformed_body"),
        ("unicode confusable JSON key (Cyrillic o)", "POST", CHAT, {"json": {"m\u043edel": "o1-pro", **chat("hi")}},
         "400 schema_violation"),
        ("duplicate JSON key", "POST", CHAT, {"content": b'{"model":"gpt-4o-mini","messages":[],"model":"o1-pro"}',
                                              "headers": {"content-type": "application/json"}}, "400 malformed_body"),
        ("NFKC look-alike JSON key (fullwidth m)", "POST", CHAT, {"content": '{"model":"gpt-4o-mini","\uff4dodel":"o1-pro",'
                                                                 '"messages":[]}'.encode(), "headers": {"content-type": "application/json"}},
         "400 malformed_body"),
    ]


@pytest.mark.parametrize("case_no", range(8))
def test_hostile_body(gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport, case_no: int) -> None:
    name, method, url, kw, expected = _bodies()[case_no]
    with report.case(f"hostile: {name}", f"{expected}, not sent") as case:
        with client(gw, agent(gw, "chatter")) as c:
            r = send(report, c, method, url, **kw)
        case.observed = f"{code_of(r)}, sent {len(fault_vendor.seen())}"
        assert code_of(r) == expected and not fault_vendor.seen()
        _serves_others(report, gw)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("93.184.216.34", "403 host_denied"), ("[::1]", "403 host_denied"), ("2130706433", "403 host_denied"),
     ("api.xn--strpe-wta.com", "403 host_denied"), ("api.str\u0456pe.com", "400 bad_request")],
)
def test_hostile_connect_target(gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport, host: str, expected: str) -> None:
    label = host.encode("ascii", "backslashreplace").decode()
    with report.case(f"hostile: CONNECT {label}", f"{expected}, no tunnel") as case:
        s, r = raw_connect(gw, host, basic(agent(gw, "chatter")))
        s.close()
        report.track(r.status)
        report.error_bodies.append(r.body)
        case.observed = f"{r.status} {r.error()['code']}" if r.status >= 400 else str(r.status)
        assert case.observed == expected
        _serves_others(report, gw)


def _slowloris(g: GatewayProcess, tls: bool) -> socket.socket:
    """A connection that sends a request head one byte at a time and never finishes it."""
    if tls:
        sock: socket.socket = tunnel_tls(g, agent(g, "chatter"), "api.stripe.com")
        sock.sendall(b"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\nX-Slow: ")
    else:
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        sock.sendall(b"CONNECT api.stripe.com:443 HTTP/1.1\r\nX-Slow: ")
    return sock


def _closed_by_peer(sock: socket.socket, budget: float) -> bool:
    """Keep trickling a byte every 0.2 s; True once the gateway has closed the connection."""
    deadline = time.monotonic() + budget
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"a")
            if sock.recv(1024) == b"":
                return True
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except (OSError, ssl.SSLError):
            return True
    return False


@pytest.mark.parametrize("where", ["CONNECT head", "request head inside the tunnel"])
def test_slowloris(gw: GatewayProcess, report: ChaosReport, where: str) -> None:
    with report.case(f"hostile: slowloris x20 ({where})", f"closed by the gateway (timeouts.client {CLIENT_DEADLINE:.0f} s)") as case:
        socks = [_slowloris(gw, tls=where != "CONNECT head") for _ in range(20)]
        _serves_others(report, gw)
        closed = sum(_closed_by_peer(s, CLIENT_DEADLINE + 15) for s in socks)
        for s in socks:
            s.close()
            report.track(ConnectionError("slowloris closed"))
        case.observed = f"{closed}/20 closed by the gateway"
        assert closed == 20
        _serves_others(report, gw)


def test_trickled_request_body(gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    with report.case("hostile: request body trickled past the deadline", "closed, not sent, audited") as case:
        s = tunnel_tls(gw, agent(gw, "chatter"), "api.stripe.com")
        s.sendall(f"POST /v1/payment_intents HTTP/1.1\r\n{H}{FORM}Content-Length: 1000\r\n\r\namount=".encode())
        closed = _closed_by_peer(s, CLIENT_DEADLINE + 15)
        s.close()
        report.track(ConnectionError("trickled body closed"))
        refused = [r for r in gw.audit() if r.get("path") == "/v1/payment_intents" and r.get("decision") == "deny"]
        case.observed = f"closed={closed}, sent {len(fault_vendor.seen())}, audited deny={bool(refused)}"
        assert closed and not fault_vendor.seen() and refused
