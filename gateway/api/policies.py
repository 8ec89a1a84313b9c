"""`GET /v1/policies`: the loaded policy version and its rules, the shadow-mode report, reload errors.

An admin sees the files that can apply in its tenant (a file of another tenant is that tenant's
business) and the would-deny counts of its tenant's agents. The shadow report is the one
`egress-gateway policy report` prints (`gateway.policy.report`), kept current by following the
audit log: each request reads only what was appended since the last one, so a long log is read
once, not per page view, and a rotated or replaced log is read again from its start.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.api.endpoint import endpoint, only_params
from gateway.api.sessions import Sessions
from gateway.identity.tokens import Identity
from gateway.pipeline.call import Call
from gateway.policy.engine import LoadedFile
from gateway.policy.report import Tally
from gateway.runtime import Runtime

READ_CHUNK = 4 * 2**20  # bytes of the audit log read at a time while catching up


class ShadowFollower:
    """Would-deny counts per tenant, from the audit log, read incrementally."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, inode: int | None) -> None:
        self._inode, self._offset = inode, 0
        self._tallies: dict[str | None, Tally] = {}
        self.records = self.skipped = 0

    def catch_up(self) -> None:
        """Count what was appended since the last call (whole lines only; a torn tail waits)."""
        with self._lock:
            try:
                st = self._path.stat()
            except FileNotFoundError:
                return
            if st.st_ino != self._inode or st.st_size < self._offset:
                self._reset(st.st_ino)
            with self._path.open("rb") as f:
                f.seek(self._offset)
                while chunk := f.read(READ_CHUNK):
                    whole = chunk[: chunk.rfind(b"\n") + 1]
                    if not whole:
                        break
                    self._offset += len(whole)
                    f.seek(self._offset)
                    for line in whole.splitlines():
                        self._add(line)

    def _add(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            rec = json.loads(line)
        except ValueError:
            self.skipped += 1
            return
        if not isinstance(rec, dict):
            self.skipped += 1
            return
        self.records += 1
        tenant = rec.get("tenant")
        self._tallies.setdefault(tenant if isinstance(tenant, str) else None, Tally()).add(rec)

    def rows(self, admin: Identity) -> list[dict[str, Any]]:
        with self._lock:
            rows = [
                {"tenant": tenant, **row.__dict__}
                for tenant, tally in self._tallies.items()
                if admin.administers(tenant)
                for row in tally.rows()
            ]
        return sorted(rows, key=lambda r: (-r["count"], r["sub"], r["rule"]))


def describe_file(f: LoadedFile) -> dict[str, Any]:
    """One policy file as the console shows it: its subjects, mode and every rule with its id."""
    p = f.policy
    rules = []
    for i, rule in enumerate(p.rules):
        rules.append({
            "id": rule.name or f"{f.name}#{i}",
            "line": f.rule_lines[i] if i < len(f.rule_lines) else None,
            "mode": rule.mode or p.mode,
            **rule.model_dump(mode="json", exclude_none=True, exclude_defaults=True, exclude={"name", "mode"}),
        })
    return {
        "file": f.name,
        "tenant": p.tenant,
        "subjects": p.subjects.model_dump(mode="json"),
        "mode": p.mode,
        "timezone": p.timezone,
        "rules": rules,
        "dlp": p.dlp.model_dump(mode="json") if p.dlp else None,
    }


def policy_routes(rt: Runtime, sessions: Sessions) -> list[Route]:
    follower = ShadowFollower(rt.state.audit_log)

    @endpoint(rt, admin=True, sessions=sessions)
    async def policies(request: Request, call: Call) -> dict[str, Any]:
        only_params(request)
        admin = call.identity
        assert admin is not None
        await asyncio.to_thread(follower.catch_up)
        shadow = {"rows": follower.rows(admin), "records": follower.records, "skipped": follower.skipped}
        store = rt.policies
        if store is None:
            return {"loaded": False, "version": None, "files": [], "shadow_report": shadow, "reload_error": None}
        current = store.current
        files = [f for f in current.files if f.policy.tenant is None or admin.administers(f.policy.tenant)]
        return {
            "loaded": True,
            "version": current.version,
            "rule_count": current.rule_count,
            "files": [describe_file(f) for f in files],
            "shadow_report": shadow,
            # The loader's reasons name files, lines and keys of the policy directory, never a value.
            "reload_error": store.last_error,
        }

    return [Route("/v1/policies", policies, methods=["GET"])]
