"""Admission at the request head: nothing is buffered for a request that is refused anyway.

mitmproxy reads a request's whole body before the `request` hook, where the pipeline decides, and
holds up to its `body_size_limit` (the larger of `max_body` and `max_response_body`) per request.
So a 60 MiB body was read into memory before anyone asked whether the sender had a token.

Here the head alone refuses what it already decides, before a byte of the body is read:
- a request outside a CONNECT tunnel: the pipeline refuses every one, whatever its body;
- an identity expired or revoked since its tunnel opened (`Verifier.check`);
- a declared `Content-Length` over `max_body`.
An admitted request's body is counted as it arrives; past `max_body` (a chunked body declares no
length) it is refused the same way, so at most `max_body` bytes of it are ever held. Chunked
trailers are refused as `bad_request`: mitmproxy 11 cannot parse them (it raised
`NotImplementedError` and the request hung until the client deadline), and the pipeline never
sees them, so forwarding them would be an unchecked way out. So is a body whose chunked framing
is broken: mitmproxy closed the connection before its error page, so the agent got no answer.

How: mitmproxy's HTTP/1 server reads a body through an h11 reader (`Http1Server.body_reader`).
Its `read_body` runs right after the head is parsed, before any hook, and again as body bytes
arrive; while the gateway runs it first wraps the request's reader in a `_GatedReader`, which ends
the message early (an empty h11 `EndOfMessage`) once the request is refused. mitmproxy then runs
the `request` hook, where `Admission` answers with the refusal (audited once, through `refused` or,
outside a tunnel, `decide`), before `Decide` runs. A refusal that left body bytes unread carries
`Connection: close`: the rest is never read, nor parsed as a next request. This reaches into
mitmproxy's internals like `mitm_compat` does; the tests through the real proxy fail if an upgrade
moves them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import h11
from h11._receivebuffer import ReceiveBuffer
from mitmproxy import connection, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers.http import _http1

from gateway.errors import Refusal
from gateway.pipeline import decide, request_call
from gateway.pipeline.decision import refused
from gateway.proxy.flows import CALL, Tunnels, flow_call, peer, request_view, respond
from gateway.runtime import Runtime

TRAILERS_REFUSED = "chunked request trailers are not accepted; send those fields as headers"
FRAMING_REFUSED = "the request body's framing is broken (a chunked body's sizes or line ends)"


@dataclass
class _Stop:
    """A request whose body reading was ended: the refusal to answer it with (None outside a
    tunnel, where the pipeline names it) and whether unread body bytes may remain."""

    request: http.Request
    refusal: Refusal | None
    close: bool


class _GatedReader:
    """h11's body reader for one request, ending the message early once the request is refused."""

    def __init__(self, inner: _http1.TBodyReader, limit: int, stop: Callable[[Refusal | None, bool], None]) -> None:
        self.inner, self.limit, self._stop = inner, limit, stop
        self.seen = 0
        self.ended = self.close = False

    def stop(self, refusal: Refusal | None, close: bool) -> h11.EndOfMessage:
        self._stop(refusal, close)
        self.ended, self.close = True, close
        return h11.EndOfMessage()

    def __call__(self, buf: ReceiveBuffer) -> h11.Data | h11.EndOfMessage | None:
        if self.ended:
            return h11.EndOfMessage()
        try:
            event = self.inner(buf)
        except h11.ProtocolError:
            # mitmproxy closes the connection before it writes its error page: no answer at all.
            return self.stop(Refusal("bad_request", FRAMING_REFUSED), True)
        if isinstance(event, h11.Data):
            self.seen += len(event.data)
            if self.seen > self.limit:
                return self.stop(_too_large(self.limit), True)
        elif isinstance(event, h11.EndOfMessage) and event.headers:
            return self.stop(Refusal("bad_request", TRAILERS_REFUSED), False)
        return event

    def read_eof(self) -> h11.EndOfMessage:
        return self.inner.read_eof()


