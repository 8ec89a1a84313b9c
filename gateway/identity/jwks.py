"""An external issuer's public keys (a JWKS), by key id: from a file, re-read when it changes, or
from a URL, cached and fetched again when a token names a key it does not hold (rate-limited).

A key set that cannot be read trusts nothing (fail closed): a file that stops parsing empties it
until it is fixed, and a URL's keys are dropped `max_age` after the last successful fetch. Only
public members of a key are kept; a key set holding private key material is refused whole (it was
published by mistake, and PyJWT would build a private key from it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 256 * 1024
FILE_POLL_SECONDS = 0.25  # a file's stat at most this often: a rotation is seen within it
FETCH_TIMEOUT = 5.0
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "oth"})

Keys = dict[str, dict[str, Any]]


class JwksError(ValueError):
    """A key set that does not parse; the message names the problem, never key material."""


def parse_jwks(data: bytes, uses: frozenset[str]) -> Keys:
    """The signing keys of a JWKS document by `kid`; keys whose `use` is another one are skipped
    (a SPIFFE bundle also holds its `x509-svid` CA keys)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise JwksError("not JSON") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise JwksError("no 'keys' list")
    keys: Keys = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or not isinstance(entry.get("kty"), str):
            raise JwksError("every key needs a string 'kid' and 'kty'")
        if _PRIVATE_MEMBERS & entry.keys():
            raise JwksError(f"key {entry['kid']!r} holds private key material")
        if "use" in entry and entry["use"] not in uses:
            continue
        if entry["kid"] in keys:
            raise JwksError(f"two keys share the kid {entry['kid']!r}")
        keys[entry["kid"]] = entry
    return keys


class FileJwks:
    """A JWKS file; re-read when its size, mtime or inode changes (checked at most every
    `FILE_POLL_SECONDS`, when a key is looked up)."""

    def __init__(self, path: Path, uses: frozenset[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self._uses, self._clock = path, uses, clock
        self._keys: Keys = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -FILE_POLL_SECONDS
        try:
            self._keys = parse_jwks(path.read_bytes(), uses)  # at start, a bad file stops the gateway
        except OSError as e:
            raise JwksError(f"cannot read {path}: {e.strerror}") from None
        except JwksError as e:
            raise JwksError(f"{path}: {e}") from None
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def current(self) -> Keys:
        now = self._clock()
        if now - self._checked >= FILE_POLL_SECONDS:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                self._keys = self._reload()
        return self._keys

    def _reload(self) -> Keys:
        try:
            keys = parse_jwks(self.path.read_bytes(), self._uses)
        except (OSError, JwksError) as e:
            log.error("key set %s no longer reads (%s): its issuer's tokens are refused until it does", self.path, e)
            return {}
        log.info("key set %s reloaded: %d keys", self.path, len(keys))
        return keys

    async def prepare(self, kid: str) -> None:
        """Nothing to fetch: a file is re-read when it changes."""


class UrlJwks:
    """A JWKS served over HTTP(S) (an IdP's `jwks_uri` on loopback or the intranet)."""

    def __init__(
        self,
        url: str,
        uses: frozenset[str],
        *,
        refresh: float,
        min_interval: float,
        max_age: float,
        extra_ca: Path | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self._uses, self._clock = url, uses, clock
        self.refresh, self.min_interval, self.max_age = refresh, min_interval, max_age
        self._extra_ca = extra_ca
        self._keys: Keys = {}
        self._fetched: float | None = None
        self._attempted: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0  # successful and failed, for the log and the tests' exact counts

    def current(self) -> Keys:
        if self._fetched is None or self._clock() - self._fetched > self.max_age:
            return {}
        return self._keys

    def _due(self, kid: str) -> bool:
        now = self._clock()
        stale = self._fetched is None or now - self._fetched > self.refresh
        if not stale and kid in self._keys:
            return False
        return self._attempted is None or now - self._attempted >= self.min_interval

    async def prepare(self, kid: str) -> None:
        """Fetch the key set when it is stale or lacks `kid`, at most once per `min_interval`."""
        if not self._due(kid):
            return
        async with self._lock:
            if not self._due(kid):  # another request fetched it meanwhile
                return
            self._attempted = self._clock()
            self.fetches += 1
            try:
                keys = parse_jwks(await self._fetch(), self._uses)
            except (httpx.HTTPError, JwksError, ssl.SSLError, OSError) as e:
                log.warning("cannot fetch the key set %s (%s); keeping %d keys", self.url, type(e).__name__ if not isinstance(e, JwksError) else e, len(self.current()))
                return
            self._keys, self._fetched = keys, self._clock()
            log.info("key set %s fetched: %d keys", self.url, len(keys))

    async def _fetch(self) -> bytes:
        verify = ssl.create_default_context()  # the system CAs, plus `upstream_ca` as for vendors
        if self._extra_ca is not None:
            verify.load_verify_locations(cafile=str(self._extra_ca))
        async with httpx.AsyncClient(verify=verify, timeout=FETCH_TIMEOUT, follow_redirects=False, trust_env=False) as client:
            async with client.stream("GET", self.url, headers={"accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise JwksError(f"HTTP {resp.status_code}")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
                return bytes(body)
