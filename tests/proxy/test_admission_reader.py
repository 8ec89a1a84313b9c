"""The gated body reader against generated bodies, chunkings and arrival patterns: no more than
max_body bytes ever pass, a body within it passes whole, and trailers always stop the request."""

from __future__ import annotations

import h11
from h11._receivebuffer import ReceiveBuffer
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy.proxy.layers.http import _http1

from gateway.errors import Refusal
from gateway.proxy.admission import _GatedReader


def _wire(body: bytes, chunks: list[int], chunked: bool, trailers: bool) -> bytes:
    if not chunked:
        return body
    out, at = b"", 0
    for size in chunks:
        piece = body[at : at + size]
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
        at += size
    if at < len(body):
        out += b"%x\r\n%s\r\n" % (len(body) - at, body[at:])
    return out + b"0\r\n" + (b"X-Sum: 1\r\n" if trailers else b"") + b"\r\n"


@given(
    body=st.binary(max_size=4000),
    limit=st.integers(0, 5000),
    chunks=st.lists(st.integers(1, 900), min_size=1, max_size=8),
    arrivals=st.lists(st.integers(1, 1500), min_size=1, max_size=8),
    chunked=st.booleans(),
    trailers=st.booleans(),
)
def test_no_more_than_max_body_passes(
    body: bytes, limit: int, chunks: list[int], arrivals: list[int], chunked: bool, trailers: bool
) -> None:
    stops: list[tuple[Refusal | None, bool]] = []
    inner = _http1.make_body_reader(None if chunked else len(body))
    reader = _GatedReader(inner, limit, lambda refusal, close: stops.append((refusal, close)))
    wire, buf, passed, ended = _wire(body, chunks, chunked, trailers), ReceiveBuffer(), b"", False
    at, i = 0, 0
    while True:  # as mitmproxy does: once with the head's bytes, then on each arrival
        size = arrivals[i % len(arrivals)]
        buf += wire[at : at + size]
        at, i = at + size, i + 1
        while (event := reader(buf)) is not None:
            if isinstance(event, h11.EndOfMessage):
                ended = True
                break
            passed += event.data
        if ended or at >= len(wire):
            break
    assert ended and len(passed) <= limit
    codes = [(r.code if r else None, close) for r, close in stops]
    if len(body) > limit:
        assert codes == [("body_too_large", True)]
    elif chunked and trailers:
        assert codes == [("bad_request", False)] and passed == body
    else:
        assert codes == [] and passed == body
