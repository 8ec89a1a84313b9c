"""The circuit breaker's states, on its own."""

from __future__ import annotations

import time

import pytest

from gateway.errors import Refusal
from gateway.pipeline.breaker import Breaker


def test_open_half_open_closed() -> None:
    b = Breaker(failures=2, reset=0.2)
    b.failure("h")
    b.check("h")
    b.failure("h")
    assert b.state("h") == "open"
    with pytest.raises(Refusal) as e:
        b.check("h")
    assert e.value.code == "circuit_open"
    time.sleep(0.25)
    b.check("h")  # the one probe
    assert b.state("h") == "half-open"
    with pytest.raises(Refusal):
        b.check("h")  # a second call while the probe is out
    b.failure("h")
    assert b.state("h") == "open"
    time.sleep(0.25)
    b.check("h")
    b.success("h")
    assert b.state("h") == "closed"
    b.check("h")
