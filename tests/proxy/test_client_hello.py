"""The agent's TLS handshake inside a tunnel, before any request: mitmproxy reads it before any hook
of the gateway runs, for a refused CONNECT (no token at all) as for a granted one.

Two things it did there: it logged what the agent sent (the SNI it named, or the whole ClientHello
as hex when it could not parse it), and it buffered a ClientHello as large as its length field
claims (16 MiB), parsing the whole buffer again on each read.
"""

from __future__ import annotations

import socket
import ssl

from tests.clients import basic, read_response, trusting
from tests.fakes import FakeVendor
from tests.processes import GatewayProcess

HANDSHAKE_FAILED = "Client TLS handshake failed"
SSN = b"078-05-1120"


def _handshake_record(body: bytes) -> bytes:
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body


def _tunnel(gw: GatewayProcess, auth: str | None) -> socket.socket:
    """A CONNECT answered 200 (granted, or refused with X-Egress-Error), before any TLS byte. From
    an address of its own: refusals without a token are counted per source, and other tests of the
    session gateway expect theirs from 127.0.0.1 to be audited one by one."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=("127.0.0.93", 0))
    head = "CONNECT api.stripe.com:443 HTTP/1.1\r\nHost: api.stripe.com:443\r\n"
    sock.sendall((head + (f"Proxy-Authorization: {auth}\r\n" if auth else "") + "\r\n").encode())
    answer = read_response(sock)
    assert answer.status == 200 and ("x-egress-error" in answer.headers) == (auth is None), answer
    return sock


def _closed_by_the_gateway(sock: socket.socket) -> bool:
    sock.settimeout(15)
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_what_the_agent_sent_in_its_handshake_stays_out_of_the_log(gateway: GatewayProcess) -> None:
    before = gateway.log_file.read_text(errors="replace")
    failures = before.count(HANDSHAKE_FAILED)
    # A client that does not trust the gateway CA fails the handshake; its SNI is the agent's text.
    sock = _tunnel(gateway, basic(gateway.token()))
    try:
        ssl.create_default_context().wrap_socket(sock, server_hostname="jane-doe-ssn-078051120.example")
    except ssl.SSLError:
        pass
    sock.close()
    # A ClientHello that cannot be parsed was logged whole, as hex; here without any token.
    sock = _tunnel(gateway, None)
    sock.sendall(_handshake_record(b"\x01\x00\x00\x40" + b"ssn " + SSN + b" jane.doe@example.com".ljust(0x40 - 15, b"x")))
    assert _closed_by_the_gateway(sock)
    sock.close()
    log = gateway.wait_log(HANDSHAKE_FAILED, failures + 2, timeout=10)[len(before) :]
    assert log.count(HANDSHAKE_FAILED) == 2
    assert "jane" not in log and "078051120" not in log and SSN.hex() not in log and b"jane".hex() not in log


def test_a_client_hello_is_held_to_64_kib(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """One claiming 16 MiB is cut at 64 KiB, whether the tunnel was granted or not. The agent's
    bytes that still came after the cut reached a TLS layer that never began: `mitmproxy has
    crashed!` and a traceback in the log."""
    before = gateway.log_file.read_text()
    for auth in (None, basic(gateway.token())):
        sock = _tunnel(gateway, auth)
        size = 16 * 1024 * 1024 - 1
        sock.sendall(_handshake_record(b"\x01" + size.to_bytes(3, "big") + b"A" * 16000))
        try:
            for _ in range(8):  # 128 KiB in all
                sock.sendall(_handshake_record(b"A" * 16384))
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert _closed_by_the_gateway(sock)
        sock.close()
    # The gateway still serves: a real handshake and call go through.
    tls = trusting(gateway).wrap_socket(_tunnel(gateway, basic(gateway.token())), server_hostname="api.stripe.com")
    tls.sendall(b"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
    assert tls.recv(65536).startswith(b"HTTP/1.1 200")
    tls.close()
    assert len(vendor.received) == 1
    assert "Traceback" not in gateway.log_file.read_text()[len(before) :]
