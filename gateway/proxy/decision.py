"""Every request inside a tunnel: read into a `RequestView`, decided by the one pipeline
(`gateway.pipeline.decision`), and either answered with its refusal or changed as decided and sent
to exactly the address that was checked."""

from __future__ import annotations

from mitmproxy import http

from gateway.pipeline import decide, request_call
from gateway.proxy.flows import CALL, UPSTREAM_TRACE, Tunnels, request_view, respond, send
from gateway.runtime import Runtime


class Decide:
    def __init__(self, rt: Runtime, tunnels: Tunnels) -> None:
        self.rt, self.tunnels = rt, tunnels

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or CALL in flow.metadata:
            return  # answered at admission, or decided by the MCP door
        open_tunnel = self.tunnels.of(flow)
        view = request_view(flow, open_tunnel.tunnel if open_tunnel else None)
        call = flow.metadata[CALL] = request_call(self.rt, view)
        verdict = await decide(self.rt, view, call)
        if verdict.refusal is not None:
            respond(flow, call.decision_id, verdict.refusal)
            return
        assert verdict.forward is not None and open_tunnel is not None  # no tunnel is always refused
        send(flow, open_tunnel, verdict.forward)
        if self.rt.tracing is not None and call.trace is not None:
            flow.metadata[UPSTREAM_TRACE] = self.rt.tracing.upstream(call.trace)
