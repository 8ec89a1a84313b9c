"""Unauthenticated refusals are aggregated per source, so no one can fill the audit log without a token.

Each refusal is one ~500-byte audit record; a client with no token (or a garbage one) could send
thousands a second and fill the disk, which stops every authenticated call (a call that cannot be
audited is refused). So the records of refusals because *no token verified* (the `identity_*`
codes) are rate-limited by `admit`:

- per source (the client address in the record's `client`; records without one share a source),
  the first such record of an `interval` is written as it is, and the others of that interval are
  counted, not written;
- once the interval is over, the count is written as one record (`phase: "suppressed"`, the
  `client`, and `suppressed: {"count", "codes", "first", "last"}`), at the next record of any kind
  or when the log closes. So one source costs at most two records per interval;
- across all sources, at most `max_sources` are tracked in one interval (an attacker changing
  addresses); the rest share one source, `*`, so the records written stay bounded by
  (`max_sources` + 1) per interval whatever the number of addresses.

A record with an identity (`sub` set), or with any other code, is never held back or changed. Counting is exact, so the metrics and the summaries together account
for every refusal.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OVERFLOW = "*"
UNKNOWN = "unknown"


@dataclass
class _Window:
    """One source's current interval: when it started and what was held back in it."""

    started: float
    count: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    first: float | None = None
    last: float | None = None

    def hold(self, rec: dict[str, Any], now: float) -> None:
        self.count += 1
        self.codes[str(rec.get("code"))] += 1
        self.first = now if self.first is None else self.first
        self.last = now

    def summary(self) -> dict[str, Any]:
        return {"count": self.count, "codes": dict(sorted(self.codes.items())), "first": self.first, "last": self.last}


# The refusals of a token that does not verify: missing, invalid, expired or revoked. Other codes
# can come with no identity in the record yet concern a verified caller (`admin_required`).
IDENTITY_CODES = frozenset({"identity_missing", "identity_invalid", "identity_expired", "identity_revoked"})


def unauthenticated(rec: dict[str, Any]) -> bool:
    """A refusal because no token verified: the only kind that may be aggregated."""
    return rec.get("code") in IDENTITY_CODES and rec.get("sub") is None and rec.get("jti") is None


@dataclass
class UnauthenticatedNoise:
    """Decides which audit records to write; see the module docstring."""

    interval: float = 1.0
    max_sources: int = 1000
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _windows: dict[str, _Window] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        """The records to write for `rec`, in order: summaries of quiet sources, then `rec` if it
        is not held back."""
        with self._lock:
            now = self.clock()
            out = self._expire(now)
            if not unauthenticated(rec):
                return [*out, rec]
            source = self._source(rec)
            window = self._windows.get(source)  # a live one: `_expire` removed the source's old one
            if window is not None:
                window.hold(rec, self.wall())
                return out
            self._windows[source] = _Window(now)
            return [*out, rec]

    def flush(self) -> list[dict[str, Any]]:
        """Summaries of everything still held back (at shutdown)."""
        with self._lock:
            out = [self._summary(source, w) for source, w in self._windows.items() if w.count]
            self._windows.clear()
            return out

    def _source(self, rec: dict[str, Any]) -> str:
        source = str(rec.get("client") or UNKNOWN)
        if source in self._windows or len(self._windows) < self.max_sources:
            return source
        return OVERFLOW

    def _expire(self, now: float) -> list[dict[str, Any]]:
        """Drop windows past their interval, summarising those that held records back. Windows are
        kept in the order they started, so the scan stops at the first live one."""
        out: list[dict[str, Any]] = []
        while self._windows:
            source, window = next(iter(self._windows.items()))
            if now - window.started < self.interval:
                break
            del self._windows[source]
            if window.count:
                out.append(self._summary(source, window))
        return out

    def _summary(self, source: str, window: _Window) -> dict[str, Any]:
        """A record shaped like the others (a decision id of its own, the same keys), so every reader
        that looks records up by id or code keeps working."""
        return {
            "decision_id": "dec_" + uuid.uuid4().hex,
            "time": round(self.wall(), 6),
            "phase": "suppressed",
            "decision": "deny",
            "code": None,
            "message": f"{window.count} refusals without a valid token from this client, aggregated",
            "client": source,
            **dict.fromkeys(("sub", "tenant", "role", "jti", "connector", "action", "host", "method", "path")),
            "suppressed": window.summary(),
        }
