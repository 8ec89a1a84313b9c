"""Hot reload: a valid edit takes effect within 2 s; an invalid one keeps the last good set."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from gateway.policy.engine import Subject
from gateway.policy.load import PolicyLoadError
from gateway.policy.store import PolicyStore
from tests.policy.helpers import lookup, write

FIN = Subject("fin-01", "finance")
V1 = """
    version: 1
    subjects: {roles: [finance]}
    rules: [{connector: pay, actions: [create], params: {amount: {max: 100}}}]
"""


def test_valid_edit_is_swapped_after_it_is_stable(policy_dir: Path) -> None:
    write(policy_dir, "f.yaml", V1)
    store = PolicyStore(policy_dir, lookup)
    old = store.current
    assert store.current.decide(FIN, "pay", "create", {"amount": 150}).outcome == "deny"
    write(policy_dir, "f.yaml", V1.replace("100", "200"))
    assert store.poll() is False  # seen once: could be a half-written file
    assert store.poll() is True
    assert store.current.version != old.version
    assert store.current.decide(FIN, "pay", "create", {"amount": 150}).outcome == "allow"
    assert store.poll() is False


def test_invalid_edit_keeps_the_last_good_set(policy_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(policy_dir, "f.yaml", V1)
    store = PolicyStore(policy_dir, lookup)
    good = store.current
    write(policy_dir, "f.yaml", V1.replace("max: 100", "maxx: 100"))
    with caplog.at_level(logging.ERROR, logger="gateway.policy.store"):
        store.poll()
        store.poll()
        store.poll()
    assert store.current is good
    assert "f.yaml:3:" in (store.last_error or "") and "unknown field 'maxx'" in caplog.text
    assert caplog.text.count("rejected, still serving") == 1  # logged once, not every poll
    write(policy_dir, "g.yaml", "version: 1\nsubjects: [\n")  # still broken in another way
    store.poll()
    store.poll()
    assert store.current is good
    (policy_dir / "g.yaml").unlink()
    write(policy_dir, "f.yaml", V1.replace("100", "300"))
    store.poll()
    assert store.poll() is True and store.last_error is None


def test_startup_with_a_bad_policy_fails(policy_dir: Path) -> None:
    write(policy_dir, "f.yaml", "version: 1\n")
    with pytest.raises(PolicyLoadError):
        PolicyStore(policy_dir, lookup)


def test_watcher_applies_an_edit_within_two_seconds(policy_dir: Path) -> None:
    write(policy_dir, "f.yaml", V1)

    async def run() -> float:
        store = PolicyStore(policy_dir, lookup, interval=0.1)
        store.start()
        old = store.current.version
        start = time.monotonic()
        write(policy_dir, "f.yaml", V1.replace("100", "200"))
        while store.current.version == old and time.monotonic() - start < 5:
            await asyncio.sleep(0.02)
        await store.stop()
        return time.monotonic() - start

    assert asyncio.run(run()) < 2
