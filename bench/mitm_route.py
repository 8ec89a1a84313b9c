"""mitmdump script for the bare-mitmproxy baseline: the least an addon must do to reach the vendor.

Every request goes to `bench_upstream` (HOST:PORT, the fake vendor) with the vendor's name kept as
the upstream TLS SNI, which is what the gateway's `upstreams:` routing does too. Nothing else: no
identity, no decision, no audit. Usage: mitmdump -s bench/mitm_route.py --set bench_upstream=H:P
"""

from __future__ import annotations

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks


class Route:
    def __init__(self) -> None:
        self.address: tuple[str, int] | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option("bench_upstream", str, "", "HOST:PORT that every request is sent to")

    def configure(self, updated: set[str]) -> None:
        if "bench_upstream" in updated:
            host, _, port = ctx.options.bench_upstream.rpartition(":")
            self.address = (host, int(port))

    def request(self, flow: http.HTTPFlow) -> None:
        assert self.address is not None, "set bench_upstream"
        flow.request.data.host, flow.request.data.port = self.address

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        data.server.sni = data.client.sni


addons = [Route()]
