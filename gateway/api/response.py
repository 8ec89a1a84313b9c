"""The admin API of seeing and stopping: `POST /v1/quarantine` (the kill switch), `GET
/v1/quarantine`, and an agent's baseline (`GET /v1/agents/{agent}/baseline`, `POST
.../reset|ratify`); the agents list itself is `gateway.api.agents`.

A tenant's admin quarantines and releases its own tenant and reads its own agents; a sub, a
connector and the whole gateway reach every tenant, so they need a global admin (tenant `*`).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.routing import Route

from connectors import codecs
from gateway.api.endpoint import endpoint, global_admin, only_params, read_body
from gateway.api.sessions import Sessions
from gateway.errors import Refusal, describe
from gateway.identity.quarantine import EVERYTHING, MAX_REASON
from gateway.pipeline.call import Call
from gateway.runtime import Runtime


class QuarantineRequest(BaseModel):
    """The CLI's flags as JSON: exactly one of sub, tenant, connector, all. Strict: lax mode read
    `"all": "yes"` (or 1) as true, and a string must never stop the whole gateway."""

    model_config = ConfigDict(extra="forbid", strict=True)
    sub: str | None = Field(default=None, min_length=1, max_length=256)
    tenant: str | None = Field(default=None, min_length=1, max_length=256)
    connector: str | None = Field(default=None, min_length=1, max_length=256)
    all: bool = False
    release: bool = False
    reason: str = Field(min_length=1, max_length=MAX_REASON)

    @model_validator(mode="after")
    def _one_scope(self) -> QuarantineRequest:
        if sum((self.sub is not None, self.tenant is not None, self.connector is not None, self.all)) != 1:
            raise ValueError("name exactly one of sub, tenant, connector, all")
        return self

    def target(self) -> tuple[str, str]:
        if self.all:
            return "all", EVERYTHING
        return next((s, v) for s, v in (("sub", self.sub), ("tenant", self.tenant), ("connector", self.connector)) if v)


def response_routes(rt: Runtime, sessions: Sessions) -> list[Route]:
    """The console calls these with its session (quarantine and release from the Agents page)."""

    @endpoint(rt, admin=True, sessions=sessions)
    async def quarantine(request: Request, call: Call) -> dict[str, Any]:
        assert call.identity is not None
        # The proxy's JSON reader, as every endpoint's: an undecodable body (or a duplicate key) is
        # malformed_body; a decoded one that does not fit the request is schema_violation.
        payload = codecs.decode_json(await read_body(rt, request))
        try:
            req = QuarantineRequest.model_validate(payload)
        except ValidationError as e:
            raise Refusal("schema_violation", describe(e)) from None
        scope, value = req.target()
        if scope != "tenant" or not call.identity.administers(value):
            global_admin(call)
        changes = rt.quarantine.set(scope, value, release=req.release, reason=req.reason, by=f"api:{call.identity.sub}")
        for change in changes:
            rt.quarantine_changed(change)
        return changes[-1].public()

    @endpoint(rt, admin=True, sessions=sessions)
    async def quarantines(request: Request, call: Call) -> dict[str, Any]:
        assert call.identity is not None
        only_params(request)
        admin = call.identity
        visible = [c.public() for c in rt.quarantine.active() if c.scope != "tenant" or admin.administers(c.value)]
        return {"quarantines": visible}

    def baseline_key(request: Request, call: Call) -> str:
        assert call.identity is not None
        tenant = request.query_params.get("tenant")
        if set(request.query_params) - {"tenant"}:
            raise Refusal("bad_request", "the only parameter is tenant")
        if not call.identity.administers(tenant):
            raise Refusal("not_found", "no such agent in this admin's tenant")
        return f"{tenant or ''}/{request.path_params['agent']}"

    @endpoint(rt, admin=True, sessions=sessions)
    async def baseline(request: Request, call: Call) -> dict[str, Any]:
        key = baseline_key(request, call)
        found = rt.baselines.get(key) if rt.baselines is not None else None
        if found is None:
            raise Refusal("not_found", "no baseline for this agent")
        return found.public(time.time())

    def change_baseline(verb: str) -> Any:
        @endpoint(rt, admin=True, sessions=sessions)
        async def handler(request: Request, call: Call) -> dict[str, Any]:
            key = baseline_key(request, call)
            if rt.baselines is None or not rt.baselines.apply(key, verb):
                raise Refusal("not_found", "no baseline for this agent")
            assert call.identity is not None
            rt.record(call.record(verb, phase="baseline", agent=key, by=f"api:{call.identity.sub}"))
            return {"agent": key, verb: True}

        return handler

    return [
        Route("/v1/quarantine", quarantine, methods=["POST"]),
        Route("/v1/quarantine", quarantines, methods=["GET"]),
        Route("/v1/agents/{agent}/baseline", baseline, methods=["GET"]),
        Route("/v1/agents/{agent}/baseline/reset", change_baseline("reset"), methods=["POST"]),
        Route("/v1/agents/{agent}/baseline/ratify", change_baseline("ratify"), methods=["POST"]),
    ]
