"""Human approvals: a SQLite store of pending, approved, denied, expired and used approvals.

Flow: a call whose policy says `approval_required` gets a 403 with an `approval_id` (an identical
call while one is pending gets the same id, so retries do not flood approvers). An approver runs
`egress-gateway approvals approve ID` (or the admin API). The agent retries the *identical* call with
`X-Egress-Approval: ID`; `consume` marks the approval used by that call (its decision id) in one
conditional UPDATE, so it is single-use even with many concurrent retries (SQLite serialises
writers; exactly one UPDATE sees the row still `approved`).

An approval is spent only by a call that is let out: when a later step refuses the call that used
it (its budget or rate, DLP, the circuit breaker), `release` gives it back, in one conditional
UPDATE that only the call that used it can make (`used_by`), so the agent retries with the same
approval once the refusal's cause is gone (a budget window turned), instead of asking a person
again. While one call holds it, no other can use it: never twice-usable.

An approval matches only the tenant, agent (sub), connector, action and parameters it was asked
for: they are bound by `request_digest`, a SHA-256 of their canonical JSON. Pending requests expire
`ttl` seconds (default 15 min) after they were made; an approval can be used for `ttl` seconds
after it was given. Expiry is applied lazily on every read and by the conditions of each update.

Approvers see `summary` (numbers and policy-listed values only, from the policy engine), `body`
(the parameters as the vendor will get them: PII tokenized, or masked where the policy would let a
value leave as it is; see `gateway.pipeline.dlp.Dlp.approver_view`) and the rule's reason, never a
raw value.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.fieldpath import PATH_PARAMS
from gateway.errors import ApprovalError, Refusal, StoreUnavailable
from gateway.policy.engine import Decision
from gateway.state import open_db, write_transaction

DEFAULT_TTL = 15 * 60.0
STATES = ("pending", "approved", "denied", "expired", "used")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    tenant TEXT,
    sub TEXT NOT NULL,
    connector TEXT NOT NULL,
    action TEXT NOT NULL,
    digest TEXT NOT NULL,
    summary TEXT NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decided_by TEXT,
    decided_at REAL,
    used_at REAL,
    decision_reason TEXT,
    body TEXT,
    used_by TEXT
);
CREATE INDEX IF NOT EXISTS approvals_digest ON approvals (digest, state);
"""


@dataclass(frozen=True)
class Approval:
    id: str
    tenant: str | None
    sub: str
    connector: str
    action: str
    digest: str
    summary: dict[str, Any]
    reason: str
    state: str
    created_at: float
    expires_at: float
    decided_by: str | None
    decided_at: float | None
    used_at: float | None
    decision_reason: str | None = None  # the approver's words, for the agent and the record
    body: dict[str, Any] | None = None  # the parameters, tokenized; None in a store made before bodies were kept
    used_by: str | None = None  # the decision id of the call that used it

    def public(self) -> dict[str, Any]:
        """The view for `GET /v1/approvals/{id}` and `approvals list --json`."""
        return {k: v for k, v in self.__dict__.items() if k != "digest"}


_APPROVAL_ID = re.compile(r"apr_[A-Za-z0-9_-]{16}")


