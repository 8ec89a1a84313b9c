"""The decision pipeline: may this call go out, and how?

Every front door reads its protocol into a `ConnectView` or `RequestView` and asks `decide_connect`
or `decide`; the answer is a verdict: a `Refusal` (already audited), or the `Forward` edits to apply
before the call leaves. A tunnel's decision is small (identify, claim, resolve); each request's is
`REQUEST_STEPS`, named steps in their order, read alike by the README, the bench and the tests.
Nothing in this package imports mitmproxy or opens a socket: the proxy lives in `gateway.proxy`.

Modules: `decide` (the ordered steps), `steps` (the pure checks they run), `request` (views in,
verdicts out), `call` (the audit record), and the services the steps use: `egress` (address
classification), `breaker`, `quota`, `dlp`.
"""

from gateway.pipeline.call import Call, new_decision_id
from gateway.pipeline.decide import REQUEST_STEPS, Ctx, Step, decide, decide_connect, request_call
from gateway.pipeline.request import ConnectVerdict, ConnectView, Forward, RequestView, Tunnel, Verdict

__all__ = [
    "REQUEST_STEPS",
    "Call",
    "ConnectVerdict",
    "ConnectView",
    "Ctx",
    "Forward",
    "RequestView",
    "Step",
    "Tunnel",
    "Verdict",
    "decide",
    "decide_connect",
    "new_decision_id",
    "request_call",
]
