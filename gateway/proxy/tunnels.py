"""Authentication at CONNECT: a tunnel opens only for a valid agent, a claimed host and a checked
address (`gateway.pipeline.decide_connect`); a refused CONNECT gets its JSON error and no tunnel,
before any TLS, and no upstream connection is ever made for it."""

from __future__ import annotations

from mitmproxy import connection, http

from gateway.pipeline import ConnectView, decide_connect
from gateway.proxy.flows import OpenTunnel, Tunnels, peer, respond
from gateway.proxy.mitm_compat import ErrorPages
from gateway.runtime import Runtime


class Authenticate:
    def __init__(self, rt: Runtime, tunnels: Tunnels, pages: ErrorPages) -> None:
        self.rt, self.tunnels, self.pages = rt, tunnels, pages

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        view = ConnectView(req.host, req.port, req.headers.get("proxy-authorization"), peer(flow))
        verdict = await decide_connect(self.rt, view)
        if verdict.refusal is not None:
            respond(flow, verdict.call.decision_id, verdict.refusal)
        elif verdict.tunnel is not None:
            self.tunnels[flow.client_conn.id] = OpenTunnel(verdict.tunnel)

    def client_disconnected(self, client: connection.Client) -> None:
        self.tunnels.pop(client.id, None)
        self.pages.forget(client.id)
