"""The API listener's HTTP/1.1 wire: uvicorn's h11 protocol, answering what it cannot parse with
the contract's JSON.

uvicorn answers a request h11 refuses (garbage, a bad header name, a head past the size limit, bad
chunked framing, two Content-Lengths, HTTP/1.1 without Host) with a plain-text 400 that carries no
decision id; when the framing breaks while the app is already reading the body, the app's own
answer then fails inside h11 and leaves a traceback in the log. The contract promises the JSON
refusal for every refusal, so this protocol writes `bad_request` itself (unless that request was
already answered), drops whatever the app would still send for it, and closes the connection (the
stream cannot be trusted past the error). The parsing stays h11's; it is only fed in slices.
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import Refusal
from gateway.pipeline.call import new_decision_id

# h11 refuses a request head (request line and headers) that grows past this while incomplete;
# h11's own default, named here so the bound on one connection's buffered head is explicit.
MAX_REQUEST_HEAD = 16 * 1024
# h11 checks that limit only while a head is incomplete: a 100 KB head that arrived in one read
# was parsed whole. Fed in slices, a head past MAX_REQUEST_HEAD + SLICE is refused however it came.
SLICE = 4 * 1024


def bad_request_bytes(decision_id: str) -> bytes:
    """The whole HTTP/1.1 answer for a request that could not be parsed: JSON, sized, closing."""
    answer = Refusal("bad_request", "the HTTP request is malformed (request line, headers or framing)").to_http(
        decision_id, proxy=False
    )
    headers = {**answer.headers, "Content-Length": str(len(answer.body)), "Connection": "close"}
    head = "HTTP/1.1 400 Bad Request\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("ascii") + answer.body


class ApiProtocol(H11Protocol):
    """h11 as uvicorn runs it, with the contract's JSON for what h11 refuses."""

    def data_received(self, data: bytes) -> None:
        for start in range(0, len(data), SLICE):
            if self.transport.is_closing():  # refused (or gone) part-way: the rest is not read
                return
            super().data_received(data[start : start + SLICE])

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn when h11 raises `RemoteProtocolError`; `msg` is uvicorn's plain text."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app still running for this request reads a disconnect and its answer is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        # Only where no answer to this request has begun: one answered early (a 401 before its
        # broken body was read) gets no second status line, the connection just closes.
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(bad_request_bytes(new_decision_id()))
        self.transport.close()
