"""The places where the gateway reaches into mitmproxy's internals, kept together on purpose.

1. Error pages. When mitmproxy itself fails a request (upstream refused, TLS did not verify, body
   over the limit, a framing error), its HTTP/1 layer writes an HTML page from
   `proxy.layers.http._http1.make_error_response`, and no addon hook can replace that response.
   Every refusal must be the contract's JSON, so that function is replaced by one that marks its
   page, and the HTTP/1 server's event handler swaps each marked page for the refusal that the
   `error` hook claimed for that client connection (`ErrorPages`). Decision ids are tied to the
   connection, never to the message text: two flows failing alike at once keep their own ids.
2. Upstream timeouts. mitmproxy has no connect or read timeout for upstream servers; the addon
   cancels the server connection's task (as mitmproxy's own idle watchdog does), which surfaces
   as an ordinary flow error that the `error` hook then reports as `upstream_timeout`. The client
   side has the same gap (`ClientDeadline` closes a client that never finishes a request), so
   `abort_client_connection` does the same for the agent's connection.
3. Request head size. mitmproxy buffers a request head without limit (its own "FIXME: protect
   against header size DoS" in `_http1.Http1Server.read_headers`), so a client sending an endless
   header grows memory until it stops. A head with no end within `MAX_HEAD` bytes is refused (400
   `bad_request`) and the connection closed; so is a connection that piles up more than that while
   its request is in flight.
4. The messages of mitmproxy's flow errors that must still be read (`CLIENT_GONE`,
   `BODY_OVER_LIMIT`, `TRAILERS_ERROR`): mitmproxy reports them as text only. tests/proxy/test_mitm_messages.py pins
   each against mitmproxy's source, so an upgrade that rewords one fails loudly.
5. Lazy tasks. On Python 3.12+ `Master.run` makes every task of the loop eager
   (`asyncio.eager_task_factory`): a hook's task then runs inside the event that started it and,
   when it finishes at once, queues on the handler's `_server_event_lock` behind it. The
   connection's reader can then be waiting for that lock, outside the `try` of
   `ConnectionHandler.handle_connection`, when a `CloseConnection` from the hook cancels it: the
   task ends without closing the socket or telling the layers, and an agent still sending a body
   (refused at its head, `Connection: close`) stalls writing into a connection nobody reads or
   closes. With lazy tasks, as on 3.11, no task holds that lock across an await, so none waits for
   it. So the loop gets back its default task factory (the gateway sets none of its own): one
   behaviour on every Python the gateway runs on.

6. The agent's ClientHello. mitmproxy reads it before any hook of the gateway runs (for a refused
   CONNECT too, whose tunnel still ends TLS at the gateway), and buffered as much of it as its
   length field claims (16 MiB), parsing the whole buffer again on every read: seconds of the
   event loop for one client without a token. A ClientHello over `MAX_CLIENT_HELLO` fails the
   handshake; what the agent still sends before the close lands is dropped (mitmproxy handed it to
   the TLS layer that never began: `mitmproxy has crashed!` and a traceback). And its failure log line held what the agent sent: the SNI it named, or the whole
   ClientHello as hex when it could not be parsed. Those lines lose the agent's text
   (`_WithholdAgentText`).

7. A vendor's chunked trailers. mitmproxy 11's HTTP/1 reader raises `NotImplementedError` on
   them ("HTTP trailers are not implemented yet"): a traceback in the log, and the agent's call
   ended by whatever failed next. The vendor's body reader (`Http1Client.body_reader`) is wrapped
   so that trailers are the protocol error they are to mitmproxy, which it reports as a flow error
   (answered 502 `upstream_failed`, or the stream cut if it had begun). An agent's trailers are
   refused at admission (`gateway.proxy.admission`).

8. HTTP/2 with prior knowledge. A client that speaks HTTP/2 without negotiating it (httpx with
   `http1=False`, gRPC stacks) opens with the connection preface, which mitmproxy's HTTP/1 server
   reads as a request `PRI * HTTP/2.0`. Its own `DisableH2C` addon killed that flow, after which the
   gateway audited it twice (the pipeline's refusal, then the kill) and the client saw the
   connection drop, no reason given. The gateway leaves that addon out: the pipeline refuses the
   preface like any request (`framing`), and the refusal is written in the client's protocol, a
   SETTINGS frame and a GOAWAY with HTTP_1_1_REQUIRED whose debug data is the JSON refusal
   (`_as_http2`); then the connection closes.

9. A vendor's 101. mitmproxy's HTTP/1 client makes the vendor's connection a pipe after a 101
   (`Http1Connection.make_pipe`) whatever the addons did with the answer: the gateway refuses
   every 1xx (`gateway.pipeline.answer`), and whatever the vendor sent after its 101 was handed
   to a call already answered, an assertion in mitmproxy's stream (`mitmproxy has crashed!` and a
   traceback in the log), on Python 3.11 and 3.12 alike. The gateway carries no protocol switch,
   so the vendor's connection is closed there instead (`_no_vendor_pipe`); a CONNECT's pipe is
   left as it is.

The `MitmCompat` addon installs 1, 3, 5, 6, 7, 8 and 9 when mitmproxy is running and removes 1, 3,
6, 7, 8 and 9 when it is done (`Master.run` itself puts the task factory back when it returns).
Everything here is exercised through the real proxy by the tests, so a mitmproxy upgrade that
moves them fails loudly in CI instead of silently serving HTML or hanging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import h11
from hyperframe.frame import GoAwayFrame, SettingsFrame
from mitmproxy import connection, ctx
from mitmproxy import http as mhttp
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import tls
from mitmproxy.proxy.layers.http import ResponseData, ResponseEndOfMessage, _http1

from gateway.errors import Refusal

if TYPE_CHECKING:
    from h11._receivebuffer import ReceiveBuffer

# status, message -> (decision_id, refusal) for errors that no flow hook saw (malformed requests).
Unclaimed = Callable[[int, str], tuple[str, Refusal]]

MAX_HEAD = 64 * 1024  # request line and headers; Node allows 16 KiB, nginx 32 KiB by default
HEAD_TOO_LARGE = f"request head larger than {MAX_HEAD} bytes"
CLIENT_GONE = "Client disconnected"  # the flow error when the agent hangs up mid-call
BODY_OVER_LIMIT = "body exceeds mitmproxy's body_size_limit"  # after "Request " or "Response "
# Point 6. Real ClientHellos are a few KiB (post-quantum key shares included); a TLS record holds 16 KiB.
MAX_CLIENT_HELLO = 64 * 1024
CLIENT_HELLO_TOO_LARGE = f"ClientHello larger than {MAX_CLIENT_HELLO} bytes"
CLIENT_TLS_FAILED = "Client TLS handshake failed."  # mitmproxy's log line, naming the SNI or dumping the hello
MITM_SERVER_LOGGER = "mitmproxy.proxy.server"  # the logger of mitmproxy's connection handlers
TRAILERS_UNREAD = "the vendor sent chunked trailers, which the gateway does not read"
# The whole flow error `_NoTrailers` causes (mitmproxy's body reader prefixes it). Matched whole:
# other protocol errors quote the vendor's bytes, which may spell TRAILERS_UNREAD too.
TRAILERS_ERROR = f"HTTP/1 protocol error: {TRAILERS_UNREAD}"
HTTP_1_1_REQUIRED = 0xD  # RFC 9113 section 7: "use HTTP/1.1 for the request"
MAX_DEBUG_DATA = 16384 - 8  # a GOAWAY within the default maximum frame size, after its two fields


class _Page(bytes):
    """mitmproxy's error page, marked with what it was for, until it is swapped for our JSON."""

    status: int
    message: str


