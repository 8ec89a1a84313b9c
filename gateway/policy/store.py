"""The live policy set, reloaded when the policy directory changes (no restart, no extra dependency).

A task polls every `interval` seconds (0.5 s): it reads every `*.yaml` and hashes names and bytes.
Hashing the content rather than comparing mtimes means an edit within the same second and size is
not missed, and a `touch` does not reload. A new version is loaded only after it has been seen
unchanged on two consecutive polls, so a file caught half-written by an editor (which may still be
valid YAML, just with fewer rules) is never served; an edit therefore takes effect within about
2 x `interval` (1 s), inside the 2 s the contract allows.

A change that does not load is logged with every `file:line: reason` and the last good set keeps
serving: never fail open, never a half-loaded set. With a pinned bundle (`attest.pin.policies`,
gateway/attest.py) a change whose sha256 differs from the pin is refused the same way. The set is swapped as one object, so a decision
in flight sees either the old or the new set, whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.policy.engine import PolicySet
from gateway.policy.load import (
    ConnectorLookup,
    PolicyLoadError,
    build_policy_set,
    content_digest,
    read_directory,
)

log = logging.getLogger(__name__)


class PolicyStore:
    """Holds the current `PolicySet`; `start()` begins watching the directory."""

    def __init__(self, directory: Path, lookup: ConnectorLookup, interval: float = 0.5, pin: str | None = None) -> None:
        """Loads the directory now; raises `PolicyLoadError` so a bad policy stops start-up. `pin`
        (a sha256, hex) is checked on reloads; start-up checks it with the other pins."""
        self.directory = directory
        self.interval = interval
        self.pin = pin
        self._lookup = lookup
        self._current = build_policy_set(read_directory(directory), lookup)
        self._seen: str | None = None  # version seen on the previous poll, not yet loaded
        self._rejected: str | None = None  # version that failed to load (logged once)
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_reload: Callable[[bool], None] = lambda ok: None  # told of each reload, loaded or rejected (metrics)

    @property
    def current(self) -> PolicySet:
        return self._current

    def poll(self) -> bool:
        """Check the directory once; True if a new set was swapped in."""
        try:
            contents = read_directory(self.directory)
        except (OSError, PolicyLoadError) as e:
            self.on_reload(False)
            self._reject(None, f"cannot read policy directory {self.directory}: {e}")
            return False
        digest = content_digest(contents.items())
        version = digest[:16]
        if version == self._current.version:  # unchanged, or a rejected change undone: nothing is wrong now
            self._seen, self._rejected, self.last_error = None, None, None
            return False
        if version != self._seen:
            self._seen = version
            return False
        if version == self._rejected:
            return False
        if self.pin is not None and digest != self.pin:
            self.on_reload(False)
            self._reject(version, f"the policy bundle's sha256:{digest} is not the pinned sha256:{self.pin} (attest.pin.policies)")
            return False
        try:
            new = build_policy_set(contents, self._lookup)
        except PolicyLoadError as e:
            self.on_reload(False)
            self._reject(version, "\n".join(str(p) for p in e.problems))
            return False
        self.on_reload(True)
        old, self._current = self._current, new
        self._seen, self._rejected, self.last_error = None, None, None
        log.info("policies reloaded: version %s -> %s (%d rules)", old.version, new.version, new.rule_count)
        return True

    def forget_rejection(self) -> None:
        """The connectors changed (one registered through the API): a rejected version that named
        it may load now, so the next poll tries it again instead of skipping it as rejected."""
        self._rejected = None

    def _reject(self, version: str | None, reason: str) -> None:
        if version is not None and version == self._rejected:
            return
        self._rejected = version
        self.last_error = reason
        log.error(
            "policy change in %s rejected, still serving version %s:\n%s", self.directory, self._current.version, reason
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.poll()
            except Exception:  # a bug here must not stop watching; the old set keeps serving
                log.exception("policy reload failed; still serving version %s", self._current.version)

    def start(self) -> asyncio.Task[None]:
        """Start watching in the running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="policy-reload")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
