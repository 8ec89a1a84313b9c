"""Vendor credentials in HashiCorp Vault or OpenBao: `vault:MOUNT/PATH#FIELD` read from KV v2 (hvac).

Not the DLP token vault (dlp/vault.py): this is the platform's secret manager, which holds the
vendor keys the gateway injects and, optionally, the gateway's own signing and CA keys.

Authentication comes from the environment, as the Vault CLI takes it, so no credential for the
store itself is ever written in gateway.yaml:

- `VAULT_ADDR` (required) and `VAULT_TOKEN`; or
- AppRole: `VAULT_ROLE_ID` + `VAULT_SECRET_ID` (a login at start, and again whenever the store
  refuses the token: an AppRole token expires, and a fresh login is the way to renew it);
- optional `VAULT_CACERT` (a CA bundle for the store's TLS) and `VAULT_NAMESPACE`.

`VAULT_ADDR` over plain http:// to a host other than loopback is refused (the store's token and
every secret would cross the network in clear) unless the config's `secrets_allow_plaintext` says
it is intended (`gateway.transport`).

The HTTP session ignores the proxy variables (`HTTPS_PROXY`...): they may well point at this very
gateway, and a store reached through a proxy is a store whose answers anyone on the way can change.

hvac is synchronous: `VaultReader.read` blocks for a round trip (at most `timeout`), so only the
background refresher (gateway/secrets.py) and start-up call it, never a request.
Errors are `VaultUnavailable` with a short reason (unreachable, permission denied, no such secret,
no such field, sealed), never the store's response body and never a value.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import hvac
import hvac.exceptions
import requests

from gateway.errors import ConfigError
from gateway.transport import plaintext_hosts

_REF = re.compile(r"^(?P<mount>[A-Za-z0-9_.-]+)/(?P<path>[A-Za-z0-9_.\-/]+)#(?P<field>[A-Za-z0-9_.\-]+)$")
DEFAULT_TIMEOUT = 5.0


class VaultUnavailable(Exception):
    """The store cannot give the value now; the message is a reason, never a value."""


@dataclass(frozen=True)
class VaultRef:
    """`vault:MOUNT/PATH#FIELD`: the field FIELD of the KV v2 secret PATH under the mount MOUNT."""

    mount: str
    path: str
    field: str

    @classmethod
    def parse(cls, where: str) -> VaultRef:
        """`kv/egress/stripe#api_key` (the part after `vault:`); ValueError names the expected form."""
        m = _REF.match(where)
        if m is None or "//" in m.group("path") or m.group("path").endswith("/") or ".." in m.group("path").split("/"):
            raise ValueError(f"vault:{where}: expected vault:MOUNT/PATH#FIELD (KV v2), e.g. vault:kv/egress/stripe#api_key")
        return cls(m.group("mount"), m.group("path"), m.group("field"))

    def __str__(self) -> str:
        return f"vault:{self.mount}/{self.path}#{self.field}"


@dataclass(frozen=True)
class VaultValue:
    value: str
    lease: float | None  # seconds the store says the value may be used, or None (KV v2 gives none)
    version: int | None


@dataclass(frozen=True)
class VaultAuth:
    """How to reach and log in to the store, from the environment (see the module docstring)."""

    addr: str
    token: str | None
    role_id: str | None
    secret_id: str | None
    cacert: str | None
    namespace: str | None

    def __repr__(self) -> str:  # holds the store's credentials: never printed
        return f"VaultAuth(addr={self.addr!r}, approle={self.role_id is not None})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, allow_plaintext: bool = False) -> VaultAuth:
        """Raises ConfigError naming the missing variable or the fix: a vault: reference cannot
        work without them, and must not send the store's token in clear (`allow_plaintext`:
        the config's `secrets_allow_plaintext`)."""
        addr = environ.get("VAULT_ADDR", "").strip()
        if not addr:
            raise ConfigError("a vault: secret reference needs VAULT_ADDR (and VAULT_TOKEN, or VAULT_ROLE_ID + VAULT_SECRET_ID)")
        if not addr.startswith(("http://", "https://")):
            raise ConfigError(f"VAULT_ADDR must be an http:// or https:// URL, got {addr!r}")
        if not allow_plaintext and (hosts := plaintext_hosts(addr)):
            raise ConfigError(
                f"VAULT_ADDR is plain http:// to {hosts[0]} (not loopback): the store's token and every secret would cross"
                " the network in clear; use https:// (VAULT_CACERT for a private CA), a loopback address, or set"
                " secrets_allow_plaintext: true in the config if that is intended"
            )
        token = environ.get("VAULT_TOKEN") or None
        role_id, secret_id = environ.get("VAULT_ROLE_ID") or None, environ.get("VAULT_SECRET_ID") or None
        if (role_id is None) != (secret_id is None):
            raise ConfigError("AppRole needs both VAULT_ROLE_ID and VAULT_SECRET_ID")
        if token is None and role_id is None:
            raise ConfigError("a vault: secret reference needs VAULT_TOKEN, or VAULT_ROLE_ID + VAULT_SECRET_ID (AppRole)")
        cacert = environ.get("VAULT_CACERT") or None
        if cacert is not None and not os.path.isfile(os.path.expanduser(cacert)):
            raise ConfigError(f"VAULT_CACERT {cacert}: no such file")
        return cls(addr, token, role_id, secret_id, cacert and os.path.expanduser(cacert), environ.get("VAULT_NAMESPACE") or None)


