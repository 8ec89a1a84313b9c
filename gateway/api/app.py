"""The agent and admin HTTP API (Starlette under uvicorn, in the gateway's event loop).

Authentication is the same agent JWT as the proxy, sent as `Authorization: Bearer`. Admin
endpoints need role `admin`. Health, readiness and the JWKS stay open: probes and token verifiers
cannot hold a token, and none of them reveals anything secret. The operator console (`/console`)
is served here too; the admin routes it uses also take its session cookie (`gateway.api.endpoint`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from connectors import codecs
from connectors.model import Connector
from connectors.registry import API
from dlp.api import detokenize_request
from dlp.vault import StoreUnavailable
from gateway.api.agents import agent_routes as agents_view_routes
from gateway.api.console import console_routes
from gateway.api.endpoint import (
    DECISION_FILTERS,
    Handler,
    endpoint,
    global_admin,
    only_params,
    read_body,
    record_filter,
    refusal_response,
)
from gateway.api.policies import policy_routes
from gateway.api.response import response_routes
from gateway.api.sessions import Sessions
from gateway.api.stream import stream_routes
from gateway.connector_admin import document_digest
from gateway.errors import Refusal, describe
from gateway.identity.tokens import METRICS_ROLE
from gateway.pipeline.call import Call
from gateway.pipeline.dlp import scope_of
from gateway.pipeline.steps import audit_method, redact_path
from gateway.policy.approvals import ApprovalError
from gateway.runtime import Runtime
from gateway.sandbox_service import RegisterRequest, RunRequest


def create_app(rt: Runtime) -> Starlette:
    """The API: open probes, the agents' endpoints and the admins'; every refusal the contract's JSON."""

    async def no_route(request: Request, exc: Exception) -> Response:
        """Starlette's own 404 and 405 pages are plain text; every refusal here is the contract's JSON."""
        call = Call(host="api", method=audit_method(request.method), path=redact_path(request.url.path))
        if getattr(exc, "status_code", 404) == 405:
            refusal = Refusal("bad_request", f"this endpoint does not take {request.method}")
        else:
            refusal = Refusal("not_found", "no such API endpoint")
        return refusal_response(refusal, call.decision_id)

    sessions = Sessions(rt.config.console, rt.verifier, rt.console_sessions)
    routes: list[BaseRoute] = [
        *open_routes(rt),
        *agent_routes(rt),
        *stream_routes(rt, sessions),  # before admin_routes: /v1/decisions/stream is not a decision id
        *admin_routes(rt, sessions),
        *agents_view_routes(rt, sessions),
        *policy_routes(rt, sessions),
        *console_routes(rt, sessions),
        *response_routes(rt, sessions),
    ]
    app = Starlette(exception_handlers={404: no_route, 405: no_route}, routes=routes)
    # Starlette answers `/v1/decisions/` with a bodiless 307 to `/v1/decisions`: no decision id,
    # and a client that follows it re-sends its token and body to a URL it did not ask for. A path
    # is routed exactly as written; anything else is the contract's 404.
    app.router.redirect_slashes = False
    return app


def open_routes(rt: Runtime) -> list[Route]:
    """Probes and the JWKS: they hold no secret, and their callers hold no token."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        """Ready or not, with the sha256 of every artifact loaded (gateway.attest): public files' hashes."""
        attestation = rt.attestation()
        try:
            rt.revocations.refresh()
        except Exception:  # noqa: BLE001 - any failure of the store means not ready, never a crash
            return JSONResponse({"status": "unavailable", "store": "revocations", "attestation": attestation}, status_code=503)
        try:  # a fleet's quarantine list unread for long refuses every agent, as the revocations do
            for change in rt.quarantine.refresh():
                rt.quarantine_changed(change)
        except Exception:  # noqa: BLE001 - as above
            return JSONResponse({"status": "unavailable", "store": "quarantine", "attestation": attestation}, status_code=503)
        if missing := rt.credentials_not_ready():  # reasons name the reference, never a value
            return JSONResponse({"status": "unavailable", "connectors": missing, "attestation": attestation}, status_code=503)
        return JSONResponse({"status": "ready", "attestation": attestation})

    async def jwks(_: Request) -> Response:
        return JSONResponse(rt.keys.jwks() if rt.keys else {"keys": [rt.key.jwk()]})

    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/.well-known/jwks.json", jwks),
    ]


