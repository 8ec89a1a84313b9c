"""A circuit breaker per upstream host.

After `failures` consecutive failures (connection errors, TLS errors, timeouts, 5xx) the circuit
opens and calls are refused at once with `circuit_open`, without dialing. After `reset` seconds one
probe call is let through (half-open); its success closes the circuit, its failure re-opens it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.errors import Refusal


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


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
        waited = time.monotonic() - st.opened_at
        if waited < self._reset or st.probing:
            retry = max(1, int(self._reset - waited + 0.999))
            raise Refusal(
                "circuit_open",
                f"{key} failed {st.failures} times in a row; the circuit is open",
                headers={"Retry-After": str(retry)},
            )
        st.probing = True

    def success(self, key: str) -> None:
        self._states.pop(key, None)

    def failure(self, key: str) -> None:
        st = self._states.setdefault(key, _State())
        st.failures += 1
        if st.probing or st.failures >= self._threshold:
            st.opened_at = time.monotonic()
            st.probing = False

    def state(self, key: str) -> str:
        st = self._states.get(key)
        if st is None or st.opened_at is None:
            return "closed"
        return "half-open" if st.probing else "open"
