"""Circuit breakers per upstream host: one shared by every agent, and one per agent.

After `failures` consecutive failures (connection errors, TLS errors, timeouts, 5xx) a circuit
opens and calls are refused at once with `circuit_open`, without dialing. After `reset` seconds one
probe call is let through (half-open); its success closes the circuit, its failure re-opens it.
A probe that never reports (refused after `check`, e.g. because its audit record could not be
written) must not hold the circuit open forever: after another `reset` seconds a new probe may go.

One agent must not open the circuit for everyone: an agent can provoke failures by what it sends
(calls that run past the read timeout, inputs the vendor chokes on). So the shared circuit opens
only when the failing streak spans at least `agents` distinct agents; an agent's own streak opens
its own circuit, which throttles that agent alone.

Only the vendor's failures count (`blames_vendor`): no connection, a TLS failure, a timeout, a reset
or broken HTTP, a 5xx, a compressed answer that does not decode. The gateway's refusal of an answer
the vendor gave correctly (over `max_response_body`, raw or decoded; an informational or 101
status; trailers; an encoding it does not decode; its own failure to scrub) is not the vendor's:
an agent asking for a huge page must not open the circuit for every agent. Such an outcome, like
the agent hanging up, is neutral (`release`): it neither counts nor clears a streak, since a
success would let an agent reset everyone's streak by interleaving it with real failures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.errors import Refusal

VENDOR_FAULTS = frozenset({"upstream_failed", "upstream_tls", "upstream_timeout"})


def blames_vendor(refusal: Refusal) -> bool:
    """Whether a refused forwarded call counts as the vendor's failure (see the module docstring)."""
    return refusal.code in VENDOR_FAULTS and not refusal.gateway_side


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    probe_at: float | None = None  # when the half-open probe was let through
    agents: set[str | None] = field(default_factory=set)  # who failed in this streak


class Breaker:
    def __init__(self, failures: int, reset: float, agents: int = 2):
        self._threshold = failures
        self._reset = reset
        self._agents = agents
        self._shared: dict[str, _State] = {}
        self._own: dict[tuple[str, str | None], _State] = {}

    def check(self, key: str, agent: str | None = None) -> None:
        """Refuse if the shared circuit for `key`, or the agent's own, is open; when one may close,
        let exactly one probe through."""
        self._check(key, self._shared.get(key), "")
        self._check(key, self._own.get((key, agent)), " for this agent")

    def success(self, key: str, agent: str | None = None) -> None:
        self._shared.pop(key, None)
        self._own.pop((key, agent), None)

    def release(self, key: str, agent: str | None = None) -> None:
        """A call whose outcome says nothing about the vendor (the agent hung up, the gateway refused
        a well-formed answer): if it was a half-open probe, the next call may probe at once; counts
        are left as they were."""
        for st in (self._shared.get(key), self._own.get((key, agent))):
            if st is not None:
                st.probe_at = None

    def failure(self, key: str, agent: str | None = None) -> None:
        shared = self._shared.setdefault(key, _State())
        shared.agents.add(agent)
        self._fail(shared, len(shared.agents) >= self._agents)
        self._fail(self._own.setdefault((key, agent), _State()), True)

    def open_circuits(self) -> int:
        """Circuits open now, shared and per agent (a gauge for operators)."""
        return sum(st.opened_at is not None for st in (*self._shared.values(), *self._own.values()))

    def state(self, key: str, agent: str | None = None) -> str:
        """The circuit that refuses this agent: the shared one if it is not closed, else its own."""
        for st in (self._shared.get(key), self._own.get((key, agent))):
            if st is not None and st.opened_at is not None:
                return "half-open" if st.probe_at is not None else "open"
        return "closed"

    def _fail(self, st: _State, may_open: bool) -> None:
        st.failures += 1
        if st.probe_at is not None or (may_open and st.failures >= self._threshold):
            st.opened_at = time.monotonic()
            st.probe_at = None

    def _check(self, key: str, st: _State | None, whose: str) -> None:
        if st is None or st.opened_at is None:
            return
        now = time.monotonic()
        waited = now - st.opened_at
        probing = st.probe_at is not None and now - st.probe_at < self._reset
        if waited < self._reset or probing:
            retry = max(1, int(self._reset - waited + 0.999))
            raise Refusal(
                "circuit_open",
                f"{key} failed {st.failures} times in a row; the circuit is open{whose}",
                headers={"Retry-After": str(retry)},
            )
        st.probe_at = now
