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
cost a fixed amount of storage and one admin cannot sign the others out. The sessions are kept
where every process of the gateway reads them (`gateway.stores.sessions`), ids only hashed.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import ConsoleSettings
from gateway.errors import Refusal, StoreUnavailable
from gateway.identity.tokens import Identity, Verifier
from gateway.stores.sessions import SessionStore, StoredSession, hash_id

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
    """The live sessions of a gateway, kept in a `SessionStore` every process of it shares (the
    state dir's SQLite file, or the fleet's Redis), so a browser signed in through one worker or
    replica is signed in on all of them, and signing out on one ends it everywhere."""

    def __init__(
        self, settings: ConsoleSettings, verifier: Verifier, store: SessionStore, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._store = store
        self._clock = clock

    def start(self, identity: Identity) -> Session:
        """A new session for a verified admin identity."""
        now = self._clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            identity=identity,
            created_at=now,
            expires_at=min(identity.exp, now + self._settings.session_ttl),
        )
        stored = StoredSession(session.csrf, identity, session.created_at, session.expires_at)
        if not self._store.put(hash_id(session.id), stored, now, self._settings.sessions_per_admin, self._settings.max_sessions):
            raise Refusal("rate_limited", "too many console sessions are open; try again later",
                          headers={"Retry-After": "60"})
        return session

    def resume(self, session_id: str | None) -> Session:
        """The live session behind a cookie; refused when there is none, it expired, or its token
        expired or was revoked since (the session is then forgotten). Raises `StoreUnavailable`
        when the store cannot be read."""
        if not session_id:
            raise Refusal("identity_expired", "the console session has ended; sign in again")
        stored = self._store.get(hash_id(session_id), self._clock())
        if stored is None:
            raise Refusal("identity_expired", "the console session has ended; sign in again")
        session = Session(session_id, stored.csrf, stored.identity, stored.created_at, stored.expires_at)
        try:
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
        """For long-lived streams: whether the session still stands (checked every second); a
        store that cannot say ends the stream (fail closed)."""
        try:
            self.resume(session_id)
        except (Refusal, StoreUnavailable):
            return False
        return True

    def end(self, session_id: str) -> None:
        self._store.delete(hash_id(session_id))
