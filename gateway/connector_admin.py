"""Where connectors come from besides the built-ins, and registering them on a running gateway.

At start the registry is built from, in this order: the `egress_gateway.connectors` entry points
(origin `builtin`), the config's `connectors:` entries (origin `config`: `module:object`, a
declarative document's file, or the document inline), and the connectors registered through
`POST /v1/connectors` and kept in the state dir (origin `api`). The CLI builds the same registry
from the same config and state dir, so `policy check` and `connectors` see what `run` serves.

A registered connector is held to more than a configured one, because an admin token is not the
operator's shell: its name and hosts must be new (no shadowing of a built-in, no second claim on a
host, no claim on an `egress.allow` host), and its credential may only be a secret the config offers
to registered connectors (`connector_secrets:`), presented only to the hosts listed for it. Its
hosts go through the same egress checks as every claimed host (private, loopback and metadata
addresses refused unless `upstreams:` routes the host).

Deleting a registered connector that the current policy set names is refused: the policies would
no longer reload (they name an unknown connector). Remove the rules, let the policies reload, then
delete.

Every process serving the same store (the workers of a host on the state dir's file, the replicas
of a fleet on Redis) applies what the others registered and deleted: `watch` polls the store's
version every `POLL_SECONDS` and, when it changed, makes the registry's API connectors what the
store holds (`sync`), so a registration through one process serves through all within a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.declarative import DocumentError, parse, where
from connectors.model import Connector, canonical_host
from connectors.registry import API, CONFIG, Registry, RegistryError, entry_point_connectors, load_reference
from gateway.config import Config, is_document_path
from gateway.connector_store import AlreadyStored, ConnectorStore
from gateway.errors import ConfigError, Refusal, StoreUnavailable
from gateway.identity.revocation import POLL_SECONDS
from gateway.policy.load import LineDict, locate, read_yaml
from gateway.policy.store import PolicyStore
from gateway.stores import read_connectors

log = logging.getLogger(__name__)


def build_registry(config: Config, store: ConnectorStore | None) -> Registry:
    """Every connector the gateway serves, each with its origin; `ConfigError` naming a bad one."""
    registry = Registry(entry_point_connectors())
    for index, entry in enumerate(config.connectors):
        for connector in config_connectors(index, entry):
            registry.add(connector, CONFIG)
    for mcp_server in config.mcp_connectors():
        registry.add(mcp_server, CONFIG)
    for stored in store.all() if store is not None else ():
        try:
            registry.add(parse(stored.document), API)
        except (DocumentError, RegistryError) as e:
            raise ConfigError(
                f"connector {stored.name!r} registered by {stored.registered_by} no longer loads: {e}"
            ) from None
    return registry


def registry_of(config: Config) -> Registry:
    """What `run` would serve, for a command that is not the gateway (`gateway.stores.read_connectors`)."""
    store = read_connectors(config)
    try:
        return build_registry(config, store)
    finally:
        if store is not None:
            store.close()


def config_connectors(index: int, entry: str | dict[str, Any]) -> list[Connector]:
    """One `connectors:` entry: a document inline, a document's file, or `module:object`."""
    if isinstance(entry, dict):
        try:
            return [parse(entry)]
        except DocumentError as e:
            raise ConfigError("\n".join(f"connectors[{index}].{where(loc)}: {reason}" for loc, reason in e.problems)) from None
    if is_document_path(entry):
        return [read_document(Path(entry))]
    return load_reference(entry)


def read_document(path: Path) -> Connector:
    """A declarative connector's file (YAML or JSON); problems as `file:line: json.path: reason`."""
    try:
        text = path.expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"connector file {path}: {e.strerror}") from None
    data, problems = read_yaml(str(path), text)
    if problems:
        raise ConfigError("\n".join(map(str, problems)))
    try:
        return parse(data)
    except DocumentError as e:
        lines = [
            f"{path}:{locate(data, loc)[0] if isinstance(data, LineDict) else 1}: {where(loc)}: {reason}"
            for loc, reason in e.problems
        ]
        raise ConfigError("\n".join(lines)) from None


