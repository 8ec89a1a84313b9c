"""The connector registry: which connector and action serve a host, method and path.

Connectors come from the `egress_gateway.connectors` entry point group (the built-ins register
there too) and from `module:object` references in the config. Two connectors may share a host, but
not a route on it: such a clash is refused at start-up naming both, never resolved by load order.
"""

from __future__ import annotations

import importlib
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


class Registry:
    def __init__(self, connectors: Iterable[Connector] = ()):
        self._by_name: dict[str, Connector] = {}
        self._by_host: dict[str, list[Connector]] = {}
        for c in connectors:
            self.add(c)

    def add(self, connector: Connector) -> None:
        if connector.name in self._by_name:
            raise RegistryError(f"connector {connector.name!r} is registered twice")
        for host in connector.hosts:
            for other in self._by_host.get(host, []):
                for a in connector.actions:
                    for b in other.actions:
                        if a.route == b.route:
                            raise RegistryError(
                                f"connectors {other.name!r} ({b.name}) and {connector.name!r} ({a.name}) "
                                f"both serve {a.method} {host}{a.path}"
                            )
            if isinstance(connector, McpConnector) and self.mcp_endpoint(host, connector.endpoint) is not None:
                raise RegistryError(f"two MCP servers serve {host}{connector.endpoint}")
        self._by_name[connector.name] = connector
        for host in connector.hosts:
            self._by_host.setdefault(host, []).append(connector)

    def __iter__(self) -> Iterator[Connector]:
        return iter(sorted(self._by_name.values(), key=lambda c: c.name))

    def get(self, name: str) -> Connector | None:
        return self._by_name.get(name)

    def claims(self, host: str) -> bool:
        return canonical_host(host) in self._by_host

    def connectors_for(self, host: str) -> list[Connector]:
        return list(self._by_host.get(canonical_host(host), []))

    def route(self, host: str, method: str, path: str) -> Route | None:
        for connector in self._by_host.get(canonical_host(host), []):
            found = connector.route(method, path)
            if found is not None:
                return Route(connector, *found)
        return None


    def mcp_server(self, name: str) -> McpConnector | None:
        found = self._by_name.get(name)
        return found if isinstance(found, McpConnector) else None

    def mcp_endpoint(self, host: str, path: str) -> McpConnector | None:
        """The MCP server whose endpoint is `path` on `host`: its requests are read as JSON-RPC."""
        for connector in self._by_host.get(canonical_host(host), []):
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
    """Every `module:object` the registry loads: the entry points (by name), then the config's."""
    return [ep.value for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name)] + list(extra_refs)


def load(extra_refs: Iterable[str] = (), built: Iterable[Connector] = ()) -> Registry:
    """Every connector from entry points, then from the config's references, then those the
    config builds itself (its MCP servers)."""
    return Registry([*(c for ref in references(extra_refs) for c in load_reference(ref)), *built])
