"""Vendor credentials, looked up by reference (`env:NAME`, `file:PATH`, `vault:MOUNT/PATH#FIELD`),
never written in config.

A file is re-read when it changes, so a rotated key takes effect without a restart. A `vault:`
reference (HashiCorp Vault or OpenBao KV v2, gateway/vault_kv.py) is read by a background thread
every `secrets_refresh` (sooner when the store gives a shorter lease), because hvac blocks: the
request path only ever reads the cache. A cached vault value is used for at most
`secrets_max_stale` after the read that fetched it (or its lease, if shorter): when the store
cannot be read for longer, calls needing it are refused with `store_unavailable` (fail closed), never
served a value past its time. Values are only ever handed to the credential step and the answer
scrubber; nothing here logs or formats them.

A rotated value (file or vault) stays in the scrubber for `RETIRED_SCRUB_FOR` after it was
replaced: an answer to a call sent with the previous key, or a vendor echoing it later, is still
cleaned.

Readiness: a connector whose credential cannot be read would refuse every call with
`store_unavailable`, so `not_ready` names such connectors (and why, never the value) for the start-up
log and `/readyz`. A connector counts when the config gives its credential (`secrets:`), or a loaded
policy has a rule for it; a built-in nobody configured or allowed is not in use and does not count.
A vault reference whose last read failed is not ready even while its cached value still serves.

`read_reference` reads any reference once, synchronously, for what is loaded at start (the
gateway's own signing and CA keys).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from connectors.model import Connector
from gateway.errors import ConfigError, Refusal
from gateway.pipeline.scrub import Scrubber
from gateway.vault_kv import VaultAuth, VaultReader, VaultRef, VaultUnavailable

log = logging.getLogger(__name__)

KINDS = ("env", "file", "vault")
RETIRED_SCRUB_FOR = 3600.0  # seconds a replaced value is still scrubbed from answers
RETRY_AFTER_FAILURE = 5.0  # a store that failed is tried again this soon, even with a long refresh
NOT_READ = "not read yet"


def check_reference(ref: str) -> None:
    """ValueError unless `ref` is `env:NAME`, `file:PATH` or `vault:MOUNT/PATH#FIELD`."""
    kind, _, where = ref.partition(":")
    if kind not in KINDS or not where:
        raise ValueError("expected env:NAME, file:PATH or vault:MOUNT/PATH#FIELD (never the key itself)")
    if kind == "vault":
        VaultRef.parse(where)


def read_reference(ref: str, what: str, environ: Mapping[str, str] = os.environ, *, allow_plaintext: bool = False) -> str:
    """The value `ref` names, read once now (blocking); ConfigError naming `what` and the
    reference (never a value) when it cannot be read or is empty. For start-up only."""
    try:
        check_reference(ref)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None
    kind, _, where = ref.partition(":")
    value: str | None
    if kind == "env":
        value = environ.get(where)
    elif kind == "file":
        try:
            value = Path(where).expanduser().read_text().strip()
        except OSError as e:
            raise ConfigError(f"{what} ({ref}): {e.strerror}") from None
    else:
        reader = VaultReader(VaultAuth.from_env(environ, allow_plaintext=allow_plaintext))
        try:
            value = reader.read(VaultRef.parse(where)).value
        except VaultUnavailable as e:
            raise ConfigError(f"{what} ({ref}) cannot be read: {e}") from None
        finally:
            reader.close()
    if not value:
        raise ConfigError(f"{what} ({ref}) is empty or missing")
    return value


@dataclass(frozen=True)
class _Cached:
    """One vault reference's cache entry, replaced whole (the refresher thread writes, requests read)."""

    value: str | None = None
    until: float = 0.0  # monotonic time after which `value` must not be used
    next_read: float = 0.0
    problem: str | None = NOT_READ
    version: int | None = None


