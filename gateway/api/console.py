"""The operator console: `GET /console`, its static files, and signing in and out.

The console is plain HTML, CSS and JavaScript shipped inside the package (`gateway/api/static/`,
package data): no build step, nothing fetched from elsewhere at run time. Every page works with the
JSON API (approvals, decisions and their stream, agents, policies) through the session cookie
(`gateway.api.sessions`).

What keeps a hostile agent's strings inert: the script builds every element with `textContent`,
never `innerHTML`; and the Content-Security-Policy allows scripts and styles from this origin
only, none inline, so even markup that slipped into the page could not run.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors import codecs
from gateway.api.endpoint import read_body, refusal_response, verify_token
from gateway.api.sessions import COOKIE, CSRF_HEADER, Sessions
from gateway.errors import DECISION_HEADER, Refusal, StoreUnavailable, describe
from gateway.pipeline.call import Call
from gateway.pipeline.steps import audit_method, redact_path
from gateway.runtime import Runtime

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
MAX_SIGN_IN_BODY = 16 * 1024


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str


def _asset(name: str) -> bytes:
    return resources.files("gateway.api").joinpath("static", name).read_bytes()


def console_routes(rt: Runtime, sessions: Sessions) -> list[Route]:
    page = _asset("index.html")
    assets = {name: (_asset(name), kind) for name, kind in STATIC.items()}

    async def index(_: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return refusal_response(Refusal("not_found", "no such console file"), Call(host="api").decision_id)
        body, kind = found
        return Response(body, media_type=kind, headers=SECURITY_HEADERS)

    async def session(request: Request) -> Response:
        call = Call(host="api", method=audit_method(request.method), path=redact_path(request.url.path))
        try:
            if request.method == "GET":
                # How a reloaded page learns its CSRF token: readable by this origin's script only.
                result = sessions.resume(request.cookies.get(COOKIE)).public()
                return answer(result, call)
            if request.method == "DELETE":
                ended = sessions.verify(request.cookies.get(COOKIE), request.headers.get(CSRF_HEADER))
                call.identity = ended.identity
                sessions.end(ended.id)
                rt.record(call.record("allow", phase="console_sign_out"))
                response = answer({"signed_out": True}, call)
                response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure(rt, request))
                return response
            return await sign_in(request, call)
        except StoreUnavailable as e:  # the session store (Redis) is down: 503, as every API call
            log.warning("console session: %s", e)
            refusal = Refusal("store_unavailable", "the console session store is unavailable; try again")
            rt.record_after(call.record("deny", refusal, phase="api", client=request.client.host if request.client else None))
            return refusal_response(refusal, call.decision_id)
        except Refusal as r:
            rt.record_after(call.record("deny", r, phase="api", client=request.client.host if request.client else None))
            return refusal_response(r, call.decision_id)
        except Exception:
            log.exception("console session handler failed")
            return refusal_response(Refusal("internal_error", "the gateway failed; nothing was done"), call.decision_id)

    async def sign_in(request: Request, call: Call) -> Response:
        """The pasted admin token, once, in a JSON body (never a URL), for a session cookie."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise Refusal("bad_request", 'sign in with Content-Type: application/json and {"token": "..."}')
        try:
            # The proxy's strict JSON reader: two "token" keys are malformed, never the last one.
            token = SignIn.model_validate(codecs.decode_json(await read_body(rt, request, MAX_SIGN_IN_BODY))).token.strip()
        except ValidationError as e:
            raise Refusal("malformed_body", describe(e)) from None
        call.identity = await verify_token(rt, token, admin=True, path=request.url.path)
        started = sessions.start(call.identity)
        try:
            rt.record(call.record("allow", phase="console_sign_in"))
        except Refusal:  # a sign-in that cannot be audited does not happen
            sessions.end(started.id)
            raise
        response = answer(started.public(), call)
        response.set_cookie(COOKIE, started.id, max_age=max(1, int(started.expires_at - started.created_at)), path="/",
                            httponly=True, samesite="strict", secure=secure(rt, request))
        return response

    return [
        Route("/console", index, methods=["GET"]),
        Route("/console/static/{name}", static, methods=["GET"]),
        Route("/console/session", session, methods=["GET", "POST", "DELETE"]),
    ]


def answer(result: dict[str, Any], call: Call) -> JSONResponse:
    return JSONResponse(result, headers={DECISION_HEADER: call.decision_id, "Cache-Control": "no-store"})


def secure(rt: Runtime, request: Request) -> bool:
    """Whether the cookie is marked Secure: always when configured, else when the request was https."""
    return rt.config.console.secure_cookie == "always" or request.url.scheme == "https"