class VaultReader:
    """One authenticated hvac client; `read` is thread-safe (one round trip at a time)."""

    def __init__(self, auth: VaultAuth, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._auth = auth
        session = requests.Session()
        session.trust_env = False  # no proxy variables, no netrc (see the module docstring)
        self._client = hvac.Client(
            url=auth.addr,
            token=auth.token,
            verify=auth.cacert or True,
            timeout=timeout,
            namespace=auth.namespace,
            session=session,
        )
        self._lock = threading.Lock()
        self._logged_in = auth.token is not None

    def read(self, ref: VaultRef) -> VaultValue:
        """The field's current value; VaultUnavailable when it cannot be had."""
        with self._lock:
            try:
                return self._read(ref)
            except hvac.exceptions.Forbidden:
                if self._auth.role_id is None:
                    raise VaultUnavailable("permission denied (VAULT_TOKEN)") from None
                self._logged_in = False  # the AppRole token expired or was revoked: log in again, once
                try:
                    return self._read(ref)
                except hvac.exceptions.Forbidden:
                    raise VaultUnavailable("permission denied (AppRole)") from None
                except (hvac.exceptions.VaultError, requests.RequestException) as e:
                    raise VaultUnavailable(_reason(e)) from None
            except (hvac.exceptions.VaultError, requests.RequestException) as e:
                raise VaultUnavailable(_reason(e)) from None

    def _read(self, ref: VaultRef) -> VaultValue:
        if not self._logged_in:
            try:
                self._client.auth.approle.login(role_id=self._auth.role_id, secret_id=self._auth.secret_id)
            except hvac.exceptions.VaultError:
                raise VaultUnavailable("the store refused the AppRole login (VAULT_ROLE_ID, VAULT_SECRET_ID)") from None
            self._logged_in = True
        answer = self._client.secrets.kv.v2.read_secret_version(
            path=ref.path, mount_point=ref.mount, raise_on_deleted_version=True
        )
        data = (answer.get("data") or {}).get("data") or {}
        value = data.get(ref.field)
        if not isinstance(value, str):
            raise VaultUnavailable(f"the secret has no text field {ref.field!r}")
        value = value.strip()  # as file: values are: a pasted key often ends in a newline
        if not value:  # emptied in the store: a failed read (the last good value serves its time), not a new key
            raise VaultUnavailable(f"the field {ref.field!r} is empty")
        lease = answer.get("lease_duration")
        version = (answer.get("data") or {}).get("metadata", {}).get("version")
        return VaultValue(value, float(lease) if isinstance(lease, int) and lease > 0 else None,
                          version if isinstance(version, int) else None)

    def close(self) -> None:
        self._client.adapter.close()


def _reason(e: Exception) -> str:
    """A short, value-free reason for a failed read (the store's own message may quote a path)."""
    if isinstance(e, requests.Timeout):
        return "the store did not answer in time"
    if isinstance(e, requests.RequestException):
        return "the store is unreachable"
    if isinstance(e, hvac.exceptions.InvalidPath):
        return "no such secret (or it was deleted)"
    if isinstance(e, (hvac.exceptions.VaultDown, hvac.exceptions.VaultNotInitialized)):
        return "the store is sealed or not initialized"
    if isinstance(e, hvac.exceptions.Unauthorized):
        return "the store refused the login"
    if isinstance(e, hvac.exceptions.Forbidden):
        return "permission denied"
    return f"the store answered {type(e).__name__}"
