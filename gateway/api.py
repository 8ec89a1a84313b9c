"""The agent and admin HTTP API (Starlette under uvicorn, in the gateway's event loop).

Authentication is the same agent JWT as the proxy, sent as `Authorization: Bearer`. Admin
endpoints need role `admin`. Health, readiness and the JWKS stay open: probes and token verifiers
cannot hold a token, and none of them reveals anything secret.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dlp.api import detokenize_request
from dlp.vault import StoreUnavailable
from gateway.approvals import ApprovalError
from gateway.dlp_step import scope_of
from gateway.errors import Refusal
from gateway.identity import Identity
from gateway.pipeline import Call
from gateway.runtime import Runtime

ADMIN_ROLE = "admin"
Handler = Callable[[Request], Awaitable[Response]]


def refusal_response(refusal: Refusal, decision_id: str) -> JSONResponse:
    """The contract's error body; identity failures are 401 here (this is not a proxy)."""
    status = 401 if refusal.status == 407 else refusal.status
    headers = {"X-Egress-Decision-Id": decision_id, **refusal.headers}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="egress-gateway"'
    return Response(refusal.body(decision_id), status, headers, media_type="application/json")  # type: ignore[return-value]


def authenticate(rt: Runtime, request: Request, *, admin: bool) -> Identity:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refusal("identity_missing", "send the token as Authorization: Bearer TOKEN")
    ident = rt.verifier.verify(token.strip())
    if admin and ident.role != ADMIN_ROLE:
        raise Refusal("admin_required", "this endpoint needs a token with role admin")
    return ident


def endpoint(rt: Runtime, *, admin: bool) -> Callable[[Callable[[Request, Identity], Awaitable[Any]]], Handler]:
    """Wrap a handler: authenticate, turn refusals and bugs into the contract's JSON errors."""

    def wrap(fn: Callable[[Request, Identity], Awaitable[Any]]) -> Handler:
        async def handler(request: Request) -> Response:
            call = Call(host="api", method=request.method, path=request.url.path)
            try:
                call.identity = authenticate(rt, request, admin=admin)
                result = await fn(request, call.identity)
            except Refusal as r:
                if r.status in (401, 403, 407):
                    rt.record(call.record("deny", r, phase="api"))
                return refusal_response(r, call.decision_id)
            if isinstance(result, Response):
                return result
            return JSONResponse(result, headers={"X-Egress-Decision-Id": call.decision_id})

        return handler

    return wrap


def create_app(rt: Runtime) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        try:
            rt.revocations.refresh()
        except Exception:
            return JSONResponse({"status": "unavailable", "store": "revocations"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def jwks(_: Request) -> Response:
        return JSONResponse({"keys": [rt.key.jwk()]})

    @endpoint(rt, admin=True)
    async def metrics(_: Request, __: Identity) -> Response:
        return PlainTextResponse(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    @endpoint(rt, admin=True)
    async def connectors(_: Request, __: Identity) -> dict[str, Any]:
        return {"connectors": [describe_connector(c) for c in rt.registry]}

    @endpoint(rt, admin=True)
    async def decisions(request: Request, __: Identity) -> dict[str, Any]:
        try:
            limit = min(max(int(request.query_params.get("limit", "100")), 1), len(rt.recent) or 1)
        except ValueError:
            raise Refusal("bad_request", "limit must be an integer") from None
        return {"decisions": list(rt.recent)[-limit:]}

    @endpoint(rt, admin=False)
    async def detokenize(request: Request, ident: Identity) -> dict[str, Any]:
        body = await request.body()
        if len(body) > rt.config.max_body:
            raise Refusal("body_too_large", f"the body exceeds max_body ({rt.config.max_body} bytes)")
        try:
            payload = json.loads(body)
        except ValueError:
            raise Refusal("malformed_body", "the body is not JSON") from None
        reveal = rt.dlp.policy_for(rt.policies.current if rt.policies else None, ident).reveal
        try:
            restored, summary = await detokenize_request(payload, rt.dlp.detokenizer, scope_of(ident), reveal)
        except StoreUnavailable:
            raise Refusal("store_unavailable", "the DLP vault is unavailable") from None
        audit = Call(identity=ident, host="api", method=request.method, path=request.url.path)
        rt.record(audit.record("allow", phase="reveal", revealed=summary.restored, withheld=summary.withheld))
        return restored

    @endpoint(rt, admin=False)
    async def approval(request: Request, ident: Identity) -> dict[str, Any]:
        found = rt.approvals.get(request.path_params["id"])
        mine = found is not None and found.sub == ident.sub and found.tenant == ident.tenant
        if found is None or not (mine or ident.role == ADMIN_ROLE):
            raise Refusal("not_found", "no such approval for this agent")
        return found.public()

    def decide_approval(verb: str) -> Handler:
        @endpoint(rt, admin=True)
        async def handler(request: Request, ident: Identity) -> dict[str, Any]:
            approval_id = request.path_params["id"]
            if rt.approvals.get(approval_id) is None:
                raise Refusal("not_found", "no such approval")
            try:
                decided = (rt.approvals.approve if verb == "approve" else rt.approvals.deny)(approval_id, ident.sub)
            except ApprovalError as e:
                raise Refusal("conflict", str(e)) from None
            audit = Call(identity=ident, host="api", method=request.method, path=request.url.path)
            rt.record(audit.record(verb, phase="approval", approval_id=approval_id))
            return decided.public()

        return handler

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/.well-known/jwks.json", jwks),
            Route("/metrics", metrics),
            Route("/v1/connectors", connectors, methods=["GET"]),
            Route("/v1/decisions", decisions, methods=["GET"]),
            Route("/v1/detokenize", detokenize, methods=["POST"]),
            Route("/v1/approvals/{id}", approval, methods=["GET"]),
            Route("/v1/approvals/{id}/approve", decide_approval("approve"), methods=["POST"]),
            Route("/v1/approvals/{id}/deny", decide_approval("deny"), methods=["POST"]),
        ]
    )


def describe_connector(c: Any) -> dict[str, Any]:
    return {
        "name": c.name,
        "hosts": list(c.hosts),
        "actions": [{"name": a.name, "method": a.method, "path": a.path, "encoding": a.encoding.value} for a in c.actions],
    }
