"""The circuit breaker counts the vendor's failures, never the gateway's own refusals.

A refusal the gateway makes of an answer the vendor gave correctly (over `max_response_body`, raw
or once decoded; a 103 before the answer; chunked trailers; an encoding the gateway does not
decode) is provoked by what agents ask for (a huge page). Counted, two agents asking for huge pages
opened the vendor's circuit for every agent; they must not. A vendor that really fails (5xx, a
reset, a compressed body that does not decode) still opens it. Real gateway, raw-socket vendor.
"""

from __future__ import annotations

import gzip
import ssl
import time
from collections.abc import Callable, Iterator

import brotli
import httpx
import openai
import pytest
import requests

from gateway.proxy.mitm_compat import TRAILERS_UNREAD
from tests.fakes import PKI, vendor_settings
from tests.processes import GatewayProcess
from tests.proxy.test_hostile_vendor import EMBED, RawVendor, _send

LIMIT = 1 << 20  # as max_body: the raw limit mitmproxy enforces is the larger of the two
FAILURES = 3
RESET = 2
JSON = [("Content-Type", "application/json")]
NOISY = ("noisy-1", "noisy-2")  # two agents: the shared circuit opens on a streak spanning two (`breaker.agents`)

Answer = Callable[[ssl.SSLSocket, bytes], None]


@pytest.fixture(scope="module")
def vendor(pki: PKI) -> Iterator[RawVendor]:
    v = RawVendor(pki)
    yield v
    v.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor: RawVendor) -> Iterator[GatewayProcess]:
    settings = vendor_settings(pki, vendor, timeouts={"connect": "2s", "read": "3s"}, max_response_body=LIMIT,
                               breaker={"failures": FAILURES, "reset": f"{RESET}s", "agents": 2})
    with GatewayProcess(tmp_path_factory.mktemp("breaker-blame"), settings).start() as g:
        yield g


def _call(gw: GatewayProcess, sub: str) -> requests.Response:
    url, body = EMBED
    proxies = {"https": gw.proxy_url(gw.token(sub=sub, scopes=("openai:*",)))}
    return requests.post(url, json=body, proxies=proxies, verify=str(gw.ca_file), timeout=20)


def _code(r: requests.Response) -> str:
    """The gateway's refusal code, or the vendor's own status."""
    error = r.json().get("error") if r.status_code >= 400 else None
    return error["code"] if isinstance(error, dict) and "code" in error else str(r.status_code)


def _fine(conn: ssl.SSLSocket, head: bytes) -> None:
    _send(conn, 200, JSON, b'{"data": []}')


def _trailers(conn: ssl.SSLSocket, head: bytes) -> None:
    body = b'{"data": []}'
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                 + b"%x\r\n%s\r\n0\r\nX-Sum: 1\r\n\r\n" % (len(body), body))


