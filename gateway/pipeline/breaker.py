"""A circuit breaker per upstream host.

After `failures` consecutive failures (connection errors, TLS errors, timeouts, 5xx) the circuit
opens and calls are refused at once with `circuit_open`, without dialing. After `reset` seconds one
probe call is let through (half-open); its success closes the circuit, its failure re-opens it.
A probe that never reports (refused after `check`, e.g. because its audit record could not be
written) must not hold the circuit open forever: after another `reset` seconds a new probe may go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.errors import Refusal


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    probe_at: float | None = None  # when the half-open probe was let through


class Breaker:
    def __init__(self, failures: int, reset: float):
        self._threshold = failures
        self._reset = reset
        self._states: dict[str, _State] = {}

    def check(self, key: str) -> None:
        """Refuse if the circuit for `key` is open; let exactly one probe through when it may close."""
        st = self._states.get(key)
        if st is None or st.opened_at is None:
            return
        now = time.monotonic()
        waited = now - st.opened_at
        probing = st.probe_at is not None and now - st.probe_at < self._reset
        if waited < self._reset or probing:
            retry = max(1, int(self._reset - waited + 0.999))
            raise Refusal(
                "circuit_open",
                f"{key} failed {st.failures} times in a row; the circuit is open",
                headers={"Retry-After": str(retry)},
            )
        st.probe_at = now

    def success(self, key: str) -> None:
        self._states.pop(key, None)

    def release(self, key: str) -> None:
        """A call whose outcome says nothing about the vendor (the agent hung up): if it was the
        half-open probe, the next call may probe at once; counts are left as they were."""
        st = self._states.get(key)
        if st is not None:
            st.probe_at = None

    def failure(self, key: str) -> None:
        st = self._states.setdefault(key, _State())
        st.failures += 1
        if st.probe_at is not None or st.failures >= self._threshold:
            st.opened_at = time.monotonic()
            st.probe_at = None

    def state(self, key: str) -> str:
        st = self._states.get(key)
        if st is None or st.opened_at is None:
            return "closed"
        return "half-open" if st.probe_at is not None else "open"
