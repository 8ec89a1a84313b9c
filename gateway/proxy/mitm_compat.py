"""The places where the gateway reaches into mitmproxy's internals, kept together on purpose.

1. Error pages. When mitmproxy itself fails a request (upstream refused, TLS did not verify, body
   over the limit, a framing error), its HTTP/1 layer writes an HTML page from
   `proxy.layers.http._http1.make_error_response`, and no addon hook can replace that response.
   Every refusal must be the contract's JSON, so that one function is replaced. The addon's
   `error` hook runs just before mitmproxy writes the page and leaves the refusal it decided on
   under the error message; the replacement picks it up there (`ErrorPages`).
2. Upstream timeouts. mitmproxy has no connect or read timeout for upstream servers; the addon
   cancels the server connection's task (as mitmproxy's own idle watchdog does), which surfaces
   as an ordinary flow error that the `error` hook then reports as `upstream_timeout`. The client
   side has the same gap (`ClientDeadline` closes a client that never finishes a request), so
   `abort_client_connection` does the same for the agent's connection.
3. Request head size. mitmproxy buffers a request head without limit (its own "FIXME: protect
   against header size DoS" in `_http1.Http1Server.read_headers`), so a client sending an endless
   header grows memory until it stops. `HeadLimit` refuses a head with no end within `MAX_HEAD`
   bytes (400 `bad_request`) and closes the connection; it also closes a connection that piles up
   more than that while its request is in flight.

Both are exercised through the real proxy by the tests, so a mitmproxy upgrade that moves them
fails loudly in CI instead of silently serving HTML or hanging.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from mitmproxy import connection, ctx
from mitmproxy import http as mhttp
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import _http1

from gateway.errors import Refusal

# status, message -> (decision_id, refusal) for errors that no flow hook saw (malformed requests).
Unclaimed = Callable[[int, str], tuple[str, Refusal]]

MAX_HEAD = 64 * 1024  # request line and headers; Node allows 16 KiB, nginx 32 KiB by default
HEAD_TOO_LARGE = f"request head larger than {MAX_HEAD} bytes"


class ErrorPages:
    """Turns mitmproxy's HTML error pages into the contract's JSON."""

    def __init__(self, unclaimed: Unclaimed):
        self._pending: dict[str, deque[tuple[str, Refusal]]] = {}
        self._unclaimed = unclaimed
        self._original = _http1.make_error_response

    def claim(self, message: str, decision_id: str, refusal: Refusal) -> None:
        """Called from the `error` hook: the page about to be written for `message` is this refusal."""
        self._pending.setdefault(message, deque()).append((decision_id, refusal))

    def install(self) -> None:
        _http1.make_error_response = self._render

    def uninstall(self) -> None:
        _http1.make_error_response = self._original

    def _render(self, status_code: int, message: str = "") -> bytes:
        queue = self._pending.get(message)
        if queue:
            decision_id, refusal = queue.popleft()
            if not queue:
                del self._pending[message]
        else:
            decision_id, refusal = self._unclaimed(status_code, message)
        resp = mhttp.Response.make(
            refusal.status,
            refusal.body(decision_id),
            {
                "Content-Type": "application/json",
                "Connection": "close",
                "X-Egress-Decision-Id": decision_id,
                **refusal.headers,
            },
        )
        return http1.assemble_response(resp)


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


class HeadLimit:
    """Bounds what mitmproxy buffers from a client outside a request body (see point 3 above)."""

    def __init__(self) -> None:
        self._original = _http1.Http1Server._handle_event

    def install(self) -> None:
        original = self._original

        def _handle_event(conn: _http1.Http1Server, event: events.Event) -> layer.CommandGenerator[None]:
            yield from original(conn, event)
            if not isinstance(event, events.DataReceived) or len(conn.buf) <= MAX_HEAD:
                return
            if conn.state == conn.read_headers:
                yield commands.SendData(conn.conn, _http1.make_error_response(400, HEAD_TOO_LARGE))
            elif conn.state != conn.wait:
                return
            yield commands.CloseConnection(conn.conn)
            conn.state = conn.done

        _http1.Http1Server._handle_event = _handle_event  # type: ignore[method-assign]

    def uninstall(self) -> None:
        _http1.Http1Server._handle_event = self._original  # type: ignore[method-assign]
