"""The decision pipeline: may this call go out, and how?

Every front door reads its protocol into a `ConnectView` or `RequestView` and asks `decide_connect`
or `decide`; the answer is a verdict: a `Refusal` (already audited), or the `Forward` edits to apply
before the call leaves. A tunnel's decision is small (identify, claim, resolve); each request's is
`REQUEST_STEPS`, named steps in their order, read alike by the README, the bench and the tests.
Nothing in this package imports mitmproxy or opens a socket: the proxy lives in `gateway.proxy`.

Modules: `decision` (the ordered steps, `decide`), `steps` (the pure checks they run), `request` (views in,
verdicts out), `call` (the audit record), `scrub` (credentials kept out of answers), and the
services the steps use: `egress` (address classification), `breaker`, `quota`, `dlp`.

The names below are this package's face. They load on first use, so that a command that needs
only `pipeline.call` (the CLI) does not load the DLP models that `decision` brings in.
"""

from __future__ import annotations

from gateway.faces import lazy_face

_FACE = {
    "Call": "call", "new_decision_id": "call",
    "REQUEST_STEPS": "decision", "JUDGE_STEPS": "decision", "Ctx": "decision", "Step": "decision",
    "decide": "decision", "decide_connect": "decision", "new_ctx": "decision", "judge": "decision", "request_call": "decision",
    "may_call": "decision", "McpRequest": "request",
    "ConnectVerdict": "request", "ConnectView": "request", "Forward": "request", "RequestView": "request",
    "Tunnel": "request", "Verdict": "request",
}
__all__ = sorted(_FACE)
__getattr__ = lazy_face(__name__, _FACE)
