"""A person hears of each new approval: a Slack-compatible webhook, off the request path.

`approvals_webhook: https://hooks.example/...` posts `{"text": ..., "approval": {...}}` for every
new pending approval. The text and the approval carry what an approver needs (agent, tenant,
connector, action, the policy's summary of the parameters, the body as the vendor will get it, the
rule's reason, the expiry) and never a raw value: the summary holds only numbers, values a `one_of`
accepted and the path's ids, and the body's PII is tokenized or masked (`Dlp.approver_view`).
Deliveries are queued (bounded: a full queue is a log line and a dropped notice, never a blocked
call) and retried three times with backoff; the approval itself never depends on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.policy.approvals import Approval

log = logging.getLogger(__name__)
QUEUE = 100
TRIES = (0.0, 1.0, 4.0)  # delays before each attempt


def message(a: Approval) -> dict[str, Any]:
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.expires_at))
    who = f"{a.sub} ({a.tenant})" if a.tenant else a.sub
    text = (f"Approval {a.id} pending: {who} asks for {a.connector}.{a.action}: {a.reason}. "
            f"Expires {expires}. Decide with `egress-gateway approvals approve|deny {a.id}`.")
    return {"text": text, "approval": a.public()}


class ApprovalWebhook:
    def __init__(self, url: str, ca_bundle: Path | None = None) -> None:
        self.url = url
        self._verify: Any = str(ca_bundle) if ca_bundle else True
        self._queue: asyncio.Queue[Approval] | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def submit(self, approval: Approval) -> None:
        """Called when an approval is created (in the event loop's thread); never blocks."""
        if self._queue is None:
            return
        try:
            self._queue.put_nowait(approval)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("approvals webhook queue full; notice of %s dropped", approval.id)

    def start(self) -> None:
        self._queue = asyncio.Queue(QUEUE)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        assert self._queue is not None
        async with httpx.AsyncClient(verify=self._verify, timeout=10, follow_redirects=False) as client:
            while True:
                approval = await self._queue.get()
                await self._deliver(client, approval)

    async def _deliver(self, client: httpx.AsyncClient, approval: Approval) -> None:
        for delay in TRIES:
            await asyncio.sleep(delay)
            try:
                r = await client.post(self.url, json=message(approval))
                if r.status_code < 300:
                    return
                reason = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                reason = type(e).__name__
            log.warning("approvals webhook: notice of %s not delivered (%s)", approval.id, reason)
        log.error("approvals webhook: gave up on the notice of %s after %d tries", approval.id, len(TRIES))