class Admission:
    def __init__(self, rt: Runtime, tunnels: Tunnels) -> None:
        self.rt, self.tunnels = rt, tunnels
        self._stops: dict[str, _Stop] = {}  # by client connection id (HTTP/1: one request at a time)
        self._read_body = _http1.Http1Server.read_body

    def running(self) -> None:
        original, admit = self._read_body, self._admit

        def read_body(conn: _http1.Http1Connection, event: events.Event) -> layer.CommandGenerator[None]:
            if not isinstance(conn.body_reader, _GatedReader) and conn.request and conn.request.method != "CONNECT":
                conn.body_reader = admit(conn)  # type: ignore[assignment]
            yield from original(conn, event)
            reader = conn.body_reader
            if isinstance(reader, _GatedReader) and reader.close and conn.state == conn.wait:
                conn.state = functools.partial(_discard, conn)

        _http1.Http1Server.read_body = read_body  # type: ignore[method-assign,assignment]

    def done(self) -> None:
        _http1.Http1Server.read_body = self._read_body  # type: ignore[method-assign]

    def _admit(self, conn: _http1.Http1Connection) -> _GatedReader:
        """A request's head is in and no hook has run yet: gate its body, or end it unread."""
        req, client_id = conn.request, conn.conn.id
        assert req is not None

        def stop(refusal: Refusal | None, close: bool) -> None:
            self._stops[client_id] = _Stop(req, refusal, close)

        reader = _GatedReader(conn.body_reader, self.rt.config.max_body, stop)
        open_tunnel = self.tunnels.get(client_id)
        try:
            if client_id in self.tunnels.refused:
                raise self.tunnels.refused[client_id][1]
            if open_tunnel is None:
                reader.stop(None, True)
            else:
                self.rt.verifier.check(open_tunnel.tunnel.identity)
                self.rt.check_quarantine(open_tunnel.tunnel.identity)
                declared = http1.expected_http_body_size(req)
                if declared is not None and declared > self.rt.config.max_body:
                    raise _too_large(self.rt.config.max_body)
        except Refusal as refusal:
            reader.stop(refusal, True)
        if reader.ended:
            # mitmproxy would answer `Expect: 100-continue` after the headers hook, inviting the body.
            req.headers.pop("expect", None)
        return reader

    async def request(self, flow: http.HTTPFlow) -> None:
        """Answer a request whose body was ended early; `Decide` then sees the response and passes."""
        stop = self._stops.pop(flow.client_conn.id, None)
        if stop is None or stop.request is not flow.request or flow.response is not None:
            return
        refused_at_connect = self.tunnels.refused.get(flow.client_conn.id)
        if refused_at_connect is not None:
            # The CONNECT's own decision, audited then: the agent reads it here, nothing more is written.
            call = flow.metadata[CALL] = flow_call(flow, self.tunnels)
            call.decision_id, refusal = refused_at_connect
        elif stop.refusal is None:
            view = request_view(flow, None)
            call = flow.metadata[CALL] = request_call(self.rt, view)
            # Outside a tunnel every request is refused; the pipeline says which refusal it is.
            refusal = (await decide(self.rt, view, call)).refusal or refused(
                self.rt, call, Refusal("internal_error", "a request outside a tunnel was not refused")
            )
        else:
            call = flow.metadata[CALL] = flow_call(flow, self.tunnels)
            refusal = refused(self.rt, call, stop.refusal, peer(flow))
        respond(flow, call.decision_id, refusal)
        if stop.close:
            assert flow.response is not None
            flow.response.headers["connection"] = "close"

    def client_disconnected(self, client: connection.Client) -> None:
        self._stops.pop(client.id, None)


def _discard(conn: _http1.Http1Connection, event: events.Event) -> layer.CommandGenerator[None]:
    """The state of a connection whose request was cut short, until its refusal is sent and the
    connection closed: what the agent still sends is dropped, never buffered (mitmproxy's own
    `wait` state buffers it, and `mitm_compat` closes such a connection before it is answered)."""
    if isinstance(event, events.DataReceived):
        conn.buf.maybe_extract_at_most(len(conn.buf))
        return
    yield from conn.wait(event)


def _too_large(limit: int) -> Refusal:
    return Refusal("body_too_large", f"the request body exceeds max_body ({limit} bytes)")