def request_digest(tenant: str | None, sub: str, connector: str, action: str, params: Any) -> str:
    """What an approval is bound to: who, which action, and exactly which parameters."""
    canonical = json.dumps(
        {"tenant": tenant, "sub": sub, "connector": connector, "action": action, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class ApprovalStore:
    """The approvals table in one SQLite file (in the state directory); the fleet's store,
    `gateway.stores.redis_state.RedisApprovals`, replaces the storage methods (`request`, `get`,
    `list`, `_decide`, `consume`, `release`) and keeps the rest."""

    def __init__(
        self,
        path: Path,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
        on_new: Callable[[Approval], None] | None = None,
    ) -> None:
        self.path = path
        self.ttl = ttl
        self.on_new = on_new  # told of each approval created (the webhook), after it is stored
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_db(path)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(approvals)")}
        if "decision_reason" not in columns:  # a store made before approvers gave reasons
            self._db.execute("ALTER TABLE approvals ADD COLUMN decision_reason TEXT")
        if "body" not in columns:  # a store made before approvers saw the body
            self._db.execute("ALTER TABLE approvals ADD COLUMN body TEXT")
        if "used_by" not in columns:  # a store made before approvals were given back
            self._db.execute("ALTER TABLE approvals ADD COLUMN used_by TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction, taken immediately so concurrent writers queue instead of racing."""
        return write_transaction(self._db, self._lock)

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        db.execute(
            "UPDATE approvals SET state='expired' WHERE state IN ('pending','approved') AND expires_at <= ?",
            (now,),
        )

    def request(
        self,
        tenant: str | None,
        sub: str,
        connector: str,
        action: str,
        digest: str,
        summary: dict[str, Any],
        reason: str,
        max_pending: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> Approval | None:
        """The pending approval for this exact request, created if there is none; None when a new
        one would exceed the agent's `max_pending`. `body` must hold no raw value (tokenized)."""
        now = self._clock()
        with self._tx() as db:
            self._expire(db, now)
            row = db.execute(
                "SELECT * FROM approvals WHERE digest=? AND state='pending' ORDER BY created_at LIMIT 1",
                (digest,),
            ).fetchone()
            if row is not None:
                return _approval(row)
            if max_pending is not None:
                held = db.execute(
                    "SELECT COUNT(*) FROM approvals WHERE state='pending' AND tenant IS ? AND sub=?", (tenant, sub)
                ).fetchone()[0]
                if held >= max_pending:
                    return None
            new_id = "apr_" + secrets.token_urlsafe(12)
            db.execute(
                "INSERT INTO approvals (id, tenant, sub, connector, action, digest, summary, reason, "
                "state, created_at, expires_at, body) VALUES (?,?,?,?,?,?,?,?,'pending',?,?,?)",
                (new_id, tenant, sub, connector, action, digest, json.dumps(summary), reason, now, now + self.ttl,
                 None if body is None else json.dumps(body)),
            )
            row = db.execute("SELECT * FROM approvals WHERE id=?", (new_id,)).fetchone()
        created = _approval(row)
        if self.on_new is not None:
            self.on_new(created)
        return created

    def get(self, approval_id: str) -> Approval | None:
        with self._tx() as db:
            self._expire(db, self._clock())
            row = db.execute("SELECT * FROM approvals WHERE id=?", (approval_id,)).fetchone()
        return _approval(row) if row else None

    def list(self, states: Sequence[str] = ("pending",)) -> list[Approval]:
        """Approvals in the given states, oldest first."""
        marks = ",".join("?" * len(states))
        with self._tx() as db:
            self._expire(db, self._clock())
            rows = db.execute(
                f"SELECT * FROM approvals WHERE state IN ({marks}) ORDER BY created_at", tuple(states)
            ).fetchall()
        return [_approval(r) for r in rows]

    def approve(self, approval_id: str, by: str, reason: str | None = None) -> Approval:
        """Approve a pending request; it can then be used once, within `ttl` seconds."""
        return self._decide(approval_id, by, "approved", reason)

    def deny(self, approval_id: str, by: str, reason: str | None = None) -> Approval:
        return self._decide(approval_id, by, "denied", reason)

    def _decide(self, approval_id: str, by: str, state: str, reason: str | None) -> Approval:
        now = self._clock()
        with self._tx() as db:
            self._expire(db, now)
            changed = db.execute(
                "UPDATE approvals SET state=?, decided_by=?, decided_at=?, expires_at=?, decision_reason=? "
                "WHERE id=? AND state='pending'",
                (state, by, now, now + self.ttl, reason, approval_id),
            ).rowcount
            row = db.execute("SELECT * FROM approvals WHERE id=?", (approval_id,)).fetchone()
        if row is None:
            raise ApprovalError(f"no approval {approval_id}")
        if not changed:
            raise ApprovalError(f"approval {approval_id} is {row['state']}, not pending")
        return _approval(row)

    def consume(
        self, approval_id: str, tenant: str | None, sub: str, connector: str, action: str, digest: str, call_id: str,
    ) -> bool:
        """Use an approval for this exact request; True for exactly one caller, once (unless the
        call `call_id` gives it back: `release`)."""
        with self._tx() as db:
            changed = db.execute(
                "UPDATE approvals SET state='used', used_at=?, used_by=? WHERE id=? AND state='approved' "
                "AND expires_at > ? AND tenant IS ? AND sub=? AND connector=? AND action=? AND digest=?",
                (self._clock(), call_id, approval_id, self._clock(), tenant, sub, connector, action, digest),
            ).rowcount
        return changed == 1

    def release(self, approval_id: str, call_id: str) -> bool:
        """Give back the approval the call `call_id` used and that was then refused: `approved`
        again, until its expiry as before. True if it was given back; only that call can.
        `StoreUnavailable` if the store fails (the approval then stays used: the safe side)."""
        try:
            with self._tx() as db:
                changed = db.execute(
                    "UPDATE approvals SET state='approved', used_at=NULL, used_by=NULL "
                    "WHERE id=? AND state='used' AND used_by=?",
                    (approval_id, call_id),
                ).rowcount
        except sqlite3.Error as e:
            raise StoreUnavailable(f"the approval store is unavailable: {type(e).__name__}") from None
        return changed == 1

    def use(self, decision: Decision, params: Any, approval_id: str, call_id: str) -> bool:
        """Consume the approval the agent presents (`X-Egress-Approval`) for exactly this call
        (`call_id`, its decision id)."""
        s = decision.subject
        with self._failing_closed(decision):
            digest = request_digest(s.tenant, s.sub, decision.connector, decision.action, params)
            return self.consume(approval_id, s.tenant, s.sub, decision.connector, decision.action, digest, call_id)

    def hold(
        self, decision: Decision, params: Any, presented: str | None, max_pending: int, body: dict[str, Any] | None = None
    ) -> Refusal:
        """The refusal for a call that needs an approval it does not have: naming the pending
        approval to wait for (the same one for a retry of the same call), or, when the agent
        already holds `max_pending` others, a `rate_limited` refusal that creates none. `body` is
        what the approver is shown of the parameters, already tokenized."""
        s = decision.subject
        reason = decision.refusal.message if decision.refusal else "approval required"
        # What the approver sees: the policy's safe summary, and the object acted on (the path's
        # ids, held to an id's form by routing).
        summary = {**decision.approval_summary, **({PATH_PARAMS: params[PATH_PARAMS]} if PATH_PARAMS in params else {})}
        with self._failing_closed(decision):
            digest = request_digest(s.tenant, s.sub, decision.connector, decision.action, params)
            pending = self.request(
                s.tenant, s.sub, decision.connector, decision.action, digest, summary, reason, max_pending, body,
            )
            shown = self.get(presented) if presented and _APPROVAL_ID.fullmatch(presented) else None
        if pending is None:
            return Refusal(
                "rate_limited",
                f"this agent already has {max_pending} approvals pending; wait for them to be decided",
                connector=decision.connector, action=decision.action, headers={"Retry-After": "60"},
            )
        mine = shown if shown is not None and shown.digest == digest else None
        details: dict[str, object] = {"approval_id": pending.id}
        if mine is not None and mine.decision_reason:
            details["approver_reason"] = mine.decision_reason  # for the agent; the audit keeps messages only
        return Refusal(
            "approval_required",
            f"{reason}{_presented(mine, presented)}; waiting for approval {pending.id}",
            connector=decision.connector,
            action=decision.action,
            details=details,
        )

    @staticmethod
    @contextmanager
    def _failing_closed(decision: Decision) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, StoreUnavailable):  # SQLite here, Redis in gateway.stores.redis_state
            raise Refusal(
                "store_unavailable", "the approval store is unavailable", connector=decision.connector,
                action=decision.action,
            ) from None


def _presented(mine: Approval | None, presented: str | None) -> str:
    """What became of the approval the agent sent, in words it can act on. Only an approval of
    this very call is named: anything else the agent put in the header is never repeated (it would
    reach the audit log), and another agent's approval reads as unknown."""
    if not presented:
        return ""
    if mine is None:
        return "; the approval presented is not valid for this call: unknown, or for another call"
    if mine.state == "pending":
        return f"; approval {mine.id} is still pending"
    return f"; approval {mine.id} is not valid for this call: {mine.state}"


def _approval(row: sqlite3.Row) -> Approval:
    d = dict(row)
    d["summary"] = json.loads(d["summary"])
    d["body"] = None if d.get("body") is None else json.loads(d["body"])
    return Approval(**d)
