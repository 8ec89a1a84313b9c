"""The outcome of a forwarded call: the vendor's answer restored (step 10), the circuit told, and
the outcome audited (step 11); a failed flow classified into its refusal and answered as JSON.

The gateway never retries a call, idempotent or not. A reset or timeout can come after the vendor
acted, so only the agent, which knows whether it sent an `Idempotency-Key`, may safely send again;
the vendors' SDKs already retry (Stripe's with idempotency keys), and a second retry layer here
would multiply the load on a failing vendor that the circuit breaker is trying to shed.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import connection, http, tls

from gateway.errors import DECISION_HEADER, Refusal
from gateway.pipeline.breaker import blames_vendor
from gateway.pipeline.call import Call
from gateway.pipeline.dlp import CallDlp
from gateway.proxy.answer_check import refuse_answer
from gateway.proxy.flows import (
    ANSWER_REFUSED,
    CALL,
    CUT,
    DLP,
    FORWARDED,
    STREAM_EDIT,
    TIMED_OUT,
    UPSTREAM_TRACE,
    Tunnels,
    flow_call,
    is_event_stream,
    response_started,
)
from gateway.proxy.mitm_compat import (
    BODY_OVER_LIMIT,
    CLIENT_GONE,
    TRAILERS_ERROR,
    TRAILERS_UNREAD,
    ErrorPages,
    Unclaimed,
    stream_function,
)
from gateway.runtime import Runtime

log = logging.getLogger(__name__)
SCRUBBER = "egress.scrubber"  # the scrubber of this answer, built once from the secrets' values
SCRUBBED = "egress.scrubbed"  # a stream's count of removed secrets


class Outcome:
    def __init__(self, rt: Runtime, tunnels: Tunnels, pages: ErrorPages) -> None:
        self.rt, self.tunnels, self.pages = rt, tunnels, pages
        self._tls_failed: set[str] = set()  # client connection ids whose upstream TLS failed

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call: Call | None = flow.metadata.get(CALL)
        if call is None or flow.response is None:
            return
        flow.response.headers[DECISION_HEADER] = call.decision_id
        try:
            self._scrub_head(flow, call)
        except Exception as e:  # noqa: BLE001 - raised out of the hook, mitmproxy would relay the answer unscrubbed
            log.error("a vendor's answer could not be scrubbed (%s); refused", type(e).__name__)
            refuse_answer(flow, Refusal("internal_error", "the gateway could not check the vendor's answer", gateway_side=True))

    def _scrub_head(self, flow: http.HTTPFlow, call: Call) -> None:
        """Scrub the answer's headers, and set up the scrubbing (and restoring) of a streamed body."""
        assert flow.response is not None
        scrubber = flow.metadata[SCRUBBER] = self.rt.secrets.scrubber()
        fields, removed = [], 0
        for name, value in flow.response.headers.fields:
            if scrubber.scrub(name)[1]:  # a header named after the secret: no placeholder is a valid name
                removed += 1
                continue
            value, n = scrubber.scrub(value)
            fields.append((name, value))
            removed += n
        if removed:
            flow.response.headers.fields = tuple(fields)
            _scrubbed(call, removed)
        if is_event_stream(flow) and ANSWER_REFUSED not in flow.metadata:
            call_dlp: CallDlp | None = flow.metadata.get(DLP)
            # Streams pass through chunk by chunk; with tokens to restore or a secret that may
            # begin at a chunk's end, only that possible prefix is held back. A front door's own
            # stream edit (the MCP door's, which restores tokens itself) replaces the detokenizer.
            edit = flow.metadata.get(STREAM_EDIT)
            detok = edit or (self.rt.dlp.sse_stream(call_dlp) if call_dlp and call_dlp.reveal else None)
            modify, flow.metadata[SCRUBBED] = scrubber.stream(detok)
            flow.response.stream = stream_function(modify)
            if "content-length" in flow.response.headers:
                # An edited stream's length is not the vendor's: framed by its length, the agent
                # waited for bytes a scrubbed echo no longer had (or lost its end to a longer one).
                del flow.response.headers["content-length"]
                flow.response.headers["transfer-encoding"] = "chunked"

    async def response(self, flow: http.HTTPFlow) -> None:
        call: Call | None = flow.metadata.get(CALL)
        started = flow.metadata.get(FORWARDED)
        if call is None or started is None or flow.response is None:
            return
        elapsed = time.monotonic() - started
        if (refused := flow.metadata.get(ANSWER_REFUSED)) is not None:  # answered by `AnswerCheck`
            self._tell_breaker(call, refused)
            rec = call.record("deny", refused, phase="outcome", latency_ms=round(elapsed * 1000, 3))
            self.rt.record_after(rec)
            self._end_span(flow, rec, None)
            self.tunnels.done(flow)
            return
        self._scrub_body(flow, call)
        await self._restore(flow, call)
        status = flow.response.status_code
        if status >= 500:
            self.rt.breaker.failure(call.host or "", call.agent)
        else:
            self.rt.breaker.success(call.host or "", call.agent)
        self.rt.metrics.upstream(call.connector, call.action, elapsed)
        rec = call.record("allow", phase="outcome", upstream_status=status, latency_ms=round(elapsed * 1000, 3))
        self.rt.record_after(rec)
        self._end_span(flow, rec, status)
        self.tunnels.done(flow)

    def tls_failed_server(self, data: tls.TlsData) -> None:
        self._tls_failed.add(data.context.client.id)

    def client_disconnected(self, client: connection.Client) -> None:
        self._tls_failed.discard(client.id)  # a failure no flow reported must not stay behind

    def error(self, flow: http.HTTPFlow) -> None:
        """mitmproxy failed the flow: decide which refusal that is, audit it, claim its error page."""
        call: Call = flow.metadata.get(CALL) or flow_call(flow, self.tunnels)
        msg = flow.error.msg if flow.error else ""
        refusal = self._classify(flow, call, msg)
        refusal.connector, refusal.action = call.connector, call.action
        started = flow.metadata.get(FORWARDED)
        if started is not None:
            self._tell_breaker(call, refusal)
        latency = round((time.monotonic() - started) * 1000, 3) if started is not None else None
        phase = "outcome" if started else "decision"
        rec = call.record("deny", refusal, phase=phase, latency_ms=latency)
        self.rt.record_after(rec)
        self._end_span(flow, rec, None)
        # Claim the error page only when mitmproxy will write one: an unused claim would answer
        # the connection's next failure. A stream whose Content-Length is over the limit is
        # refused at its head, after the headers hook made it a stream but before any byte of it
        # reached the agent: its page is written, and was answered unclaimed (another decision
        # id than the audit's, and no reason).
        over_limit = msg.startswith("Response " + BODY_OVER_LIMIT)
        if (over_limit or not response_started(flow)) and not msg.startswith(CLIENT_GONE):
            self.pages.claim(flow.client_conn.id, call.decision_id, refusal)
        self.tunnels.done(flow)

    def _tell_breaker(self, call: Call, refusal: Refusal) -> None:
        """A forwarded call refused: the vendor's failure counts; anything else (the agent hung up,
        the gateway refused a well-formed answer) is neutral for the circuit."""
        if blames_vendor(refusal):
            self.rt.breaker.failure(call.host or "", call.agent)
        else:
            self.rt.breaker.release(call.host or "", call.agent)

    def _end_span(self, flow: http.HTTPFlow, rec: dict[str, object], status: int | None) -> None:
        up = flow.metadata.pop(UPSTREAM_TRACE, None)
        if up is not None and self.rt.tracing is not None:
            self.rt.tracing.end_upstream(up, rec, status)

    def _classify(self, flow: http.HTTPFlow, call: Call, msg: str) -> Refusal:
        if (cut := flow.metadata.get(CUT)) is not None:
            return cut  # the gateway cut the stream (gateway.proxy.streams), not the agent or vendor
        if (refused := flow.metadata.get(ANSWER_REFUSED)) is not None:
            return refused  # the gateway cut an answer it cannot check (gateway.proxy.answer_check)
        if msg.startswith(CLIENT_GONE):
            # The agent hung up: not the vendor's failure, so the circuit must not count it (any
            # agent could otherwise open it for everyone by hanging up on slow calls).
            return Refusal("client_closed", "the agent closed the connection before the answer")
        if msg.startswith("Response " + BODY_OVER_LIMIT):
            limit = self.rt.config.max_response_body
            return Refusal("upstream_failed", f"the vendor's response exceeds max_response_body ({limit} bytes)", gateway_side=True)
        if msg == TRAILERS_ERROR:  # exactly: a vendor's broken head, quoted in its error, could spell it too
            return Refusal("upstream_failed", TRAILERS_UNREAD, gateway_side=True)
        if flow.metadata.get(TIMED_OUT):
            return Refusal("upstream_timeout", f"{call.host} did not answer in time")
        if msg.startswith("Request " + BODY_OVER_LIMIT):
            return Refusal("body_too_large", f"the request body exceeds max_body ({self.rt.config.max_body} bytes)")
        if flow.client_conn.id in self._tls_failed:
            self._tls_failed.discard(flow.client_conn.id)
            return Refusal("upstream_tls", f"the TLS certificate of {call.host} did not verify")
        if flow.metadata.get(FORWARDED) is None:
            return Refusal("bad_request", "the request could not be read")
        return Refusal("upstream_failed", f"{call.host} failed: connection error or broken HTTP")

    def _scrub_body(self, flow: http.HTTPFlow, call: Call) -> None:
        """No vendor credential goes back to the agent, however the vendor echoed it."""
        resp = flow.response
        assert resp is not None
        if resp.stream:
            counted = flow.metadata.get(SCRUBBED)
            _scrubbed(call, counted() if counted else 0)
            return
        body = resp.get_content(strict=False) or b""
        clean, n = flow.metadata[SCRUBBER].scrub(body)
        if n:
            resp.content = clean
            _scrubbed(call, n)

    async def _restore(self, flow: http.HTTPFlow, call: Call) -> None:
        """Step 10: tokens in the response restored for an agent whose policy reveals their types."""
        call_dlp: CallDlp | None = flow.metadata.get(DLP)
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


def _scrubbed(call: Call, n: int) -> None:
    if n:
        call.extra["secrets_scrubbed"] = call.extra.get("secrets_scrubbed", 0) + n
        log.warning("the vendor's answer to %s held a credential; %d removed before the agent saw it", call.decision_id, n)


def unclaimed_pages(rt: Runtime) -> Unclaimed:
    """The refusal for a mitmproxy error page no flow hook claimed: a request too broken to become
    a flow (a bad request line, a head over the limit). It is audited like any refusal."""

    def refusal_for(status: int, message: str) -> tuple[str, Refusal]:
        code = {413: "body_too_large", 502: "upstream_failed", 504: "upstream_timeout"}.get(status, "bad_request")
        call = Call()
        refusal = Refusal(code, "the proxy request is malformed" if code == "bad_request" else "the request failed")
        rt.record_after(call.record("deny", refusal, phase="decision"))
        return call.decision_id, refusal

    return refusal_for
