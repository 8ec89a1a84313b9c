"""The upstream connection: dial only the address the pipeline checked, with the vendor's name as
SNI, so neither DNS rebinding nor a spoofed Host can move where credentials are sent."""

from __future__ import annotations

from mitmproxy.proxy import server_hooks

from gateway.proxy.flows import Tunnels


class Pinning:
    def __init__(self, tunnels: Tunnels) -> None:
        self.tunnels = tunnels

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        open_tunnel = self.tunnels.get(data.client.id)
        if open_tunnel is None or data.server.address != open_tunnel.tunnel.address:
            data.server.error = "egress-gateway: refusing to dial an address that was not checked"
            return
        data.server.sni = open_tunnel.tunnel.host
