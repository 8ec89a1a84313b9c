"""The API's plumbing shared by every route module: who is calling, and the contract's JSON answers.

Two ways in. The JSON API takes `Authorization: Bearer <token>` as it always has. Routes the console
uses (`endpoint(..., sessions=...)`) also take the console's session cookie, and only with the
session's CSRF token in `X-CSRF-Token`; every other route ignores the cookie entirely, so a
signed-in browser reaches nothing a script on the API could not already reach with the token, and
nothing at all that the console does not need (`gateway.api.sessions`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.api.sessions import COOKIE, CSRF_HEADER, Sessions
from gateway.errors import DECISION_HEADER, Refusal, StoreUnavailable
from gateway.identity.tokens import ADMIN_ROLE, ALL_TENANTS, METRICS_ROLE, Identity
from gateway.pipeline.call import Call
from gateway.pipeline.steps import audit_method, redact_path
from gateway.runtime import Runtime

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
DECISION_FILTERS = ("code", "sub", "tenant", "connector", "action", "decision", "phase")


def refusal_response(refusal: Refusal, decision_id: str) -> Response:
    """The contract's error body; identity failures are 401 here (this is not a proxy)."""
    answer = refusal.to_http(decision_id, proxy=False)
    return Response(answer.body, answer.status, answer.headers)


async def authenticate(rt: Runtime, request: Request, *, admin: bool, sessions: Sessions | None = None) -> Identity:
    """The caller's identity: a Bearer token, or (on console routes, without one) the session cookie
    with its CSRF token; the session is left on `request.state.console_session` for streams."""
    request.state.console_session = None
    if sessions is not None and "authorization" not in request.headers and COOKIE in request.cookies:
        session = sessions.verify(request.cookies[COOKIE], request.headers.get(CSRF_HEADER))
        request.state.console_session = session
        return session.identity
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refusal("identity_missing", "send the token as Authorization: Bearer TOKEN")
    return await verify_token(rt, token.strip(), admin=admin, path=request.url.path)


async def verify_token(rt: Runtime, token: str, *, admin: bool, path: str) -> Identity:
    """The API's rules for a token: verified, not quarantined, an admin naming its tenant where
    `admin`, and a metrics token nowhere but /metrics. The console's sign-in applies the same."""
    ident = await rt.verifier.authenticate(token)
    rt.check_quarantine(ident)  # admin and metrics tokens pass: an operator must be able to release
    if admin and ident.role != ADMIN_ROLE:
        raise Refusal("admin_required", "this endpoint needs a token with role admin")
    if ident.role == METRICS_ROLE and path != "/metrics":
        raise Refusal("admin_required", "a metrics token reads /metrics only")
    if admin and ident.tenant is None:
        raise Refusal("admin_required", f"an admin token must name its tenant, or {ALL_TENANTS!r} for every tenant")
    return ident


def global_admin(call: Call) -> None:
    """Settings that reach every tenant (tools, process metrics) are for a global admin only."""
    if call.identity is None or call.identity.role != ADMIN_ROLE or call.identity.tenant != ALL_TENANTS:
        raise Refusal("admin_required", f"this endpoint needs a global admin token (tenant {ALL_TENANTS!r})")


def endpoint(
    rt: Runtime, *, admin: bool, sessions: Sessions | None = None
) -> Callable[[Callable[[Request, Call], Awaitable[Any]]], Handler]:
    """Wrap a handler: authenticate, audit refusals, turn refusals and bugs into JSON errors.

    The handler gets the request's `Call` (its identity set), so what it audits carries the same
    decision id as the response's `X-Egress-Decision-Id`. With `sessions`, the console's cookie
    is accepted too (`authenticate`).
    """

    def wrap(fn: Callable[[Request, Call], Awaitable[Any]]) -> Handler:
        async def handler(request: Request) -> Response:
            call = Call(host="api", method=audit_method(request.method), path=redact_path(request.url.path))
            try:
                try:
                    call.identity = await authenticate(rt, request, admin=admin, sessions=sessions)
                    result = await fn(request, call)
                    # Rendered here, so a value JSON cannot carry fails as the contract's error too.
                    response = result if isinstance(result, Response) else JSONResponse(result)
                except StoreUnavailable as e:  # a state store (Redis: the sessions too) is down: 503, never a 500
                    raise Refusal("store_unavailable", str(e)) from None
            except Refusal as r:
                if r.connector is None:  # as the proxy's refusals do: name what the call was for, once known
                    r.connector, r.action = call.connector, call.action
                source = request.client.host if request.client else None  # aggregates unauthenticated ones
                rt.record_after(call.record("deny", r, phase="api", client=source))
                return refusal_response(r, call.decision_id)
            except Exception:
                log.exception("API handler failed")
                return refusal_response(Refusal("internal_error", "the gateway failed; nothing was done"), call.decision_id)
            response.headers[DECISION_HEADER] = call.decision_id
            # Answers hold agents' decisions, approvals and tokens' subjects: never kept by a
            # browser or a proxy cache (the console's reads use its session), never sniffed as HTML.
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            return response

        return handler

    return wrap


async def read_body(rt: Runtime, request: Request, limit: int | None = None, setting: str = "max_body") -> bytes:
    """The request body, refused past `limit` (default `max_body`; checked while reading, not after)."""
    cap = rt.config.max_body if limit is None else limit
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise Refusal("body_too_large", f"the body exceeds {setting} ({cap} bytes)")
    except ClientDisconnect:  # a hang-up (or framing broken mid-body) is audited, not a traceback
        raise Refusal("client_closed", "the client closed the connection before its body was read") from None
    return bytes(body)


async def recent_decisions(rt: Runtime) -> list[dict[str, Any]]:
    """The recent decision records the console's views read (one place to change where they live)."""
    return await rt.decisions.latest()


def only_params(request: Request, allowed: tuple[str, ...] = ()) -> None:
    """A query parameter the endpoint does not take is refused, never ignored: a mistyped filter
    would otherwise answer with everything, as if it had matched."""
    if set(request.query_params) - set(allowed):
        raise Refusal("bad_request", f"unknown parameter; this endpoint takes {', '.join(allowed) or 'none'}")
    if len(request.query_params.multi_items()) > len(request.query_params):  # `?sub=a&sub=b` read only b
        raise Refusal("bad_request", "a parameter is given twice")


def unix_seconds(value: str) -> float:
    """A `since` parameter: a finite number (`nan` matched nothing, silently, and `inf` all or none)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise Refusal("bad_request", "since must be Unix seconds")
    return seconds


def record_filter(request: Request, fields: tuple[str, ...], extra: tuple[str, ...] = ()) -> Callable[[dict[str, Any]], bool]:
    """The records a query asks for: each named field equal to its value, and `since` (Unix
    seconds) at or before the record's time; `extra` are the endpoint's own other parameters.
    A parameter it does not know is refused, never ignored."""
    params = request.query_params
    only_params(request, (*fields, "since", "limit", *extra))
    equal = {name: params[name] for name in fields if name in params}
    since = unix_seconds(params["since"]) if "since" in params else None

    def wanted(rec: dict[str, Any]) -> bool:
        when = rec.get("time", rec.get("created_at", 0.0))
        return all(str(rec.get(k)) == v for k, v in equal.items()) and (since is None or when >= since)

    return wanted