def _marked_page(status_code: int, message: str = "") -> bytes:
    page = _Page(b"")
    page.status, page.message = status_code, message
    return page


class ErrorPages:
    """The refusals claimed for the error pages mitmproxy is about to write, by client connection."""

    def __init__(self, unclaimed: Unclaimed):
        self._claimed: dict[str, tuple[str, Refusal]] = {}
        self._unclaimed = unclaimed

    def claim(self, client_id: str, decision_id: str, refusal: Refusal) -> None:
        """Called from the `error` hook: the page about to be written on this connection."""
        self._claimed[client_id] = (decision_id, refusal)

    def forget(self, client_id: str) -> None:
        self._claimed.pop(client_id, None)

    def render(self, client_id: str, page: _Page) -> bytes:
        claimed = self._claimed.pop(client_id, None)
        decision_id, refusal = claimed or self._unclaimed(page.status, page.message)
        answer = refusal.to_http(decision_id)
        resp = mhttp.Response.make(answer.status, answer.body, {**answer.headers, "Connection": "close"})
        return http1.assemble_response(resp)


def _over_head_limit(conn: _http1.Http1Server, event: events.Event) -> layer.CommandGenerator[None]:
    """Point 3: close a connection buffering more than MAX_HEAD outside a request body."""
    if not isinstance(event, events.DataReceived) or len(conn.buf) <= MAX_HEAD:
        return
    if conn.state == conn.read_headers:
        yield commands.SendData(conn.conn, _marked_page(400, HEAD_TOO_LARGE))
    elif conn.state != conn.wait:
        return
    yield commands.CloseConnection(conn.conn)
    conn.state = conn.done


