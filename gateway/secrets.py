"""Vendor credentials, looked up by reference (`env:NAME`, `file:PATH`), never written in config.

A file is re-read when it changes, so a rotated key takes effect without a restart. Values are
only ever handed to the credential step; nothing here logs or formats them.

Readiness: a connector whose credential cannot be read would refuse every call with
`store_unavailable`, so `not_ready` names such connectors (and why, never the value) for the start-up
log and `/readyz`. A connector counts when the config gives its credential (`secrets:`), or a loaded
policy has a rule for it; a built-in nobody configured or allowed is not in use and does not count.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from connectors.model import Connector
from gateway.errors import Refusal
from gateway.pipeline.scrub import Scrubber


class Secrets:
    def __init__(self, refs: dict[str, str]):
        self._refs = dict(refs)
        self._files: dict[Path, tuple[float, str]] = {}
        self._scrubber: Scrubber | None = None
        self._scrubbed: tuple[str, ...] = ()

    def get(self, name: str) -> str:
        """The credential named `name`; refuses (fail closed) when it is not configured or missing."""
        ref = self._refs.get(name)
        if ref is None:
            raise Refusal("store_unavailable", f"no credential is configured for {name!r} (secrets.{name})")
        kind, _, where = ref.partition(":")
        value = self._value(kind, where)
        if not value:
            raise Refusal("store_unavailable", f"the credential for {name!r} is empty or missing ({kind})")
        return value

    def scrubber(self) -> Scrubber:
        """What removes every credential's current value from responses; rebuilt only when a
        value changed (a rotated key file)."""
        values = tuple(sorted(v for ref in self._refs.values() if (v := self._value(*_split(ref)))))
        if self._scrubber is None or self._scrubbed != values:
            self._scrubber, self._scrubbed = Scrubber.of(values), values
        return self._scrubber

    def configured(self, name: str) -> bool:
        return name in self._refs

    def problem(self, name: str) -> str | None:
        """Why the credential `name` cannot be used now (the reference, never a value), or None."""
        ref = self._refs.get(name)
        if ref is None:
            return f"no credential configured (secrets.{name})"
        kind, _, where = ref.partition(":")
        return None if self._value(kind, where) else f"secrets.{name} ({ref}) is empty or missing"

    def _value(self, kind: str, where: str) -> str | None:
        if kind == "file":  # cached by mtime: read on every call, re-read only when rotated
            return self._read_file(Path(where).expanduser())
        return read_reference(f"{kind}:{where}")

    def _read_file(self, path: Path) -> str | None:
        try:
            mtime = path.stat().st_mtime
            cached = self._files.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, path.read_text().strip())
                self._files[path] = cached
            return cached[1]
        except OSError:
            return None


def read_reference(ref: str) -> str | None:
    """The value `ref` names (`env:NAME`, `file:PATH`), read now; None when it is missing or empty.
    The one reader of references, for vendor credentials and the gateway's own keys (`keys:`), so
    a new scheme serves both."""
    kind, where = _split(ref)
    if kind == "env":
        return os.environ.get(where) or None
    if kind == "file":
        try:
            return Path(where).expanduser().read_text().strip() or None
        except OSError:
            return None
    return None


def _split(ref: str) -> tuple[str, str]:
    kind, _, where = ref.partition(":")
    return kind, where


def not_ready(connectors: Iterable[Connector], secrets: Secrets, in_policies: frozenset[str]) -> dict[str, str]:
    """Connector name -> why its credential cannot be used, for connectors in use (see above)."""
    out: dict[str, str] = {}
    for c in connectors:
        cred = c.credential
        if cred is None or not (secrets.configured(cred.secret) or c.name in in_policies):
            continue
        problem = secrets.problem(cred.secret)
        if problem is not None:
            out[c.name] = problem
    return out
