"""A deadline for agents to send each whole request: the defence against slowloris clients.

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

from gateway.proxy.mitm_compat import abort_client_connection

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