def agent_routes(rt: Runtime) -> list[Route]:
    """What an agent's own token reaches: its tokens restored, tools run, its approvals."""

    @endpoint(rt, admin=False)
    async def detokenize(request: Request, call: Call) -> dict[str, Any]:
        # The proxy's own JSON reader: duplicate keys, over-long numbers and nesting past its depth
        # are a clear 400, never a 500 from a recursion deep inside the restore walk.
        payload = codecs.decode_json(await read_body(rt, request))
        ident = call.identity
        assert ident is not None
        reveal = rt.dlp.policy_for(rt.policies.current if rt.policies else None, ident).reveal
        try:
            restored, summary = await detokenize_request(payload, rt.dlp.detokenizer, scope_of(ident), reveal)
        except StoreUnavailable:
            raise Refusal("store_unavailable", "the DLP vault is unavailable") from None
        rt.record(call.record("allow", phase="reveal", revealed=summary.restored, withheld=summary.withheld))
        return restored

    @endpoint(rt, admin=False)
    async def sandbox_run(request: Request, call: Call) -> dict[str, Any]:
        body = await read_body(rt, request)
        try:
            run = RunRequest.model_validate_json(body)
        except ValidationError as e:
            raise Refusal("malformed_body", describe(e)) from None
        # Pydantic keeps the last of two "tool" keys: strict envelope, the input read as before.
        codecs.refuse_repeated_envelope_key(body)
        started = time.perf_counter()
        try:
            result = await rt.tools.run(call, run, rt.policies.current if rt.policies else None)
        finally:
            rt.metrics.sandbox_run(call.action or "?", time.perf_counter() - started)
        rt.record(call.record("allow", phase="sandbox"))
        return {"output": result.output, "fuel_used": result.fuel_used, "duration_ms": result.duration_ms,
                "host_calls": result.host_calls}

    @endpoint(rt, admin=False)
    async def list_tools(request: Request, call: Call) -> dict[str, Any]:
        assert call.identity is not None
        only_params(request)
        await rt.tools.sync()  # tools registered on another replica of the fleet
        return {"tools": rt.tools.visible_to(call.identity.role)}

    @endpoint(rt, admin=False)
    async def approval(request: Request, call: Call) -> dict[str, Any]:
        ident = call.identity
        assert ident is not None
        found = rt.approvals.get(request.path_params["id"])
        mine = found is not None and found.sub == ident.sub and found.tenant == ident.tenant
        if found is None or not (mine or ident.administers(found.tenant)):
            raise Refusal("not_found", "no such approval for this agent")
        return found.public()

    return [
        Route("/v1/detokenize", detokenize, methods=["POST"]),
        Route("/v1/sandbox/run", sandbox_run, methods=["POST"]),
        Route("/v1/tools", list_tools, methods=["GET"]),
        Route("/v1/approvals/{id}", approval, methods=["GET"]),
    ]


