"""A worker of `run --workers N`: mitmproxy accepting on the supervisor's socket, and draining.

1. The listening socket. The supervisor (`gateway.supervisor`) binds the proxy port once and every
   worker accepts on that one socket (inherited file descriptor). mitmproxy 11 binds its own
   listeners (`AsyncioServerInstance.listen` calls `asyncio.start_server(handler, host, port)`) and
   has no option to take a socket, so while a worker runs, regular mode's `listen` is replaced by
   one that serves the inherited socket. Like `mitm_compat`, this reaches into mitmproxy's
   internals; the fleet tests through real processes fail if an upgrade moves it.
2. Draining (SIGTERM). The worker closes its listener (the supervisor closes its own copy, so the
   port refuses new connections once every worker has), lets every call in flight finish (a
   streamed answer included) up to `drain_timeout`, then stops mitmproxy, which closes the tunnels
   left idle. A call is in flight from its request head until its response hook or error (or its
   client's disconnect). The response hook runs before a buffered answer's bytes are written, so
   the worker stops only after no call was in flight for `SETTLE` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

from mitmproxy import connection, http
from mitmproxy.proxy.mode_servers import RegularInstance

SETTLE = 0.25  # seconds with no call in flight before the tunnels are closed


@contextlib.contextmanager
def accepting_on(sockets: dict[int, socket.socket], started: list[asyncio.Server]) -> Iterator[None]:
    """mitmproxy's regular-mode server for each configured port in `sockets` accepts on that
    inherited socket instead of binding, adding the servers it starts to `started` (so the drain
    can stop accepting); a listener on any other port binds as mitmproxy does. mitmproxy's own
    `listen` is restored afterwards."""
    original = RegularInstance.listen

    async def listen(self: RegularInstance, host: str, port: int) -> list[asyncio.Server]:
        sock = sockets.get(port)
        if sock is None:
            return await original(self, host, port)  # type: ignore[return-value]
        server = await asyncio.start_server(self.handle_stream, sock=sock)
        started.append(server)
        return [server]

    RegularInstance.listen = listen  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        RegularInstance.listen = original  # type: ignore[method-assign]


class InFlight:
    """The calls between their request head and their end, per client connection."""

    def __init__(self) -> None:
        self._calls: dict[str, set[str]] = {}

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._calls.setdefault(flow.client_conn.id, set()).add(flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        self._done(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._done(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        self._calls.pop(client.id, None)

    def _done(self, flow: http.HTTPFlow) -> None:
        calls = self._calls.get(flow.client_conn.id)
        if calls is not None:
            calls.discard(flow.id)
            if not calls:
                del self._calls[flow.client_conn.id]

    def count(self) -> int:
        return sum(map(len, self._calls.values()))

    async def settled(self, deadline: float) -> int:
        """Wait until no call was in flight for `SETTLE` seconds, or the monotonic `deadline`;
        returns the calls still in flight (0: all finished)."""
        quiet_since: float | None = None
        while (now := time.monotonic()) < deadline:
            if self.count():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= SETTLE:
                return 0
            await asyncio.sleep(0.05)
        return self.count()
