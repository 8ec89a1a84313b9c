"""The mitmproxy addon: reads each flow into the pipeline's steps and applies what they decide.

One method per mitmproxy event, as mitmproxy's own addons are written:

- `http_connect`   identify the agent, check the host is claimed and resolves to a public address;
                   a refused CONNECT gets its JSON error and no tunnel, before any TLS.
- `request`        inside the tunnel, every request: re-check the identity (expiry, revocation),
                   check the target, route, authorize, validate, inject the credential, audit, go.
- `server_connect` dial exactly the address that was checked, with the vendor's name as SNI.
- `responseheaders`/`response`/`error`: the outcome, audited; errors become JSON refusals.

Anything unexpected while deciding is refused as `internal_error`: the gateway fails closed, and
an allowed call whose audit record cannot be written is refused as `store_unavailable`.

The gateway never retries a call, idempotent or not. A reset or timeout can come after the vendor
acted, so only the agent, which knows whether it sent an `Idempotency-Key`, may safely send again;
the vendors' SDKs already retry (Stripe's with idempotency keys), and a second retry layer here
would multiply the load on a failing vendor that the circuit breaker is trying to shed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import connection, http
from mitmproxy.net.http import url
from mitmproxy.proxy import server_hooks

from connectors import codecs
from connectors.model import Action, BodyEncoding
from gateway.pipeline import steps as pipeline
from gateway.pipeline.dlp import CallDlp, scope_of
from gateway.api.app import ADMIN_ROLE
from gateway.errors import Refusal
from gateway.identity.tokens import Identity, token_from_proxy_authorization
from gateway.proxy.mitm_compat import ErrorPages, abort_server_connection
from gateway.pipeline.steps import Call
from gateway.policy.engine import PolicySet
from gateway.runtime import Runtime

log = logging.getLogger(__name__)

DECISION_HEADER = "X-Egress-Decision-Id"
_CALL = "egress.call"
_TIMED_OUT = "egress.timed_out"
_TIMER = "egress.timer"
_FORWARDED = "egress.forwarded"
_DLP = "egress.dlp"
_CLIENT_GONE = "Client disconnected"
_RESPONSE_TOO_LARGE = "response body exceeds"  # mitmproxy's message past body_size_limit
HTTPS_PORT = 443  # mitmproxy's message when the agent hangs up mid-call


@dataclass
class Tunnel:
    """One agent connection: who opened it, for which target, and the address that was checked."""

    identity: Identity
    host: str
    port: int
    address: tuple[str, int]
    in_flight: http.HTTPFlow | None = None
    connect_timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class Gateway:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.tunnels: dict[str, Tunnel] = {}
        self.error_pages = ErrorPages(self._unclaimed_error)

    # --- the tunnel -------------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        call = Call(host=flow.request.host.lower().rstrip("."), method="CONNECT", path=None)
        try:
            token = token_from_proxy_authorization(flow.request.headers.get("proxy-authorization"))
            call.identity = self.rt.verifier.verify(token)
            if call.identity.role == ADMIN_ROLE:
                raise Refusal("identity_invalid", "an admin token is for the API only, not a proxy credential")
            if not (self.rt.registry.claims(call.host) or call.host in self.rt.allow_hosts):
                raise Refusal("host_denied", f"no connector or egress.allow entry claims {call.host}")
            if flow.request.port != HTTPS_PORT:
                raise Refusal("host_denied", f"vendors are reached on port {HTTPS_PORT} only")
            address = await self.rt.resolver.resolve(call.host, flow.request.port)
        except Refusal as r:
            self._refuse(flow, call, r)
            return
        except Exception:
            log.exception("CONNECT decision failed")
            self._refuse(flow, call, Refusal("internal_error", "the gateway failed while deciding"))
            return
        self.tunnels[flow.client_conn.id] = Tunnel(call.identity, call.host, flow.request.port, address)

    def client_disconnected(self, client: connection.Client) -> None:
        tunnel = self.tunnels.pop(client.id, None)
        if tunnel and tunnel.connect_timer:
            tunnel.connect_timer.cancel()

    # --- each request -----------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        req = flow.request
        path = req.path.split("?", 1)[0]
        call = Call(host=req.host.lower().rstrip("."), method=req.method, path=pipeline.redact_path(path))
        flow.metadata[_CALL] = call
        try:
            tunnel = self._identify(flow, call)
            await self._decide(flow, call, tunnel, path)
            # Written before anything leaves; if it cannot be written, nothing leaves.
            self.rt.record(call.record("allow", phase="decision"))
        except Refusal as r:
            self._refuse(flow, call, r)
            return
        except Exception:
            log.exception("request decision failed")
            self._refuse(flow, call, Refusal("internal_error", "the gateway failed while deciding"))
            return
        # The vendor gets the decision id too (set, never appended: an agent's own value is
        # replaced), so a vendor-side request log can be joined with the audit log.
        req.headers[DECISION_HEADER] = call.decision_id
        # Pin the checked address as the request's destination (the Host header is unchanged), so
        # mitmproxy dials it, and reuses the upstream connection for the tunnel's next requests.
        req.data.host, req.data.port = tunnel.address
        tunnel.in_flight = flow
        flow.metadata[_FORWARDED] = time.monotonic()
        loop = asyncio.get_running_loop()
        flow.metadata[_TIMER] = loop.call_later(self.rt.config.timeouts.read, self._timeout, flow)

    def _identify(self, flow: http.HTTPFlow, call: Call) -> Tunnel:
        """Step 1 again, inside the tunnel: the identity is re-checked on every request."""
        tunnel = self.tunnels.get(flow.client_conn.id)
        if tunnel is None:
            # Not inside a CONNECT tunnel: an absolute-form plain-http proxy request.
            token = token_from_proxy_authorization(flow.request.headers.get("proxy-authorization"))
            call.identity = self.rt.verifier.verify(token)
            if self.rt.registry.claims(call.host) or call.host in self.rt.allow_hosts:
                raise Refusal("plain_http_denied", f"plain http to {call.host} is refused; use https")
            raise Refusal("host_denied", f"no connector or egress.allow entry claims {call.host}")
        call.identity = tunnel.identity
        self.rt.verifier.check(tunnel.identity)
        return tunnel

    async def _decide(self, flow: http.HTTPFlow, call: Call, tunnel: Tunnel, path: str) -> None:
        req = flow.request
        if not req.data.method.isupper():
            # mitmproxy shows `method` upper-cased but forwards the raw bytes: route what is sent.
            raise Refusal("bad_request", "the method must be upper case")
        if len(req.raw_content or b"") > self.rt.config.max_body:
            raise Refusal("body_too_large", f"the request body exceeds max_body ({self.rt.config.max_body} bytes)")
        pipeline.check_headers(req.headers.fields)
        host_header = req.host_header
        pipeline.check_target(
            connect=(tunnel.host, tunnel.port),
            scheme=req.scheme,
            target=(req.host, req.port),
            authority=url.parse_authority(req.authority, check=False) if req.authority else None,
            host_header=url.parse_authority(host_header, check=False) if host_header else None,
            sni=flow.client_conn.sni,
        )
        req.authority = ""  # upstream always gets origin-form
        pipeline.check_path(path or "/")
        route = pipeline.route(self.rt.registry, self.rt.allow_hosts, call.host, req.method, path or "/")
        assert call.identity is not None
        if route is None:
            call.connector, call.action = pipeline.PASSTHROUGH, call.host
            pipeline.authorize_scopes(call.identity, "egress", call.host)
            if self.rt.policies is not None:
                # Policy rules name connectors; a pass-through host has none, so no rule can allow it.
                raise Refusal("policy_denied", f"{call.host} is a pass-through host; policies govern connectors only")
            pipeline.strip_hop_headers(req.headers)
            self.rt.breaker.check(call.host)
            return
        connector, action = route.connector, route.action
        call.connector, call.action = connector.name, action.name
        pipeline.authorize_scopes(call.identity, connector.name, action.name)
        cred = connector.credential
        if cred is not None and cred.query_param is not None:
            req.query.pop(cred.query_param, None)
        if req.headers.get("content-encoding", "identity").strip().lower() not in ("identity", ""):
            raise Refusal("malformed_body", "compressed request bodies are not accepted; send them plain")
        params = pipeline.validate(action, req.raw_content or b"", req.path.partition("?")[2])
        # What the policy judges and an approval is bound to: the parameters and the path's own
        # (confirming pi_A is not confirming pi_B). `_path` can name no model field.
        judged = {**params, pipeline.PATH_PARAMS: route.path_params} if route.path_params else params
        policies = self.rt.policies.current if self.rt.policies else None
        confidence = req.headers.get(pipeline.CONFIDENCE_HEADER)
        decision = pipeline.authorize(policies, call.identity, connector.name, action.name, judged, confidence)
        if decision is not None:
            call.extra.update(pipeline.policy_fields(decision))
            if decision.outcome == "deny" and decision.refusal is not None:
                raise decision.refusal
            approval_id = self.rt.approvals.gate(decision, judged, req.headers.get(pipeline.APPROVAL_HEADER))
            if approval_id:
                call.extra["approval_id"] = approval_id
            findings = await self.rt.quotas.charge(decision, judged)
            call.extra["would_deny"] += [f.as_dict() for f in findings if not f.fail_open]
            if opened := [f.as_dict() for f in findings if f.fail_open]:
                call.extra["fail_open"] = opened
        await self._tokenize(flow, call, action, params, policies, path)
        pipeline.inject_credentials(connector, self.rt.secrets, req.headers, req.query)
        # Last: letting a half-open circuit's one probe through commits us to forwarding it.
        self.rt.breaker.check(call.host)

    async def _tokenize(
        self,
        flow: http.HTTPFlow,
        call: Call,
        action: Action,
        params: dict[str, Any],
        policies: PolicySet | None,
        path: str,
    ) -> None:
        """Step 7: PII in the action's DLP fields leaves only as tokens; the body is re-encoded."""
        assert call.identity is not None
        dlp_policy = self.rt.dlp.policy_for(policies, call.identity)
        reveal = dlp_policy.reveal if action.detokenize_response else frozenset()
        call_dlp = flow.metadata[_DLP] = CallDlp(scope_of(call.identity), reveal)
        counts = await self.rt.dlp.tokenize(action, params, dlp_policy, call_dlp)
        req = flow.request
        if counts:
            call.extra["tokenized"] = counts
            if action.encoding is BodyEncoding.QUERY:
                req.path = f"{path}?{codecs.encode_form(params)}"
            else:
                req.content = codecs.encode(action.encoding, params)
        if reveal:
            req.headers["accept-encoding"] = "identity"  # restoring needs the plain response body

    # --- the upstream -----------------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Dial only the address that was checked, with the vendor's name as SNI."""
        tunnel = self.tunnels.get(data.client.id)
        if tunnel is None or data.server.address != tunnel.address:
            data.server.error = "egress-gateway: refusing to dial an address that was not checked"
            return
        data.server.sni = tunnel.host
        flow = tunnel.in_flight
        if flow is not None:
            loop = asyncio.get_running_loop()
            tunnel.connect_timer = loop.call_later(self.rt.config.timeouts.connect, self._timeout, flow)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        tunnel = self.tunnels.get(data.client.id)
        if tunnel and tunnel.connect_timer:
            tunnel.connect_timer.cancel()
            tunnel.connect_timer = None

    def _timeout(self, flow: http.HTTPFlow) -> None:
        if flow.error is None and flow.server_conn and not self._response_started(flow):
            flow.metadata[_TIMED_OUT] = True
            abort_server_connection(flow.client_conn, flow.server_conn, "egress-gateway: upstream timeout")

    # --- the outcome ------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call: Call | None = flow.metadata.get(_CALL)
        if call is None or flow.response is None:
            self._stop_timers(flow)
            return
        flow.response.headers[DECISION_HEADER] = call.decision_id
        if "text/event-stream" in flow.response.headers.get("content-type", ""):
            # A stream may rightly last longer than the read timeout; its headers are its answer.
            self._stop_timers(flow)
            call_dlp: CallDlp | None = flow.metadata.get(_DLP)
            # Streams pass through chunk by chunk; with tokens to restore, only a possible token
            # prefix is held back.
            flow.response.stream = self.rt.dlp.sse_stream(call_dlp) if call_dlp and call_dlp.reveal else True
        # Otherwise the read timeout keeps running until the whole body is in: a vendor trickling
        # a body a byte at a time gets 504 at the deadline, not a connection held forever.

    async def response(self, flow: http.HTTPFlow) -> None:
        self._stop_timers(flow)
        call: Call | None = flow.metadata.get(_CALL)
        started = flow.metadata.get(_FORWARDED)
        if call is None or started is None or flow.response is None:
            return
        elapsed = time.monotonic() - started
        await self._restore(flow, call)
        status = flow.response.status_code
        if status >= 500:
            self.rt.breaker.failure(call.host or "")
        else:
            self.rt.breaker.success(call.host or "")
        self.rt.metrics.upstream(elapsed)
        self.rt.record_after(
            call.record("allow", phase="outcome", upstream_status=status, latency_ms=round(elapsed * 1000, 3))
        )
        self._done(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        """mitmproxy failed the flow; decide which refusal that is and audit it."""
        self._stop_timers(flow)
        call: Call = flow.metadata.get(_CALL) or self._call_for(flow)
        msg = flow.error.msg if flow.error else ""
        refusal = self._classify(flow, call, msg)
        refusal.connector, refusal.action = call.connector, call.action
        started = flow.metadata.get(_FORWARDED)
        vendor_fault = refusal.code in ("upstream_failed", "upstream_tls", "upstream_timeout")
        if started is not None and vendor_fault and _RESPONSE_TOO_LARGE not in msg.lower():
            self.rt.breaker.failure(call.host or "")
        elif started is not None and refusal.code == "client_closed":
            self.rt.breaker.release(call.host or "")
        latency = round((time.monotonic() - started) * 1000, 3) if started is not None else None
        phase = "outcome" if started else "decision"
        self.rt.record_after(call.record("deny", refusal, phase=phase, latency_ms=latency))
        # Claim the error page only when mitmproxy will write one: an unused claim would be handed
        # to the next flow failing with the same message, with this flow's decision id.
        if not self._response_started(flow) and not msg.startswith(_CLIENT_GONE):
            self.error_pages.claim(msg, call.decision_id, refusal)
        self._done(flow)

    async def _restore(self, flow: http.HTTPFlow, call: Call) -> None:
        """Step 10: tokens in the response restored for an agent whose policy reveals their types."""
        call_dlp: CallDlp | None = flow.metadata.get(_DLP)
        resp = flow.response
        if call_dlp is None or not call_dlp.reveal or resp is None:
            return
        if call_dlp.stream_summary is not None:
            summary = call_dlp.stream_summary()
        elif "json" in resp.headers.get("content-type", "") and resp.raw_content:
            restored, summary = await self.rt.dlp.restore_json(resp.content or b"", call_dlp)
            if summary.total:
                resp.content = restored
        else:
            return
        if summary.total or summary.withheld:
            call.extra["revealed"], call.extra["withheld"] = summary.restored, summary.withheld

    def _classify(self, flow: http.HTTPFlow, call: Call, msg: str) -> Refusal:
        low = msg.lower()
        if msg.startswith(_CLIENT_GONE):
            # The agent hung up: not the vendor's failure, so the circuit must not count it (any
            # agent could otherwise open it for everyone by hanging up on slow calls).
            return Refusal("client_closed", "the agent closed the connection before the answer")
        if _RESPONSE_TOO_LARGE in low:
            limit = self.rt.config.max_response_body
            return Refusal("upstream_failed", f"the vendor's response exceeds max_response_body ({limit} bytes)")
        if flow.metadata.get(_TIMED_OUT):
            return Refusal("upstream_timeout", f"{call.host} did not answer in time")
        if "body exceeds" in low and "request" in low:
            return Refusal("body_too_large", f"the request body exceeds max_body ({self.rt.config.max_body} bytes)")
        if "certificate" in low or "tls" in low or "ssl" in low:
            return Refusal("upstream_tls", f"the TLS certificate of {call.host} did not verify")
        if flow.metadata.get(_FORWARDED) is None:
            return Refusal("bad_request", "the request could not be read")
        return Refusal("upstream_failed", f"{call.host} failed: connection error or broken HTTP")

    def _call_for(self, flow: http.HTTPFlow) -> Call:
        path = pipeline.redact_path(flow.request.path.split("?", 1)[0])
        call = Call(host=flow.request.host, method=flow.request.method, path=path)
        tunnel = self.tunnels.get(flow.client_conn.id)
        call.identity = tunnel.identity if tunnel else None
        return call

    def _unclaimed_error(self, status: int, message: str) -> tuple[str, Refusal]:
        """A mitmproxy error page no flow hook claimed: a request too broken to become a flow."""
        code = {413: "body_too_large", 502: "upstream_failed", 504: "upstream_timeout"}.get(status, "bad_request")
        call = Call()
        refusal = Refusal(code, "the proxy request is malformed" if code == "bad_request" else "the request failed")
        self.rt.record_after(call.record("deny", refusal, phase="decision"))
        return call.decision_id, refusal

    # --- helpers ----------------------------------------------------------------------------

    def _refuse(self, flow: http.HTTPFlow, call: Call, refusal: Refusal) -> None:
        if refusal.connector is None:
            refusal.connector, refusal.action = call.connector, call.action
        headers = {"Content-Type": "application/json", DECISION_HEADER: call.decision_id, **refusal.headers}
        if refusal.status == 407:
            headers["Proxy-Authenticate"] = 'Basic realm="egress-gateway"'
        flow.response = http.Response.make(refusal.status, refusal.body(call.decision_id), headers)
        peer = flow.client_conn.peername  # the source unauthenticated refusals are aggregated by
        self.rt.record_after(call.record("deny", refusal, phase="decision", client=peer[0] if peer else None))

    def _stop_timers(self, flow: http.HTTPFlow) -> None:
        timer = flow.metadata.pop(_TIMER, None)
        if timer is not None:
            timer.cancel()
        tunnel = self.tunnels.get(flow.client_conn.id)
        if tunnel and tunnel.connect_timer:
            tunnel.connect_timer.cancel()
            tunnel.connect_timer = None

    @staticmethod
    def _response_started(flow: http.HTTPFlow) -> bool:
        """Whether the agent already has the response headers (a stream), so no error page follows."""
        return flow.response is not None and bool(flow.response.stream)

    def _done(self, flow: http.HTTPFlow) -> None:
        tunnel = self.tunnels.get(flow.client_conn.id)
        if tunnel and tunnel.in_flight is flow:
            tunnel.in_flight = None
