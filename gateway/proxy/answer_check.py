"""The vendor's answer made readable before anything reads it, or refused (`gateway.pipeline.answer`).

It runs before the MCP door and the outcome, which edit, scrub and restore the answer: they see
the plain body, never a compressed one they would read as opaque bytes. An answer whose head
already shows it cannot be checked (an informational status, an encoding not decoded, an encoded
event stream) has its vendor connection cut at once, so nothing of it is read further or relayed;
the outcome classifies that cut as the refusal set here. If the answer was complete before the
cut landed, or its body only fails once decoded (a compression bomb), the agent gets the refusal
in its place, on a connection then closed, since the vendor's may hold the rest of a broken answer.
"""

from __future__ import annotations

from mitmproxy import http

from gateway.errors import Refusal
from gateway.pipeline.answer import DECODED, decoded, refused_head
from gateway.pipeline.call import Call
from gateway.proxy.flows import ANSWER_REFUSED, CALL, is_event_stream, respond
from gateway.proxy.mitm_compat import abort_server_connection
from gateway.runtime import Runtime


class AnswerCheck:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if CALL not in flow.metadata or resp is None:
            return
        refusal = refused_head(resp.status_code, resp.headers.get("content-encoding", ""), is_event_stream(flow))
        if refusal is not None:
            refuse_answer(flow, refusal)

    def response(self, flow: http.HTTPFlow) -> None:
        call: Call | None = flow.metadata.get(CALL)
        resp = flow.response
        if call is None or resp is None or resp.stream:
            return
        refusal: Refusal | None = flow.metadata.get(ANSWER_REFUSED)
        encoding = resp.headers.get("content-encoding", "").strip().lower()
        if refusal is None and encoding in DECODED:
            body = decoded(resp.raw_content or b"", encoding, self.rt.config.max_response_body)
            if isinstance(body, Refusal):
                refusal = flow.metadata[ANSWER_REFUSED] = body
            else:
                del resp.headers["content-encoding"]
                resp.content = body
        if refusal is not None:
            refusal.connector, refusal.action = call.connector, call.action
            respond(flow, call.decision_id, refusal)
            assert flow.response is not None
            flow.response.headers["connection"] = "close"


def refuse_answer(flow: http.HTTPFlow, refusal: Refusal) -> None:
    """Refuse the vendor's answer from its head: its connection is cut at once, so nothing more of
    it is read or relayed; `AnswerCheck.response` answers the agent with `refusal` and the outcome
    records it."""
    flow.metadata[ANSWER_REFUSED] = refusal
    abort_server_connection(flow.client_conn, flow.server_conn, "egress-gateway: an answer the gateway cannot check")
