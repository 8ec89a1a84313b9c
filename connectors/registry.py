"""The connector registry: which connector and action serve a host, method and path.

Connectors come from the `egress_gateway.connectors` entry point group (the built-ins register
there too), from the config (`module:object` references and declarative documents) and from
`POST /v1/connectors` (`gateway.connector_admin`); the registry remembers which. Two connectors may share a host, but
not a route on it: such a clash is refused at start-up naming both, never resolved by load order.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points

from connectors.model import Action, Connector, McpConnector, canonical_host
from gateway.errors import ConfigError

GROUP = "egress_gateway.connectors"


class RegistryError(ConfigError):
    """A connector that cannot be registered (clash, bad reference, wrong type)."""


@dataclass(frozen=True)
class Route:
    connector: Connector
    action: Action
    path_params: dict[str, str]


BUILTIN, CONFIG, API = "builtin", "config", "api"  # where a connector came from (`Registry.origin`)


@dataclass(frozen=True)
class _Index:
    """One consistent view of the registry; replaced whole, never changed in place."""

    by_name: dict[str, Connector]
    by_host: dict[str, tuple[Connector, ...]]
    origins: dict[str, str]


class Registry:
    """Connectors by name and by host. Readers take the current `_Index` once, and a change builds
    a new one and swaps it in with one assignment, so a call routed while a connector is
    registered or removed (`POST`/`DELETE /v1/connectors`) sees the registry before or after the
    change, whole."""

    def __init__(self, connectors: Iterable[Connector] = (), origin: str = BUILTIN):
        self._index = _Index({}, {}, {})
        self._write = threading.Lock()
        for c in connectors:
            self.add(c, origin)

    def add(self, connector: Connector, origin: str = BUILTIN) -> None:
        with self._write:
            index = self._index
            if connector.name in index.by_name:
                raise RegistryError(f"connector {connector.name!r} is registered twice")
            for host in connector.hosts:
                for other in index.by_host.get(host, ()):
                    for a in connector.actions:
                        for b in other.actions:
                            if a.route == b.route:
                                raise RegistryError(
                                    f"connectors {other.name!r} ({b.name}) and {connector.name!r} ({a.name}) "
                                    f"both serve {a.method} {host}{a.path}"
                                )
                    if isinstance(connector, McpConnector) and isinstance(other, McpConnector) and other.endpoint == connector.endpoint:
                        raise RegistryError(f"two MCP servers serve {host}{connector.endpoint}")
            by_host = dict(index.by_host)
            for host in connector.hosts:
                by_host[host] = (*by_host.get(host, ()), connector)
            self._index = _Index(
                {**index.by_name, connector.name: connector}, by_host, {**index.origins, connector.name: origin}
            )

    def remove(self, name: str) -> Connector | None:
        """Take a connector out (its hosts are no longer claimed by it); None if there is none."""
        with self._write:
            index = self._index
            gone = index.by_name.get(name)
            if gone is None:
                return None
            by_host = {h: kept for h, cs in index.by_host.items() if (kept := tuple(c for c in cs if c is not gone))}
            self._index = _Index(
                {n: c for n, c in index.by_name.items() if n != name}, by_host,
                {n: o for n, o in index.origins.items() if n != name},
            )
            return gone

    def __iter__(self) -> Iterator[Connector]:
        return iter(sorted(self._index.by_name.values(), key=lambda c: c.name))

    def get(self, name: str) -> Connector | None:
        return self._index.by_name.get(name)

    def origin(self, name: str) -> str | None:
        """`builtin` (entry points), `config` (the config's `connectors:`) or `api` (registered)."""
        return self._index.origins.get(name)

    def claims(self, host: str) -> bool:
        return canonical_host(host) in self._index.by_host

    def connectors_for(self, host: str) -> list[Connector]:
        return list(self._index.by_host.get(canonical_host(host), ()))

    def route(self, host: str, method: str, path: str) -> Route | None:
        for connector in self._index.by_host.get(canonical_host(host), ()):
            found = connector.route(method, path)
            if found is not None:
                return Route(connector, *found)
        return None

    def mcp_server(self, name: str) -> McpConnector | None:
        found = self._index.by_name.get(name)
        return found if isinstance(found, McpConnector) else None

    def mcp_endpoint(self, host: str, path: str) -> McpConnector | None:
        """The MCP server whose endpoint is `path` on `host`: its requests are read as JSON-RPC."""
        for connector in self._index.by_host.get(canonical_host(host), ()):
            if isinstance(connector, McpConnector) and connector.endpoint == path:
                return connector
        return None


def load_reference(ref: str) -> list[Connector]:
    """`package.module:NAME` -> the Connector (or list of them) it names."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise RegistryError(f"connector reference {ref!r}: expected module:object")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:  # ValueError: a connector or action that does not validate
        raise RegistryError(f"connector reference {ref!r}: {e}") from None
    items = obj if isinstance(obj, (list, tuple)) else [obj]
    for item in items:
        if not isinstance(item, Connector):
            raise RegistryError(f"connector reference {ref!r} is a {type(item).__name__}, not a Connector")
    return list(items)


def references(extra_refs: Iterable[str] = ()) -> list[str]:
    """Every `module:object` the registry loads: the entry points (by name), then `extra_refs`."""
    return [ep.value for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name)] + list(extra_refs)


def entry_point_connectors() -> list[Connector]:
    """The connectors of the `egress_gateway.connectors` group (the built-ins among them)."""
    return [c for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name) for c in load_reference(ep.value)]


def load(extra_refs: Iterable[str] = ()) -> Registry:
    """Every connector from entry points, then from `module:object` references."""
    registry = Registry(entry_point_connectors())
    for ref in extra_refs:
        for c in load_reference(ref):
            registry.add(c, CONFIG)
    return registry