class _WithholdAgentText(logging.Filter):
    """Point 6: mitmproxy's client handshake failure, without what the agent sent (its SNI, or its
    ClientHello as hex); what kind of failure it was is kept, from mitmproxy's own words."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.msg
        if isinstance(text, str) and text.startswith(CLIENT_TLS_FAILED):
            if "does not trust the proxy's certificate" in text:
                why = "The agent does not trust the gateway CA (see `egress-gateway env`)"
            elif "Cannot parse ClientHello" in text:
                why = "The agent's ClientHello could not be parsed"
            elif CLIENT_HELLO_TOO_LARGE in text:
                why = f"The agent's ClientHello is larger than {MAX_CLIENT_HELLO} bytes"
            else:
                why = "The agent may not trust the gateway CA"
            record.msg, record.args = f"{CLIENT_TLS_FAILED} {why}; what it sent is not logged", ()
        return True


class _NoTrailers:
    """Point 7: a vendor's body reader for which trailers are a protocol error."""

    def __init__(self, inner: Callable[[ReceiveBuffer], h11.Data | h11.EndOfMessage | None]) -> None:
        self.inner = inner

    def __call__(self, buf: ReceiveBuffer) -> h11.Data | h11.EndOfMessage | None:
        event = self.inner(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            raise h11.RemoteProtocolError(TRAILERS_UNREAD)
        return event

    def read_eof(self) -> h11.EndOfMessage:
        return self.inner.read_eof()  # type: ignore[attr-defined]


def _no_vendor_pipe(
    conn: _http1.Http1Client, make_pipe: Callable[[_http1.Http1Client], layer.CommandGenerator[None]]
) -> layer.CommandGenerator[None]:
    """Point 9: after a vendor's 101 the connection is closed, never made a pipe; nothing more of it
    is read (the call has its refusal already)."""
    if conn.response is not None and conn.response.status_code == 101:
        conn.state = conn.done
        yield commands.CloseConnection(conn.conn)
        return
    yield from make_pipe(conn)


class MitmCompat:
    """The addon that installs points 1, 3, 5, 6, 7, 8 and 9 while mitmproxy runs."""

    def __init__(self, pages: ErrorPages) -> None:
        self.pages = pages
        self._read_vendor_body = _http1.Http1Client.read_body
        self._make_vendor_pipe = _http1.Http1Client.make_pipe
        self._make_error_response = _http1.make_error_response
        self._handle_event = _http1.Http1Server._handle_event
        self._receive_hello = tls.ClientTLSLayer.receive_handshake_data
        self._receive_tls = tls.ClientTLSLayer.receive_data
        self._withhold = _WithholdAgentText()

    def running(self) -> None:
        asyncio.get_running_loop().set_task_factory(None)  # point 5
        original, pages, receive_hello = self._handle_event, self.pages, self._receive_hello

        def _handle_event(conn: _http1.Http1Server, event: events.Event) -> layer.CommandGenerator[None]:
            handled = _swap_pages(_chain(original(conn, event), _over_head_limit(conn, event)), pages, conn.conn.id)
            yield from _as_http2(handled, conn, event)

        def receive_handshake_data(tls_layer: tls.ClientTLSLayer, data: bytes) -> layer.CommandGenerator[tuple[bool, str | None]]:
            if not tls_layer.client_hello_parsed and len(tls_layer.recv_buffer) + len(data) > MAX_CLIENT_HELLO:
                return False, CLIENT_HELLO_TOO_LARGE  # point 6
            return (yield from receive_hello(tls_layer, data))

        def receive_data(tls_layer: tls.ClientTLSLayer, data: bytes) -> layer.CommandGenerator[None]:
            if tls_layer.tls is not None:  # None: the handshake failed before TLS began (point 6)
                yield from receive_tls(tls_layer, data)

        def read_vendor_body(conn: _http1.Http1Client, event: events.Event) -> layer.CommandGenerator[None]:
            if not isinstance(conn.body_reader, _NoTrailers):
                conn.body_reader = _NoTrailers(conn.body_reader)  # type: ignore[assignment]
            return read_body(conn, event)

        def make_vendor_pipe(conn: _http1.Http1Client) -> layer.CommandGenerator[None]:
            yield from _no_vendor_pipe(conn, make_pipe)

        read_body, make_pipe, receive_tls = self._read_vendor_body, self._make_vendor_pipe, self._receive_tls
        _http1.Http1Client.read_body = read_vendor_body  # type: ignore[method-assign, assignment]
        _http1.Http1Client.make_pipe = make_vendor_pipe  # type: ignore[method-assign, assignment]
        _http1.make_error_response = _marked_page
        _http1.Http1Server._handle_event = _handle_event  # type: ignore[method-assign, assignment]
        tls.ClientTLSLayer.receive_handshake_data = receive_handshake_data  # type: ignore[method-assign, assignment]
        tls.ClientTLSLayer.receive_data = receive_data  # type: ignore[method-assign, assignment]
        logging.getLogger(MITM_SERVER_LOGGER).addFilter(self._withhold)

    def done(self) -> None:
        _http1.Http1Client.read_body = self._read_vendor_body  # type: ignore[method-assign]
        _http1.Http1Client.make_pipe = self._make_vendor_pipe  # type: ignore[method-assign]
        _http1.make_error_response = self._make_error_response
        _http1.Http1Server._handle_event = self._handle_event  # type: ignore[method-assign]
        tls.ClientTLSLayer.receive_handshake_data = self._receive_hello  # type: ignore[method-assign]
        tls.ClientTLSLayer.receive_data = self._receive_tls  # type: ignore[method-assign]
        logging.getLogger(MITM_SERVER_LOGGER).removeFilter(self._withhold)


def _edited(
    gen: layer.CommandGenerator[None], edit: Callable[[commands.Command], commands.Command | None]
) -> layer.CommandGenerator[None]:
    """Delegate to `gen` (replies passed back in), each command through `edit`: what it returns is
    sent on, None drops the command (and `gen` gets None for its reply)."""
    reply = None
    while True:
        try:
            command = gen.send(reply)
        except StopIteration:
            return
        edited = edit(command)
        reply = None if edited is None else (yield edited)


def _swap_pages(gen: layer.CommandGenerator[None], pages: ErrorPages, client_id: str) -> layer.CommandGenerator[None]:
    """Delegate to `gen`, swapping each marked error page for JSON."""

    def edit(command: commands.Command) -> commands.Command:
        if isinstance(command, commands.SendData) and isinstance(command.data, _Page):
            command.data = pages.render(client_id, command.data)
        return command

    return _edited(gen, edit)


def _is_http2_preface(request: mhttp.Request | None) -> bool:
    """Whether mitmproxy's HTTP/1 server read an HTTP/2 connection preface as this request."""
    return request is not None and (request.method, request.path, request.http_version) == ("PRI", "*", "HTTP/2.0")


def _as_http2(gen: layer.CommandGenerator[None], conn: _http1.Http1Server, event: events.Event) -> layer.CommandGenerator[None]:
    """Point 8: the answer to an HTTP/2 preface, written as HTTP/2 frames the client can read: the
    answer's head (or mitmproxy's error page) becomes a SETTINGS frame and a GOAWAY
    (HTTP_1_1_REQUIRED) carrying the refusal's JSON body; the rest of the HTTP/1 answer, its body
    and end, is dropped (it carries `Connection: close`)."""

    def edit(command: commands.Command) -> commands.Command | None:
        if not (isinstance(command, commands.SendData) and command.connection is conn.conn and _is_http2_preface(conn.request)):
            return command
        if isinstance(event, ResponseData | ResponseEndOfMessage):
            return None
        if conn.response is not None:
            # mitmproxy keeps an HTTP/2.0 request's connection open: the rest of the preface and
            # the client's frames would be read as a next request, and refused as malformed.
            conn.response.headers["connection"] = "close"
            body = conn.response.raw_content
        else:
            body = command.data.partition(b"\r\n\r\n")[2]
        goaway = GoAwayFrame(0, last_stream_id=0, error_code=HTTP_1_1_REQUIRED, additional_data=(body or b"")[:MAX_DEBUG_DATA])
        command.data = SettingsFrame(0).serialize() + goaway.serialize()
        return command

    return _edited(gen, edit)


def _chain(*gens: layer.CommandGenerator[None]) -> layer.CommandGenerator[None]:
    """Run command generators one after another, passing each command's reply back in."""
    for gen in gens:
        yield from gen


def abort_server_connection(client: connection.Client, server: connection.Server, reason: str) -> bool:
    """Cancel the task that connects to, or reads from, `server`; False if there is none (any more)."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver else None
    io = handler.transports.get(server) if handler else None
    if io is None or io.handler is None or io.handler.done():
        return False
    io.handler.cancel(reason)
    return True


def abort_client_connection(client: connection.Client, reason: str) -> bool:
    """Cancel the task that reads from the agent's connection (mitmproxy then closes it and fails
    its flows, as its own inactivity watchdog does); False if it is gone already."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver else None
    io = handler.transports.get(handler.client) if handler else None
    if io is None or io.handler is None or io.handler.done():
        return False
    io.handler.cancel(reason)
    return True


def stream_function(modify: Callable[[bytes], bytes]) -> Callable[[bytes], list[bytes]]:
    """A response stream function as mitmproxy must be given it: nothing to send is an empty list,
    never `b""`. mitmproxy (11) writes each chunk the function returns as one chunk of a chunked
    response, and an empty one is `0\\r\\n\\r\\n`, the end of the body: a stream whose edit held a
    chunk back (a token's beginning, an unfinished SSE event) ended there for the agent while the
    vendor's stream went on. Only chunked answers show it, which is what real vendors send."""

    def chunks(data: bytes) -> list[bytes]:
        out = modify(data)
        return [out] if out else []

    return chunks