def admin_routes(rt: Runtime, sessions: Sessions) -> list[Route]:
    """What an admin token reaches, inside its tenant (global settings need tenant `*`); the console
    uses (and its session reaches) only the decisions and approvals."""

    @endpoint(rt, admin=False)
    async def metrics(_: Request, call: Call) -> Response:
        if call.identity is None or call.identity.role != METRICS_ROLE:
            global_admin(call)
        return PlainTextResponse(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    @endpoint(rt, admin=True)
    async def connectors(request: Request, __: Call) -> dict[str, Any]:
        only_params(request)
        return {"connectors": [describe_connector(c, rt.registry.origin(c.name)) for c in rt.registry]}

    @endpoint(rt, admin=True)
    async def register_connector(request: Request, call: Call) -> Response:
        global_admin(call)
        assert call.identity is not None
        document = codecs.decode_json(await read_body(rt, request))
        # Compiling a large document takes a while (up to a second): off the loop the proxy serves on.
        connector = await asyncio.to_thread(rt.connectors.register, document, call.identity.sub)
        call.connector, call.action = connector.name, "register_connector"
        rt.record(call.record("allow", phase="connector_register", hosts=list(connector.hosts),
                              actions=[a.name for a in connector.actions], sha256=document_digest(document)))
        return JSONResponse(describe_connector(connector, API), status_code=201)

    @endpoint(rt, admin=True)
    async def delete_connector(request: Request, call: Call) -> dict[str, Any]:
        global_admin(call)
        connector = rt.connectors.unregister(request.path_params["name"])
        call.connector, call.action = connector.name, "delete_connector"
        rt.record(call.record("allow", phase="connector_delete", hosts=list(connector.hosts)))
        return {"deleted": connector.name}

    @endpoint(rt, admin=True, sessions=sessions)
    async def decisions(request: Request, call: Call) -> dict[str, Any]:
        assert call.identity is not None
        recent = await rt.decisions.latest()
        try:
            limit = min(max(int(request.query_params.get("limit", "100")), 1), len(recent) or 1)
        except ValueError:
            raise Refusal("bad_request", "limit must be an integer") from None
        admin, wanted = call.identity, record_filter(request, DECISION_FILTERS)
        visible = [rec for rec in recent if admin.administers(rec.get("tenant")) and wanted(rec)]
        return {"decisions": visible[-limit:]}

    @endpoint(rt, admin=True, sessions=sessions)
    async def approvals(request: Request, call: Call) -> dict[str, Any]:
        assert call.identity is not None
        admin, wanted = call.identity, record_filter(request, APPROVAL_FILTERS, extra=("state",))
        if request.query_params.get("state", "pending") not in ("pending", "all"):
            raise Refusal("bad_request", "state is pending (the default) or all")
        states = APPROVAL_STATES if request.query_params.get("state") == "all" else ("pending",)
        found = [a.public() for a in rt.approvals.list(states) if admin.administers(a.tenant)]
        shown = [a for a in found if wanted(a)]
        try:  # the latest `limit` (the console's history re-reads every few seconds)
            limit = int(request.query_params.get("limit", "0"))
        except ValueError:
            raise Refusal("bad_request", "limit must be an integer") from None
        return {"approvals": shown[-limit:] if limit > 0 else shown}

    @endpoint(rt, admin=True)
    async def register_tool(request: Request, call: Call) -> dict[str, Any]:
        global_admin(call)
        body = await read_body(rt, request, rt.config.sandbox.max_tool_body, "sandbox.max_tool_body")
        try:  # the proxy's strict JSON reader (duplicate keys, NaN, depth): a manifest means one thing
            reg = RegisterRequest.model_validate(codecs.decode_json(body))
        except ValidationError as e:
            raise Refusal("malformed_body", describe(e)) from None
        call.connector, call.action = "sandbox", "register_tool"
        tool = await rt.tools.register(reg)
        rt.record(call.record("allow", phase="tool_register", tool_name=tool.name, sha256=tool.manifest.sha256,
                              kind=tool.manifest.kind))
        return {"name": tool.name, "kind": tool.manifest.kind, "sha256": tool.manifest.sha256}

    @endpoint(rt, admin=True)
    async def mcp_pins(request: Request, call: Call) -> dict[str, Any]:
        global_admin(call)
        only_params(request, ("server",))
        return {"pins": [p.as_dict() for p in rt.mcp.pins(request.query_params.get("server"))]}

    @endpoint(rt, admin=True)
    async def mcp_accept(request: Request, call: Call) -> dict[str, Any]:
        """An admin accepts a tool's changed definition: pinned, shown and callable again."""
        global_admin(call)  # a server's tools serve every tenant
        server, tool = request.path_params["server"], request.path_params["tool"]
        if rt.registry.mcp_server(server) is None:
            raise Refusal("not_found", "no MCP server of that name")
        pin = rt.mcp.accept(server, tool)
        if pin is None:
            raise Refusal("conflict", "that tool has no changed definition waiting to be accepted")
        call.connector, call.action = server, pin.tool
        rt.record(call.record("allow", phase="mcp_accept", definition=pin.pinned))
        return pin.as_dict()

    def decide_approval(verb: str) -> Handler:
        @endpoint(rt, admin=True, sessions=sessions)
        async def handler(request: Request, call: Call) -> dict[str, Any]:
            assert call.identity is not None
            approval_id = request.path_params["id"]
            found = rt.approvals.get(approval_id)
            if found is None or not call.identity.administers(found.tenant):
                raise Refusal("not_found", "no such approval in this admin's tenant")
            reason = await decision_reason(rt, request)
            try:
                decide = rt.approvals.approve if verb == "approve" else rt.approvals.deny
                decided = decide(approval_id, call.identity.sub, reason)
            except ApprovalError as e:
                raise Refusal("conflict", str(e)) from None
            # The approver's words go to the agent through the approval, not into the audit log.
            rt.record(call.record(verb, phase="approval", approval_id=approval_id, reason_given=reason is not None))
            return decided.public()

        return handler

    return [
        Route("/metrics", metrics),
        Route("/v1/connectors", connectors, methods=["GET"]),
        Route("/v1/connectors", register_connector, methods=["POST"]),
        Route("/v1/connectors/{name}", delete_connector, methods=["DELETE"]),
        Route("/v1/decisions", decisions, methods=["GET"]),
        Route("/v1/tools", register_tool, methods=["POST"]),
        Route("/v1/approvals", approvals, methods=["GET"]),
        Route("/v1/approvals/{id}/approve", decide_approval("approve"), methods=["POST"]),
        Route("/v1/approvals/{id}/deny", decide_approval("deny"), methods=["POST"]),
        Route("/v1/mcp/pins", mcp_pins, methods=["GET"]),
        Route("/v1/mcp/{server}/tools/{tool}/accept", mcp_accept, methods=["POST"]),
    ]


APPROVAL_FILTERS = ("sub", "tenant", "connector", "action")
APPROVAL_STATES = ("pending", "approved", "denied", "expired", "used")
MAX_REASON = 500


async def decision_reason(rt: Runtime, request: Request) -> str | None:
    """The approver's optional `{"reason": "..."}` (plain text, at most 500 characters)."""
    body = await read_body(rt, request)
    if not body.strip():
        return None
    payload = codecs.decode_json(body)
    reason = payload.get("reason")
    if set(payload) - {"reason"} or not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON:
        raise Refusal("schema_violation", f'send {{"reason": "..."}}, at most {MAX_REASON} characters')
    return reason


def describe_connector(c: Connector, origin: str | None) -> dict[str, Any]:
    return {
        "name": c.name,
        "origin": origin,
        "hosts": list(c.hosts),
        "actions": [{"name": a.name, "method": a.method, "path": a.path, "encoding": a.encoding.value} for a in c.actions],
    }
