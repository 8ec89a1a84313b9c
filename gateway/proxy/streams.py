"""Open streams end with their identity: revocation, expiry and quarantine reach a response in progress.

The pipeline checks the identity on every request, so a revoked or expired agent is refused at its
next request. A stream (SSE) is one request that can last minutes: without this addon it kept
flowing to an agent long after its token expired or was revoked.

Every `SWEEP_SECONDS` a task walks the open tunnels; for each stream in flight it re-runs the
identity's time and revocation check (`Verifier.check`, a set lookup) and the quarantine check
(`Runtime.check_quarantine`: the agent, its tenant, the stream's connector, everything). A refused
identity has its stream cut: the audit gets an outcome record with the refusal (`identity_revoked`,
`identity_expired`, `quarantined`), and the agent's connection is closed. The agent's side, not the vendor's, is
cut, so the circuit breaker counts it as the agent's hang-up (never as a vendor fault), and the
tunnel closes with it: it could serve nothing more anyway. Revocations reach the process every
`revocation.POLL_SECONDS`, so a stream ends within the sum of the two (half a second).
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import http

from gateway.errors import Refusal
from gateway.pipeline.call import Call
from gateway.proxy.flows import CALL, CUT, Tunnels, response_started
from gateway.proxy.mitm_compat import abort_client_connection
from gateway.runtime import Runtime

log = logging.getLogger(__name__)

SWEEP_SECONDS = 0.25


class StreamCutoff:
    def __init__(self, rt: Runtime, tunnels: Tunnels, interval: float = SWEEP_SECONDS) -> None:
        self.rt, self.tunnels, self.interval = rt, tunnels, interval
        self._task: asyncio.Task[None] | None = None

    def running(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep_forever())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sweep()
            except Exception:
                # Never let the task die quietly: every later stream would then outlive its token.
                log.exception("stream identity sweep failed; retrying")

    def sweep(self) -> None:
        """Cut every stream in flight whose identity is no longer valid."""
        for open_tunnel in list(self.tunnels.values()):
            flow = open_tunnel.in_flight
            if flow is None or not response_started(flow) or CUT in flow.metadata:
                continue
            try:
                self.rt.verifier.check(open_tunnel.tunnel.identity)
                self.rt.check_quarantine(open_tunnel.tunnel.identity, flow.metadata[CALL].connector)
            except Refusal as refusal:
                self._cut(flow, refusal)

    def _cut(self, flow: http.HTTPFlow, refusal: Refusal) -> None:
        """Close the agent's connection; the outcome's `error` hook audits the flow with `refusal`."""
        call: Call = flow.metadata[CALL]  # set for every forwarded flow
        flow.metadata[CUT] = refusal
        if abort_client_connection(flow.client_conn, f"egress-gateway: {refusal.code}"):
            log.info("cut a stream of decision %s: %s", call.decision_id, refusal.code)
