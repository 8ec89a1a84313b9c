"""Deadlines mitmproxy does not have: for agents to send a request, for vendors to answer.

`UpstreamDeadline`: a connect timeout from dialing, and a read timeout from forwarding until the
whole response is in (a stream's headers are its answer); past either, the server connection is
cancelled and the `error` hook answers `upstream_timeout`. A vendor trickling a body a byte at a
time gets 504 at the deadline, not a connection held forever.

`ClientDeadline`, the defence against slowloris clients:

mitmproxy has no per-request client timeout; its only one is a 10-minute inactivity watchdog that
any byte resets, so a client trickling a header or a body a byte at a time holds a connection (and
its buffers) forever, and a few thousand such clients exhaust the gateway's file descriptors.

Here a connection must deliver a complete request (CONNECT head, TLS handshake and the inner
request head and body) within `timeouts.client` of opening, of its CONNECT being answered, or of
its previous response; while the gateway works on a request the deadline is off (the upstream
timeouts apply), and it restarts when the response is done, so an idle keep-alive connection is
also closed after the same time. A connection past its deadline is closed: mid-request there is
no way to write a response, and the client is not reading them anyway. A flow it was sending is
audited as refused by the gateway's `error` hook.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from gateway.proxy.flows import CALL, FORWARDED, TIMED_OUT, Tunnels, is_event_stream, response_started
from gateway.proxy.mitm_compat import abort_client_connection, abort_server_connection

log = logging.getLogger(__name__)


class ClientDeadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def client_connected(self, client: connection.Client) -> None:
        self._arm(client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._disarm(client)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._arm(flow.client_conn)  # the TLS handshake and the first request are next

    def request(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow.client_conn)  # the whole request is in

    def response(self, flow: http.HTTPFlow) -> None:
        self._arm(flow.client_conn)  # waiting for the next request

    def error(self, flow: http.HTTPFlow) -> None:
        self._arm(flow.client_conn)

    def _arm(self, client: connection.Client) -> None:
        self._disarm(client)
        loop = asyncio.get_running_loop()
        self._timers[client.id] = loop.call_later(self.seconds, self._expire, client)

    def _disarm(self, client: connection.Client) -> None:
        timer = self._timers.pop(client.id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, client: connection.Client) -> None:
        self._timers.pop(client.id, None)
        if abort_client_connection(client, "egress-gateway: no complete request in time"):
            log.warning("closed a client connection: no complete request within %.1f s (timeouts.client)", self.seconds)


class UpstreamDeadline:
    def __init__(self, connect: float, read: float, tunnels: Tunnels) -> None:
        self.connect, self.read, self.tunnels = connect, read, tunnels
        self._read_timers: dict[str, asyncio.TimerHandle] = {}  # by flow id
        self._connect_timers: dict[str, asyncio.TimerHandle] = {}  # by client connection id

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and FORWARDED in flow.metadata:
            loop = asyncio.get_running_loop()
            self._read_timers[flow.id] = loop.call_later(self.read, self._expire, flow)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        open_tunnel = self.tunnels.get(data.client.id)
        if data.server.error is None and open_tunnel is not None and open_tunnel.in_flight is not None:
            loop = asyncio.get_running_loop()
            self._connect_timers[data.client.id] = loop.call_later(self.connect, self._expire, open_tunnel.in_flight)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        _cancel(self._connect_timers.pop(data.client.id, None))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # A stream may rightly last longer than the read timeout; its headers are its answer.
        if flow.metadata.get(CALL) is None or flow.response is None or is_event_stream(flow):
            self._stop(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._stop(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._stop(flow)

    def _stop(self, flow: http.HTTPFlow) -> None:
        _cancel(self._read_timers.pop(flow.id, None))
        _cancel(self._connect_timers.pop(flow.client_conn.id, None))

    def _expire(self, flow: http.HTTPFlow) -> None:
        if flow.error is None and flow.server_conn and not response_started(flow):
            flow.metadata[TIMED_OUT] = True
            abort_server_connection(flow.client_conn, flow.server_conn, "egress-gateway: upstream timeout")


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()
