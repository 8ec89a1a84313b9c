"""What the proxy's addons share: the open tunnels, a flow's metadata keys, and the two
translations between mitmproxy and the pipeline (a flow read into a `RequestView`, a `Forward`
applied to a flow, a refusal written as its response)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.net.http import url

from gateway.errors import Refusal
from gateway.pipeline.call import Call
from gateway.pipeline.request import Forward, RequestView, Tunnel
from gateway.pipeline.steps import audit_method, redact_path

# flow.metadata keys
CALL = "egress.call"  # the Call: decision id and audit fields
DLP = "egress.dlp"  # the CallDlp its response needs to restore tokens
FORWARDED = "egress.forwarded"  # monotonic time the request left for the vendor
TIMED_OUT = "egress.timed_out"  # set by the upstream deadline before it cancels the connection
CUT = "egress.cut"  # the refusal that cut a stream (its identity was revoked or expired)
UPSTREAM_TRACE = "egress.upstream_trace"  # the upstream call's trace, when its decision is traced
MCP = "egress.mcp"  # the AnswerEditor of a forwarded MCP request (gateway.proxy.mcp)
STREAM_EDIT = "egress.stream_edit"  # a front door's edit of an SSE answer, run before the scrubber
ANSWER_REFUSED = "egress.answer_refused"  # the refusal of a vendor answer the gateway cannot check


@dataclass
class OpenTunnel:
    """A granted tunnel and the request in it that is with the vendor now, if any."""

    tunnel: Tunnel
    in_flight: http.HTTPFlow | None = None


class Tunnels(dict[str, OpenTunnel]):
    """Open tunnels by the agent's client connection id; `refused` holds the tunnels whose CONNECT
    was refused (decision id and refusal), which answer every request with that refusal."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: dict[str, tuple[str, Refusal]] = {}

    def of(self, flow: http.HTTPFlow) -> OpenTunnel | None:
        return self.get(flow.client_conn.id)

    def done(self, flow: http.HTTPFlow) -> None:
        """The flow's exchange is over: it no longer owns its tunnel's upstream connection."""
        open_tunnel = self.of(flow)
        if open_tunnel and open_tunnel.in_flight is flow:
            open_tunnel.in_flight = None


def request_view(flow: http.HTTPFlow, tunnel: Tunnel | None) -> RequestView:
    req = flow.request
    host_header = req.host_header
    return RequestView(
        tunnel=tunnel,
        method=req.method,
        raw_method=req.data.method,
        scheme=req.scheme,
        host=req.host,
        port=req.port,
        authority=url.parse_authority(req.authority, check=False) if req.authority else None,
        host_header=url.parse_authority(host_header, check=False) if host_header else None,
        sni=flow.client_conn.sni,
        path=req.path.split("?", 1)[0],
        query=req.path.partition("?")[2],
        headers=tuple(req.headers.fields),
        body=req.raw_content or b"",
        client=peer(flow),
    )


def peer(flow: http.HTTPFlow) -> str | None:
    address = flow.client_conn.peername
    return str(address[0]) if address else None


def flow_call(flow: http.HTTPFlow, tunnels: Tunnels) -> Call:
    """The call of a flow that failed before the pipeline saw it (mitmproxy refused its body): the
    tunnel's checked host, never the request's own (that came from the agent alone)."""
    req = flow.request
    open_tunnel = tunnels.of(flow)
    return Call(
        host=open_tunnel.tunnel.host if open_tunnel else None,
        method=audit_method(req.method),
        path=redact_path(req.path.split("?", 1)[0]),
        identity=open_tunnel.tunnel.identity if open_tunnel else None,
    )


def apply(req: http.Request, forward: Forward) -> None:
    """Make the request what the pipeline decided, aimed at exactly the address that was checked."""
    req.authority = ""  # upstream always gets origin-form
    if forward.path is not None:
        req.path = forward.path
    for name in forward.drop_query:
        req.query.pop(name, None)
    for name, value in forward.set_query.items():
        req.query[name] = value
    if forward.drop_headers:  # in one pass: a pop per name scanned every header each (a dozen names a call)
        drop = {name.lower().encode("latin-1") for name in forward.drop_headers}
        req.headers.fields = tuple(f for f in req.headers.fields if f[0].lower() not in drop)
    for name, value in forward.set_headers.items():
        req.headers[name] = value
    if forward.body is not None:
        req.content = forward.body
    # The Host header is unchanged; mitmproxy dials this address and reuses the connection for
    # the tunnel's next requests.
    req.data.host, req.data.port = forward.address


def send(flow: http.HTTPFlow, open_tunnel: OpenTunnel, forward: Forward) -> None:
    """The request goes to the vendor as decided: edited, aimed at the checked address, and
    known to the tunnel and the deadlines as the one in flight."""
    apply(flow.request, forward)
    flow.metadata[DLP] = forward.dlp
    open_tunnel.in_flight = flow
    flow.metadata[FORWARDED] = time.monotonic()


def respond(flow: http.HTTPFlow, decision_id: str, refusal: Refusal) -> None:
    answer = refusal.to_http(decision_id)
    flow.response = http.Response.make(answer.status, answer.body, answer.headers)


def response_started(flow: http.HTTPFlow) -> bool:
    """Whether the agent already has the response headers (a stream), so no error page follows."""
    return flow.response is not None and bool(flow.response.stream)


def is_event_stream(flow: http.HTTPFlow) -> bool:
    return flow.response is not None and "text/event-stream" in flow.response.headers.get("content-type", "")