def document_digest(document: dict[str, Any]) -> str:
    """The SHA-256 of a document's canonical JSON: what the audit record names it by."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class ConnectorAdmin:
    """`POST` and `DELETE /v1/connectors`: checks, the store, the live registry, the policies."""

    config: Config
    registry: Registry
    store: ConnectorStore
    policies: PolicyStore | None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # name -> the stored registration this registry serves (its time): a connector deleted and
    # registered again elsewhere between two polls is replaced, not kept as it was
    _applied: dict[str, float] = field(default_factory=dict, repr=False)

    def register(self, document: Any, registered_by: str) -> Connector:
        """Check, store, and add to the running registry in one step; refuses with a `Refusal`."""
        try:
            connector = parse(document)
        except DocumentError as e:
            raise Refusal("schema_violation", e.first()) from None
        self._check_credential(connector)
        with self._lock:
            self._check_clashes(connector)
            try:
                stored = self.store.add(connector.name, document, registered_by)
            except AlreadyStored:
                raise Refusal("conflict", f"a connector named {connector.name!r} is registered already") from None
            except StoreUnavailable:
                raise Refusal("store_unavailable", "the connector store cannot be written; nothing was registered") from None
            try:
                self.registry.add(connector, API)
            except RegistryError as e:
                self.store.remove(connector.name)
                raise Refusal("conflict", str(e)) from None
            self._applied[connector.name] = stored.registered_at
        if self.policies is not None:
            self.policies.forget_rejection()
        return connector

    def unregister(self, name: str) -> Connector:
        """Remove a registered connector from the store and the running registry."""
        with self._lock:
            origin = self.registry.origin(name)
            if origin is None:
                raise Refusal("not_found", "no such connector")
            if origin != API:
                raise Refusal("conflict", f"connector {name!r} comes from the {origin} set, not the API; it cannot be deleted")
            if self.policies is not None and name in self.policies.current.connectors:
                raise Refusal(
                    "conflict",
                    f"the current policies name connector {name!r}; remove their rules for it first, then delete",
                )
            try:
                self.store.remove(name)
            except StoreUnavailable:
                raise Refusal("store_unavailable", "the connector store cannot be written; nothing was deleted") from None
            gone = self.registry.remove(name)
            self._applied.pop(name, None)
        assert gone is not None
        return gone

    async def watch(self) -> None:
        """Apply other processes' registrations and deletions while the gateway runs; a store that
        does not answer is logged once and polled again (what is served stays as it was)."""
        seen: int | None = None
        down = False
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                version = await asyncio.to_thread(self.store.version)
                if version != seen:
                    await asyncio.to_thread(self.sync)
                    seen = version
            except StoreUnavailable as e:
                if not down:
                    log.warning("cannot read registered connectors: %s", e)
                down = True
                continue
            if down:
                log.warning("the connector store answers again")
            down = False

    def sync(self) -> None:
        """Make the registry's API connectors the store's: remove those deleted (or replaced)
        elsewhere, add those registered elsewhere. Raises `StoreUnavailable`."""
        added = False
        with self._lock:
            stored = {s.name: s for s in self.store.all()}
            for connector in list(self.registry):
                name = connector.name
                if self.registry.origin(name) != API:
                    continue
                found = stored.get(name)
                if found is None or self._applied.setdefault(name, found.registered_at) != found.registered_at:
                    self.registry.remove(name)
                    self._applied.pop(name, None)
                    log.info("connector %r was deleted through another gateway process; no longer served", name)
                    if self.policies is not None and name in self.policies.current.connectors:
                        log.warning("the current policies name connector %r, deleted elsewhere: its calls are refused", name)
            for name, found in stored.items():
                origin = self.registry.origin(name)
                if origin == API:
                    continue
                try:
                    if origin is not None:
                        raise RegistryError(f"a {origin} connector is named {name!r} here")
                    self.registry.add(parse(found.document), API)
                except (DocumentError, RegistryError) as e:
                    log.error("connector %r registered through another gateway process is not served here: %s", name, e)
                    continue
                self._applied[name] = found.registered_at
                added = True
                log.info("connector %r registered through another gateway process by %s; served", name, found.registered_by)
        if added and self.policies is not None:
            self.policies.forget_rejection()

    def _check_credential(self, connector: Connector) -> None:
        """The key goes to every host of the connector: each must be one the config offers it to."""
        if connector.credential is None:
            return
        secret = connector.credential.secret
        allowed = self.config.connector_secrets.get(secret)
        if allowed is None:
            raise Refusal(
                "schema_violation",
                f"credential.secret: {secret!r} is not offered to registered connectors (the config's connector_secrets)",
            )
        for i, host in enumerate(connector.hosts):
            if host not in allowed:
                raise Refusal(
                    "schema_violation",
                    f"hosts[{i}]: the config's connector_secrets lets {secret!r} go to {', '.join(allowed) or 'no host'} only",
                )

    def _check_clashes(self, connector: Connector) -> None:
        origin = self.registry.origin(connector.name)
        if origin is not None:
            raise Refusal("conflict", f"name: a {origin} connector is named {connector.name!r} already")
        for i, host in enumerate(connector.hosts):
            owners = self.registry.connectors_for(host)
            if owners:
                raise Refusal("conflict", f"hosts[{i}]: {host} is claimed by connector {owners[0].name!r}")
            if host in {canonical_host(h) for h in self.config.egress.allow}:
                raise Refusal("conflict", f"hosts[{i}]: {host} is an egress.allow pass-through host")