HUGE = b'{"data": "' + b"x" * (4 * LIMIT) + b'"}'
GATEWAY_SIDE: dict[str, Answer] = {
    "answer over max_response_body": lambda conn, head: _send(conn, 200, JSON, HUGE),
    "gzip answer over max_response_body once decoded": lambda conn, head: _send(
        conn, 200, [*JSON, ("Content-Encoding", "gzip")], gzip.compress(HUGE)),
    "brotli answer (not decoded by the gateway)": lambda conn, head: _send(
        conn, 200, [*JSON, ("Content-Encoding", "br")], brotli.compress(b"{}")),
    "103 before the answer": lambda conn, head: _send(conn, 200, JSON, b"{}", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"),
    "chunked trailers": _trailers,
}


def _reset(conn: ssl.SSLSocket, head: bytes) -> None:
    conn.close()


VENDOR_FAULTS: dict[str, Answer] = {
    "status 500": lambda conn, head: _send(conn, 500, JSON, b'{"error": {"message": "down"}}'),
    "reset before headers": _reset,
    "gzip answer that does not decode": lambda conn, head: _send(conn, 200, [*JSON, ("Content-Encoding", "gzip")], b"\x1f\x8bnot gzip"),
    # Broken HTTP whose error message quotes the vendor's bytes: they named the trailers refusal,
    # and a message merely holding that text was taken for the gateway's own refusal (neutral).
    "status line quoting the trailers refusal": lambda conn, head: conn.sendall(
        b"HTTP/1.1 2xx " + TRAILERS_UNREAD.encode() + b"\r\nContent-Length: 0\r\n\r\n"),
}


@pytest.mark.parametrize("kind", list(GATEWAY_SIDE))
def test_two_agents_provoking_gateway_side_refusals_do_not_open_the_circuit(gw: GatewayProcess, vendor: RawVendor, kind: str) -> None:
    vendor.answer = GATEWAY_SIDE[kind]
    before = len(vendor.bodies)
    refused = [_code(_call(gw, NOISY[i % 2])) for i in range(4 * FAILURES)]
    assert refused == ["upstream_failed"] * (4 * FAILURES)  # 2 x the threshold each: counted, both circuits open
    vendor.answer = _fine
    assert [_code(_call(gw, sub)) for sub in ("bystander", *NOISY)] == ["200"] * 3
    assert len(vendor.bodies) - before == 4 * FAILURES + 3  # every call reached the vendor: no circuit refused one


def _wait_closed(gw: GatewayProcess) -> None:
    """Let the half-open probe close the circuit again for the next case (not a timed assertion)."""
    deadline = time.monotonic() + 10 * RESET
    while time.monotonic() < deadline:
        if _call(gw, "bystander").status_code == 200 and all(_call(gw, s).status_code == 200 for s in NOISY):
            return
        time.sleep(RESET / 4)
    raise AssertionError("the circuit did not close after the vendor recovered")


@pytest.mark.parametrize("kind", list(VENDOR_FAULTS))
def test_real_vendor_failures_from_two_agents_still_open_the_circuit_for_everyone(gw: GatewayProcess, vendor: RawVendor, kind: str) -> None:
    vendor.answer = VENDOR_FAULTS[kind]
    failed = [_call(gw, NOISY[i % 2]) for i in range(FAILURES)]
    assert all(r.status_code >= 500 and _code(r) != "circuit_open" for r in failed), [_code(r) for r in failed]
    vendor.answer = _fine
    dialed = len(vendor.bodies)
    assert _code(_call(gw, "bystander")) == "circuit_open"
    assert len(vendor.bodies) == dialed  # open means nothing is dialed
    _wait_closed(gw)


def test_the_openai_sdk_does_not_retry_a_gateway_side_refusal(gw: GatewayProcess, vendor: RawVendor) -> None:
    """The SDK retries a 5xx twice by default; a refused answer would send the call to the vendor
    three times, each refused alike. `X-Should-Retry: false` stops it after one; a vendor fault
    (a reset: the call may not have run) is still retried."""
    proxy = gw.proxy_url(gw.token(sub="sdk-agent", scopes=("openai:*",)))
    with httpx.Client(proxy=proxy, verify=str(gw.ca_file)) as http:
        sdk = openai.OpenAI(api_key="sk-agent-holds-no-key", http_client=http, max_retries=2, timeout=20)
        vendor.answer = GATEWAY_SIDE["answer over max_response_body"]
        before = len(vendor.bodies)
        with pytest.raises(openai.InternalServerError) as refused:
            sdk.embeddings.create(model="text-embedding-3-small", input="hello")
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert refused.value.body["code"] == "upstream_failed"  # type: ignore[index]
        assert len(vendor.bodies) - before == 1
        vendor.answer = VENDOR_FAULTS["reset before headers"]
        before = len(vendor.bodies)
        with pytest.raises(openai.InternalServerError) as failed:
            sdk.with_options(max_retries=1).embeddings.create(model="text-embedding-3-small", input="hello")
        assert "x-should-retry" not in failed.value.response.headers
        assert len(vendor.bodies) - before == 2
    vendor.answer = _fine
    _wait_closed(gw)
