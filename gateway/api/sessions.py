"""Console sessions: an admin token pasted once, exchanged for a cookie the browser cannot read.

Why a server-side session rather than the token in the browser: anything JavaScript can read (local
storage, a URL, a readable cookie) is one XSS away from leaving; an HttpOnly cookie holding a
random session id is not. The session is only as strong as the token it was made from: it keeps
that token's verified `Identity`, checks the token's expiry and revocation on every use
(`Verifier.check`), and ends at the token's `exp` or after `console.session_ttl`, whichever comes
first. So a session never outlives or outranks the token behind it.

Every request made with the cookie must also carry the session's CSRF token in `X-CSRF-Token`
(compared in constant time). A page on another site can neither read that token nor set the header
without a CORS preflight the API never answers, and SameSite=Strict keeps the browser from sending
the cookie from another site at all: two independent reasons a forged request fails.

Bounded: at most `sessions_per_admin` per admin (sub and tenant; the oldest ends for a new one) and
`max_sessions` in all (a new sign-in past it is refused until some expire), so repeated sign-ins
cost a fixed amount of memory and one admin cannot sign the others out.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import ConsoleSettings
from gateway.errors import Refusal
from gateway.identity.tokens import Identity, Verifier

COOKIE = "egress_console"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    identity: Identity
    created_at: float
    expires_at: float

    def public(self) -> dict[str, object]:
        """What the console's script may know: who it is, until when, and the CSRF token."""
        return {"sub": self.identity.sub, "tenant": self.identity.tenant, "csrf": self.csrf, "expires_at": self.expires_at}


class Sessions:
    """The live sessions of one gateway process, in memory (a restart signs everyone out)."""

    def __init__(self, settings: ConsoleSettings, verifier: Verifier, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._verifier = verifier
        self._clock = clock
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def start(self, identity: Identity) -> Session:
        """A new session for a verified admin identity."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            mine = sorted(
                (s for s in self._by_id.values() if (s.identity.sub, s.identity.tenant) == (identity.sub, identity.tenant)),
                key=lambda s: s.created_at,
            )
            for old in mine[: max(0, len(mine) - self._settings.sessions_per_admin + 1)]:
                del self._by_id[old.id]
            if len(self._by_id) >= self._settings.max_sessions:
                raise Refusal("rate_limited", "too many console sessions are open; try again later",
                              headers={"Retry-After": "60"})
            session = Session(
                id=secrets.token_urlsafe(32),
                csrf=secrets.token_urlsafe(32),
                identity=identity,
                created_at=now,
                expires_at=min(identity.exp, now + self._settings.session_ttl),
            )
            self._by_id[session.id] = session
        return session

    def resume(self, session_id: str | None) -> Session:
        """The live session behind a cookie; refused when there is none, it expired, or its token
        expired or was revoked since (the session is then forgotten)."""
        session = self._by_id.get(session_id or "")
        if session is None:
            raise Refusal("identity_expired", "the console session has ended; sign in again")
        try:
            if self._clock() >= session.expires_at:
                raise Refusal("identity_expired", "the console session has expired; sign in again")
            self._verifier.check(session.identity)
        except Refusal:
            self.end(session.id)
            raise
        return session

    def verify(self, session_id: str | None, csrf: str | None) -> Session:
        """`resume`, then the CSRF token the request carries must be the session's."""
        session = self.resume(session_id)
        if not csrf or not hmac.compare_digest(csrf.encode(), session.csrf.encode()):
            raise Refusal("csrf_failed", f"a console request must carry the session's {CSRF_HEADER} header")
        return session

    def alive(self, session_id: str) -> bool:
        """For long-lived streams: whether the session still stands (checked every second)."""
        try:
            self.resume(session_id)
        except Refusal:
            return False
        return True

    def end(self, session_id: str) -> None:
        with self._lock:
            self._by_id.pop(session_id, None)

    def _prune(self, now: float) -> None:
        for sid in [sid for sid, s in self._by_id.items() if s.expires_at <= now]:
            del self._by_id[sid]
