"""The decisions as they happen (`GET /v1/decisions/stream`, server-sent events) and one decision's
records by id (`GET /v1/decisions/{id}`), for the console's live feed and for scripts.

A stream shows the caller what `GET /v1/decisions` would (its tenant's records, the same filters),
record by record, until the caller's authority ends: the stream checks every second that the
console session still stands (not signed out, not expired) or that the Bearer token is still valid
(not expired, not revoked), and closes with an `end` event otherwise. A reader that falls behind
gets a `lost` event with the number of records dropped for it (`gateway.live_decisions`), never an
unbounded buffer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from gateway.api.endpoint import DECISION_FILTERS, endpoint, recent_decisions, record_filter
from gateway.api.sessions import Session, Sessions
from gateway.errors import Refusal
from gateway.identity.tokens import Identity
from gateway.live_decisions import Subscription
from gateway.pipeline.call import Call
from gateway.runtime import Runtime

CHECK_EVERY = 1.0  # seconds between checks that the caller may still watch
KEEP_ALIVE = 5.0  # seconds of silence before a comment line, which also finds a reader that left


def event(name: str, data: dict[str, Any]) -> str:
    """One SSE event; `json.dumps` escapes newlines, so a record is always one `data:` line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def stream_routes(rt: Runtime, sessions: Sessions) -> list[Route]:

    @endpoint(rt, admin=True, sessions=sessions)
    async def stream(request: Request, call: Call) -> StreamingResponse:
        admin = call.identity
        assert admin is not None
        wanted = record_filter(request, DECISION_FILTERS)
        sub = rt.live.subscribe()
        if sub is None and rt.live.closed:
            raise Refusal("store_unavailable", "the gateway is shutting down")
        if sub is None:
            raise Refusal("rate_limited", f"{rt.live.limit} decision streams are open; close one or try again later",
                          headers={"Retry-After": "10"})
        still_allowed = authority(rt, sessions, admin, request.state.console_session)
        body = events(sub, lambda rec: admin.administers(rec.get("tenant")) and wanted(rec), still_allowed)

        async def closing() -> AsyncIterator[str]:
            try:
                async for chunk in body:
                    yield chunk
            finally:
                rt.live.unsubscribe(sub)

        return StreamingResponse(closing(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @endpoint(rt, admin=True, sessions=sessions)
    async def one(request: Request, call: Call) -> dict[str, Any]:
        admin = call.identity
        assert admin is not None
        decision_id = request.path_params["id"]
        found = [rec for rec in await recent_decisions(rt)
                 if rec.get("decision_id") == decision_id and admin.administers(rec.get("tenant"))]
        if not found:
            raise Refusal("not_found", "no such decision among the recent ones in this admin's tenant")
        return {"decision_id": decision_id, "records": found}

    return [
        Route("/v1/decisions/stream", stream, methods=["GET"]),
        Route("/v1/decisions/{id}", one, methods=["GET"]),
    ]


def authority(rt: Runtime, sessions: Sessions, admin: Identity, session: Session | None) -> Callable[[], str | None]:
    """Why the stream must end now (signed out, expired, revoked), or None while it may go on."""

    def check() -> str | None:
        if rt.live.closed:
            return "the gateway is shutting down"
        if session is not None:
            return None if sessions.alive(session.id) else "the console session has ended"
        try:
            rt.verifier.check(admin)
        except Refusal as r:
            return r.message
        return None

    return check


async def events(
    sub: Subscription, visible: Callable[[dict[str, Any]], bool], still_allowed: Callable[[], str | None]
) -> AsyncIterator[str]:
    yield "retry: 3000\n\n"
    quiet_since = time.monotonic()
    while True:
        try:
            rec = await asyncio.wait_for(sub.queue.get(), CHECK_EVERY)
        except TimeoutError:
            rec = None
        if (why := still_allowed()) is not None:
            yield event("end", {"reason": why})
            return
        if lost := sub.take_lost():
            yield event("lost", {"count": lost})
        if rec is not None and visible(rec):
            quiet_since = time.monotonic()
            yield event("decision", rec)
        elif time.monotonic() - quiet_since >= KEEP_ALIVE:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
