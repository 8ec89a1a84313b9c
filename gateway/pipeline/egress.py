"""Egress rules: which addresses a vendor host may resolve to.

Copied from smokescreen: resolve once, classify every address, and dial exactly the address that
was checked, so DNS rebinding cannot move the connection after the check. Refused: private,
loopback, link-local, multicast, unspecified, reserved, CGNAT, cloud metadata, and IPv6 forms that
embed such an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo). `upstreams:` in the config routes a
host to a fixed address on purpose (tests, staging) and bypasses the classification for that host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from gateway.errors import Refusal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_DNS_TTL = 30.0


def classify(addr: IPAddress) -> str | None:
    """Why `addr` is not a public destination, or None if it is."""
    if addr in METADATA:
        return "cloud metadata"
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            reason = classify(embedded)
            return f"embeds {reason} IPv4" if reason else None
    for reason, test in (
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("unspecified", addr.is_unspecified),
        ("private", addr.is_private),
        ("reserved", addr.is_reserved),
        ("CGNAT", isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT),
        ("non-global", not addr.is_global),
    ):
        if test:
            return reason
    return None


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64 or addr in _NAT64_LOCAL:
        return ipaddress.IPv4Address(addr.packed[-4:])
    return None


class Resolver:
    """Resolves vendor hosts to one checked address, with a short cache."""

    def __init__(self, routes: dict[str, tuple[str, int]]):
        self._routes = routes
        self._cache: dict[tuple[str, int], tuple[float, tuple[str, int]]] = {}

    async def resolve(self, host: str, port: int) -> tuple[str, int]:
        """The (ip, port) to dial for `host:port`; refuses with `address_denied` if none is public."""
        routed = self._routes.get(host)
        if routed is not None:
            return routed
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            reason = classify(literal)
            if reason:
                raise Refusal("address_denied", f"{host} is a {reason} address")
            return host, port
        key = (host, port)
        cached = self._cache.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise Refusal("upstream_failed", f"cannot resolve {host}") from None
        addrs = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        for addr in addrs:
            reason = classify(addr)
            if reason:
                # One bad answer taints the name: a rebinding attacker mixes good and bad records.
                raise Refusal("address_denied", f"{host} resolves to a {reason} address")
        if not addrs:
            raise Refusal("upstream_failed", f"cannot resolve {host}")
        target = (str(addrs[0]), port)
        self._cache[key] = (time.monotonic() + _DNS_TTL, target)
        return target
