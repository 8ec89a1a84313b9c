"""`GET /v1/agents`: which agents called recently (with their baseline, anomaly score and
quarantine when `anomaly:` is on), and `POST /v1/agents/{sub}/revoke`.

The view is built from the recent decisions the gateway keeps in memory (`Runtime.recent` through `recent_decisions`, the
same records `GET /v1/decisions` shows): one row per agent (sub and tenant) with its role, when it
was last seen, how many calls it made and how many of them were refused. Only records of calls
through the proxy count (`phase: decision`); an admin's own API use is not an agent's call.

Revoking: a global admin revokes the sub, every token of it issued so far (the revocation store's
`--sub`). Subs are not namespaced by tenant in that store, so a tenant admin revoking by sub would
also cut off a namesake agent of another tenant; a tenant admin therefore revokes the tokens
(jtis) its tenant saw that sub use, which reaches exactly its own tenant.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.api.endpoint import endpoint, only_params, recent_decisions, unix_seconds
from gateway.api.sessions import Sessions
from gateway.errors import Refusal
from gateway.identity.tokens import ALL_TENANTS, Identity
from gateway.pipeline.call import Call
from gateway.runtime import Runtime

RECENT_AGENTS = 86400.0  # agents a baseline knows are listed when seen within this (or `?since=`)


def recent_agents(records: Iterable[dict[str, Any]], admin: Identity) -> list[dict[str, Any]]:
    """One row per (sub, tenant) seen in `records` that `admin` administers, latest first."""
    rows: dict[tuple[str, str | None], dict[str, Any]] = {}
    for rec in records:
        if rec.get("phase") != "decision" or not rec.get("sub") or not admin.administers(rec.get("tenant")):
            continue
        key = (str(rec["sub"]), rec.get("tenant"))
        row = rows.setdefault(key, {"sub": key[0], "tenant": key[1], "role": rec.get("role"), "last_seen": 0.0,
                                    "calls": 0, "denials": 0, "jtis": set()})
        row["calls"] += 1
        row["denials"] += rec.get("decision") == "deny"
        if rec.get("jti"):
            row["jtis"].add(rec["jti"])
        when = float(rec.get("time") or 0.0)
        if when >= row["last_seen"]:
            row["last_seen"], row["role"] = when, rec.get("role")
    ordered = sorted(rows.values(), key=lambda r: -r["last_seen"])
    return [{k: v for k, v in row.items() if k != "jtis"} | {"tokens": len(row["jtis"])} for row in ordered]


def agent_routes(rt: Runtime, sessions: Sessions) -> list[Route]:

    @endpoint(rt, admin=True, sessions=sessions)
    async def agents(request: Request, call: Call) -> dict[str, Any]:
        assert call.identity is not None
        only_params(request, ("since",))
        since = unix_seconds(request.query_params["since"]) if "since" in request.query_params else time.time() - RECENT_AGENTS
        rows = with_baselines(rt, recent_agents(await recent_decisions(rt), call.identity), call.identity, since)
        return {"agents": rows, "anomaly": rt.baselines is not None}

    @endpoint(rt, admin=True, sessions=sessions)
    async def revoke(request: Request, call: Call) -> dict[str, Any]:
        admin = call.identity
        assert admin is not None
        sub = request.path_params["sub"]
        seen = [rec for rec in await recent_decisions(rt) if rec.get("sub") == sub and rec.get("phase") == "decision"
                and admin.administers(rec.get("tenant"))]
        if not seen:
            raise Refusal("not_found", "no agent of that sub among the recent decisions in this admin's tenant")
        try:
            revoked = await revoke_seen(rt, admin, sub, seen)
        except sqlite3.Error:
            raise Refusal("store_unavailable", "the revocation store cannot be written; nothing was revoked") from None
        rt.record(call.record("allow", phase="revoke", revoked_sub=sub, tokens=revoked.get("tokens")))
        return {"revoked": revoked}

    return [
        Route("/v1/agents", agents, methods=["GET"]),
        # `path`: a sub may hold "/" (an OIDC subject such as repo:org/repo:ref:...), which the
        # console sends percent-encoded and the server decodes before routing.
        Route("/v1/agents/{sub:path}/revoke", revoke, methods=["POST"]),
    ]


def with_baselines(rt: Runtime, rows: list[dict[str, Any]], admin: Identity, since: float) -> list[dict[str, Any]]:
    """The recent agents, each with whether it is quarantined and, with `anomaly:`, its behaviour
    baseline and anomaly score; agents a baseline knows but the recent decisions no longer show are
    listed too (from their baseline alone)."""
    now = time.time()
    by_key = {f"{row['tenant'] or ''}/{row['sub']}": row for row in rows}
    for key, row in by_key.items():
        row["agent"] = key
    if rt.baselines is not None:
        for profile in rt.baselines.agents(since):
            tenant = profile.key.partition("/")[0] or None
            if not admin.administers(tenant):
                continue
            seen = profile.public(now)
            row = by_key.setdefault(profile.key, {"sub": None, "tenant": tenant})
            row.update({k: v for k, v in seen.items() if k != "last_seen" or "last_seen" not in row})
    for row in by_key.values():
        name = row["agent"].partition("/")[2]
        hit = None if name.startswith("@") else rt.quarantine.hit(name, row["tenant"])
        row["quarantined"] = hit is not None
    return sorted(by_key.values(), key=lambda r: -float(r.get("last_seen") or 0.0))


async def revoke_seen(rt: Runtime, admin: Identity, sub: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Revoke `sub` as far as `admin` reaches: the sub for a global admin, else the tokens seen."""
    if admin.tenant == ALL_TENANTS:
        await asyncio.to_thread(rt.revocations.revoke, sub=sub)
        return {"sub": sub}
    jtis = sorted({str(rec["jti"]) for rec in seen if rec.get("jti")})
    for jti in jtis:
        await asyncio.to_thread(rt.revocations.revoke, jti=jti)
    return {"sub": sub, "tokens": len(jtis)}
