"""Authentication at CONNECT: a tunnel to a vendor opens only for a valid agent, a claimed host and
a checked address (`gateway.pipeline.decide_connect`).

A refused CONNECT must still be readable: SDKs and LLM agents act on error text, and a 407 or 403
to a CONNECT reaches them as "Connection error" or "Tunnel connection failed". So a refused
CONNECT is answered 200 with `X-Egress-Error: CODE` and `X-Egress-Decision-Id` (for clients that
stop there), TLS is terminated with the gateway's CA as for any tunnel, and every request inside
gets the JSON refusal, with the CONNECT's decision id and status (`gateway.proxy.admission` answers
it at the request head, reading no body). Nothing is ever dialed for it: no address was checked,
and `Pinning` dials only a checked one.
"""

from __future__ import annotations

from mitmproxy import connection, http

from gateway.errors import DECISION_HEADER
from gateway.pipeline import ConnectView, decide_connect
from gateway.proxy.flows import OpenTunnel, Tunnels, peer
from gateway.proxy.mitm_compat import ErrorPages
from gateway.proxy.mtls import ClientCertificates
from gateway.runtime import Runtime


class Authenticate:
    def __init__(self, rt: Runtime, tunnels: Tunnels, pages: ErrorPages, certificates: ClientCertificates | None = None) -> None:
        self.rt, self.tunnels, self.pages, self.certificates = rt, tunnels, pages, certificates

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        req, client, certs = flow.request, flow.client_conn, self.certificates
        view = ConnectView(
            req.host, req.port, req.headers.get("proxy-authorization"), peer(flow),
            mtls=certs is not None and certs.on_listener(client),
            certificate=certs.peer(client) if certs is not None else None, traceparent=req.headers.get("traceparent"),
        )
        verdict = await decide_connect(self.rt, view)
        decision_id = verdict.call.decision_id
        if verdict.refusal is not None:
            self.tunnels.refused[flow.client_conn.id] = (decision_id, verdict.refusal)
            headers = {"X-Egress-Error": verdict.refusal.code, DECISION_HEADER: decision_id}
            flow.response = http.Response.make(200, b"", headers)
        elif verdict.tunnel is not None:
            self.tunnels[flow.client_conn.id] = OpenTunnel(verdict.tunnel)

    def client_disconnected(self, client: connection.Client) -> None:
        self.tunnels.pop(client.id, None)
        self.tunnels.refused.pop(client.id, None)
        self.pages.forget(client.id)