class Secrets:
    def __init__(
        self,
        refs: dict[str, str],
        *,
        refresh: float = 30.0,
        max_stale: float = 120.0,
        reader: VaultReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._refs = dict(refs)
        self._files: dict[Path, tuple[float, str]] = {}
        self._scrubber: Scrubber | None = None
        self._scrubbed: tuple[str, ...] = ()
        self._refresh, self._max_stale, self._clock = refresh, max_stale, clock
        self._vault_refs = sorted({ref for ref in self._refs.values() if ref.startswith("vault:")})
        if self._vault_refs and reader is None:
            raise ConfigError("vault: secret references need a store reader")
        self._reader = reader
        self._vault: dict[str, _Cached] = {ref: _Cached() for ref in self._vault_refs}
        self._retired: dict[str, float] = {}  # replaced value -> until when it is still scrubbed
        self._retired_lock = threading.Lock()  # written by the refresher thread, read by requests
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, refs: dict[str, str], refresh: float, max_stale: float, allow_plaintext: bool = False) -> Secrets:
        """The config's `secrets:`; a vault: reference needs the store's address and login in the
        environment, over TLS unless loopback or `allow_plaintext` (ConfigError otherwise). Vault
        values are read once here, before serving."""
        reader = None
        if any(ref.startswith("vault:") for ref in refs.values()):
            reader = VaultReader(VaultAuth.from_env(allow_plaintext=allow_plaintext))
        secrets = cls(refs, refresh=refresh, max_stale=max_stale, reader=reader)
        secrets.refresh_due()
        secrets.scrubber()
        return secrets

    def get(self, name: str) -> str:
        """The credential named `name`; refuses (fail closed) when it is not configured or missing."""
        ref = self._refs.get(name)
        if ref is None:
            raise Refusal("store_unavailable", f"no credential is configured for {name!r} (secrets.{name})")
        kind, where = _split(ref)
        if kind == "vault":
            cached = self._vault[ref]
            if cached.value and self._clock() < cached.until:
                return cached.value
            raise Refusal("store_unavailable", f"the credential for {name!r} cannot be read from the secret store (vault)")
        value = self._value(kind, where)
        if not value:
            raise Refusal("store_unavailable", f"the credential for {name!r} is empty or missing ({kind})")
        if breaks_a_header(value):
            raise Refusal("store_unavailable", f"the credential for {name!r} holds a line break or NUL ({kind}); refusing it")
        return value

    def scrubber(self) -> Scrubber:
        """What removes every credential's value from responses: the current ones, a vault value
        past its time, and values replaced within `RETIRED_SCRUB_FOR`; rebuilt only when the set
        changed (a rotation)."""
        current = {v for ref in self._refs.values() if (v := self._value(*_split(ref)))}
        now = self._clock()
        with self._retired_lock:
            for old in [v for v, until in self._retired.items() if until <= now]:
                del self._retired[old]
            values = tuple(sorted(current | set(self._retired)))
        if self._scrubber is None or self._scrubbed != values:
            self._scrubber, self._scrubbed = Scrubber.of(values), values
            # Its spelled-form patterns take tens of milliseconds per hundred characters of secret
            # to compile: done beside the event loop, not in the answer that first needs them.
            threading.Thread(target=self._scrubber.prepare, name="scrubber-compile", daemon=True).start()
        return self._scrubber

    def configured(self, name: str) -> bool:
        return name in self._refs

    def problem(self, name: str) -> str | None:
        """Why the credential `name` cannot be used now (the reference, never a value), or None."""
        ref = self._refs.get(name)
        if ref is None:
            return f"no credential configured (secrets.{name})"
        kind, where = _split(ref)
        if kind == "vault":
            cached = self._vault[ref]
            if cached.problem is not None:
                return f"secrets.{name} ({ref}) cannot be read: {cached.problem}"
            if not (cached.value and self._clock() < cached.until):
                return f"secrets.{name} ({ref}): the cached value is past its time"
            return None
        value = self._value(kind, where)
        if not value:
            return f"secrets.{name} ({ref}) is empty or missing"
        return f"secrets.{name} ({ref}) holds a line break or NUL; refusing it" if breaks_a_header(value) else None

    def refresh_due(self) -> float:
        """Read every vault reference whose time has come (blocking: the refresher thread and
        start-up only); returns the seconds until the next one is due."""
        for ref in self._vault_refs:
            if self._vault[ref].next_read <= self._clock():
                self._read_vault(ref)
        if not self._vault_refs:
            return self._refresh
        return max(0.05, min(c.next_read for c in self._vault.values()) - self._clock())

    def start(self) -> None:
        """Keep vault values fresh in a background thread (none without vault references)."""
        if self._vault_refs and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="secrets-refresh", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._reader is not None:
            self._reader.close()

    def _run(self) -> None:
        wait = self._refresh
        while not self._stop.wait(wait):
            try:
                wait = self.refresh_due()
            except Exception:  # a bug here must not stop refreshing; a cached value still expires on time
                log.exception("secret refresh failed")
                wait = RETRY_AFTER_FAILURE

    def _read_vault(self, ref: str) -> None:
        assert self._reader is not None
        old = self._vault[ref]
        start = self._clock()
        try:
            got = self._reader.read(VaultRef.parse(ref.partition(":")[2]))
            if breaks_a_header(got.value):
                raise VaultUnavailable("the value holds a line break or NUL; refusing it")
        except VaultUnavailable as e:
            if old.problem != str(e):
                left = max(0.0, old.until - start) if old.value else 0.0
                log.error("secret store: %s cannot be read (%s); its cached value serves %.0fs more, then calls "
                          "needing it are refused (store_unavailable)", ref, e, left)
            self._vault[ref] = replace(old, problem=str(e), next_read=start + min(self._refresh, RETRY_AFTER_FAILURE))
            return
        ttl = min(self._max_stale, got.lease) if got.lease else self._max_stale
        if old.problem is not None and old.problem != NOT_READ:
            log.info("secret store: %s can be read again", ref)
        if old.value is not None and old.value != got.value:
            self._retire(old.value)
            log.info("secret store: %s rotated (version %s -> %s); the previous value is still scrubbed from answers",
                     ref, old.version, got.version)
        self._vault[ref] = _Cached(got.value, start + ttl, start + min(self._refresh, ttl / 2), None, got.version)

    def _retire(self, value: str) -> None:
        with self._retired_lock:
            self._retired[value] = self._clock() + RETIRED_SCRUB_FOR

    def _value(self, kind: str, where: str) -> str | None:
        if kind == "env":
            value = os.environ.get(where)
            return None if value is None else value.strip()  # as file: and vault: values are
        if kind == "file":
            return self._read_file(Path(where).expanduser())
        return self._vault[f"vault:{where}"].value

    def _read_file(self, path: Path) -> str | None:
        try:
            mtime = path.stat().st_mtime
            cached = self._files.get(path)
            if cached is None or cached[0] != mtime:
                value = path.read_text().strip()
                if cached is not None and cached[1] and cached[1] != value:
                    self._retire(cached[1])
                cached = (mtime, value)
                self._files[path] = cached
            return cached[1]
        except OSError:
            return None


def breaks_a_header(value: str) -> bool:
    """A credential goes into a header of the vendor request: a line break or NUL inside would add
    a header of its own (or end the head), whichever store it came from."""
    return any(c in value for c in "\r\n\0")


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
