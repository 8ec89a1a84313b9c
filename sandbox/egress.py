"""Where a tool's host calls go: through the gateway's own proxy, so every pipeline step applies.

`make_proxy_sender` is the production `http_request`: a sync httpx client that sends through the
proxy port with a short-lived agent token narrowed to the manifest's actions (and carrying the tool's
name), trusting the gateway's CA. The gateway's refusals are ordinary responses with the JSON error
body, and pass to the guest unchanged. Transport failures become the same JSON errors
(`upstream_timeout`, `upstream_failed`); no message carries the token or the proxy URL.

`connector_resolver` maps a URL to `(connector, action)` with the connector registry, for the
manifest's ceiling check that runs before a request is sent. `refuse_all` is the sender for local
runs with no gateway: every host call is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from connectors.registry import Registry
from gateway.errors import Refusal
from sandbox.hostcall import ResolveAction


class ProxySender:
    """A callable `http_request(request) -> response` bound to one proxy, CA and token."""

    def __init__(self, proxy_url: str, ca_file: str, token: str, timeout: float):
        proxy = httpx.Proxy(proxy_url, headers={"Proxy-Authorization": f"Bearer {token}"})
        self._client = httpx.Client(proxy=proxy, verify=ca_file, timeout=timeout, follow_redirects=False, trust_env=False)

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.request(
                request["method"],
                request["url"],
                headers=request.get("headers") or {},
                content=(request.get("body") or "").encode(),
            )
        except httpx.TimeoutException:
            raise Refusal("upstream_timeout", "the host call through the gateway timed out") from None
        except httpx.HTTPError as e:
            raise Refusal("upstream_failed", f"the host call through the gateway failed ({type(e).__name__})") from None
        return {
            "status": response.status_code,
            "headers": {k.lower(): v for k, v in response.headers.items()},
            "body": response.content.decode("utf-8", errors="replace"),
        }

    def close(self) -> None:
        self._client.close()


def make_proxy_sender(proxy_url: str, ca_file: str, token: str, timeout: float) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return ProxySender(proxy_url, ca_file, token, timeout)


def refuse_all(request: dict[str, Any]) -> dict[str, Any]:
    """The sender when no gateway is configured: nothing leaves the machine."""
    raise Refusal("sandbox_forbidden", "no gateway is configured for host calls (pass --proxy and --token)")


def connector_resolver(registry: Registry) -> ResolveAction:
    def resolve(method: str, url: str) -> tuple[str, str] | None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            return None
        route = registry.route(parts.hostname, method, parts.path or "/")
        return None if route is None else (route.connector.name, route.action.name)

    return resolve
