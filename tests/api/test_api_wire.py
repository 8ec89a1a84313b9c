"""The API port as a hostile client speaks to it: raw bytes h11 refuses are the contract's JSON
`bad_request` (sized, with its decision id, the connection closed), never uvicorn's plain text."""

from __future__ import annotations

import socket
import time

import pytest

from tests.clients import RawResponse, read_response
from tests.processes import GatewayProcess

# id -> (bytes, the statuses of the well-formed requests answered before the refusal)
GARBLED: dict[str, tuple[bytes, list[int]]] = {
    "garbage": (b"GARBAGE\r\n\r\n", []),
    "header-name-with-space": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", []),
    "http11-without-host": (b"GET /healthz HTTP/1.1\r\n\r\n", []),
    "two-content-lengths": (b"POST /v1/detokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", []),
    "negative-content-length": (b"POST /v1/detokenize HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", []),
    "nul-in-target": (b"GET /he\x00althz HTTP/1.1\r\nHost: x\r\n\r\n", []),
    "raw-utf8-target": (b"GET /h\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", []),
    # h11 reads "PRI * HTTP/2.0" as a request (the JSON 404), then refuses the frame bytes after it
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", [404]),
    "after-a-good-request": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n", [200]),
}


def exchange(gw: GatewayProcess, data: bytes) -> tuple[list[RawResponse], bytes]:
    """Send `data`, read until the server closes; the answers in order and any bytes after them.
    (All of it is read first: two answers may arrive in one segment.)"""
    received = b""
    with socket.create_connection(("127.0.0.1", gw.api_port), timeout=10) as sock:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            received += chunk
    answers = []
    while b"\r\n\r\n" in received:
        head, _, received = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        answers.append(RawResponse(int(lines[0].split()[1]), headers, received[:length]))
        received = received[length:]
    return answers, received


def assert_json_bad_request(answer: RawResponse) -> None:
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.body)
    assert answer.error()["code"] == "bad_request"
    assert answer.error()["decision_id"].startswith("dec_")


@pytest.mark.parametrize(("data", "before"), GARBLED.values(), ids=GARBLED.keys())
def test_a_request_h11_refuses_is_the_json_bad_request(gateway: GatewayProcess, data: bytes, before: list[int]) -> None:
    answers, rest = exchange(gateway, data)
    assert_json_bad_request(answers[-1])
    assert rest == b""  # the refusal is the last thing written: then the connection closes
    assert [a.status for a in answers[:-1]] == before


def test_broken_chunked_framing_while_the_app_reads_the_body(gateway: GatewayProcess) -> None:
    """The app had started reading when the framing broke: uvicorn sent plain text, then the app's
    own answer failed inside h11 ("can't handle event type Response") with a traceback in the log."""
    log_before = len(gateway.log_file.read_text())
    token = gateway.token(sub="wire-broken-body")
    head = f"POST /v1/detokenize HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    answers, rest = exchange(gateway, head.encode() + b"5\r\n{\"a\":\r\nZZ\r\n1\r\n\r\n0\r\n\r\n")
    assert len(answers) == 1 and rest == b""
    assert_json_bad_request(answers[0])
    # The app's side, after the answer: the body never arrived, audited as the hang-up it is
    # (it was "API handler failed" and a ClientDisconnect traceback). Polled: a failing test's bound.
    deadline = time.monotonic() + 10
    while not (closed := [r for r in gateway.audit() if r.get("sub") == "wire-broken-body"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(r["code"], r["path"]) for r in closed] == [("client_closed", "/v1/detokenize")]
    assert "Traceback" not in gateway.log_file.read_text()[log_before:]


def test_a_request_answered_before_its_broken_body_gets_one_answer(gateway: GatewayProcess) -> None:
    """No token: the 401 goes out before the body is read; the broken chunk framing after it must
    not add a second status line to the connection, only close it."""
    head = b"POST /v1/detokenize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.api_port), timeout=10) as sock:
        sock.sendall(head)
        first = read_response(sock)
        sock.sendall(b"ZZ\r\nabc\r\n0\r\n\r\n")
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert (first.status, first.error()["code"]) == (401, "identity_missing")
    assert rest == b""


def test_a_head_past_the_limit_is_refused_before_it_is_all_read(gateway: GatewayProcess) -> None:
    """Memory stays bounded: a header that never ends is cut at h11's limit, not buffered."""
    with socket.create_connection(("127.0.0.1", gateway.api_port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        with pytest.raises(OSError):  # reset or broken pipe once the gateway has answered and closed
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"a" * 4096)
                sent += 4096
        assert sent < 64 * 1024 * 1024


@pytest.mark.parametrize(
    "data",
    [b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 3000 + b"\r\n"],
    ids=["100KB-request-line", "100KB-header", "3000-headers"],
)
def test_a_head_past_the_limit_is_refused_even_when_it_arrives_whole(gateway: GatewayProcess, data: bytes) -> None:
    """h11 checks its limit only on an incomplete head: one that arrived in one read was parsed."""
    answers, rest = exchange(gateway, data)
    assert len(answers) == 1 and rest == b""
    assert_json_bad_request(answers[0])


def test_a_large_but_reasonable_head_is_served(gateway: GatewayProcess) -> None:
    """Long JWTs and cookies fit: 12 KB of headers is an ordinary request."""
    answers, _ = exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: c=" + b"a" * 12_000 + b"\r\n\r\n")
    assert (answers[0].status, answers[0].body) == (200, b'{"status":"ok"}')


def test_a_websocket_upgrade_is_an_ordinary_request(gateway: GatewayProcess) -> None:
    """The API has no WebSocket route; uvicorn handed upgrades to wsproto, answered a bodiless 403."""
    answers, _ = exchange(gateway, b"GET /v1/decisions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n"
                                   b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert (answers[0].status, answers[0].error()["code"]) == (401, "identity_missing")
