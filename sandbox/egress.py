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

import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from connectors.registry import Registry
from gateway.errors import Refusal
from sandbox.hostcall import ResolveAction


class ProxySender:
    """A callable `http_request(request) -> response` bound to one proxy, CA and token.

    The HTTP client is made on the first host call: most runs make none, and a client (its TLS
    context above all) costs milliseconds to build. `ca` may be a ready `SSLContext` to share.
    """

    def __init__(self, proxy_url: str, ca: str | ssl.SSLContext, token: str, timeout: float):
        self._proxy = httpx.Proxy(proxy_url, headers={"Proxy-Authorization": f"Bearer {token}"})
        self._ca, self._timeout = ca, timeout
        self._client: httpx.Client | None = None

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._client is None:
            verify = self._ca if isinstance(self._ca, ssl.SSLContext) else ssl.create_default_context(cafile=self._ca)
            self._client = httpx.Client(
                proxy=self._proxy, verify=verify, timeout=self._timeout, follow_redirects=False, trust_env=False
            )
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
        if self._client is not None:
            self._client.close()


def make_proxy_sender(
    proxy_url: str, ca: str | ssl.SSLContext, token: str, timeout: float
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return ProxySender(proxy_url, ca, token, timeout)


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
