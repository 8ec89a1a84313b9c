"""Egress rules: which addresses a vendor host may resolve to.

Copied from smokescreen: resolve once, classify every address, and dial exactly the address that
was checked, so DNS rebinding cannot move the connection after the check. Refused: private,
loopback, link-local, multicast, unspecified, reserved, CGNAT, cloud metadata, and IPv6 forms that
embed such an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo). `upstreams:` in the config routes a
host to a fixed address on purpose (tests, staging) and bypasses the classification for that host.

One agent's DNS trouble must not slow the others (see `Resolver`): concurrent lookups of one name
share one lookup, a failure is remembered for a few seconds, and lookups run on the resolver's own
bounded thread pool, never on asyncio's default executor that the rest of the gateway shares.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
_FAILURE_TTL = 5.0  # long enough that a flood of calls to a dead name costs one lookup, short enough to recover
_LOOKUP_WAIT = 10.0  # a caller stops waiting for a lookup (fails closed); the lookup itself runs on
_LOOKUP_THREADS = 16  # one thread per name in flight at most; names come from the config, not from agents

Lookup = Callable[[str, int], list[str]]
"""Blocking lookup of `host:port` to address strings; raises OSError when the name does not resolve."""


def system_lookup(host: str, port: int) -> list[str]:
    """The system resolver's addresses for `host:port` (getaddrinfo, scope ids dropped)."""
    return [str(info[4][0]).split("%")[0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


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
    """Resolves vendor hosts to one checked address, with a short cache.

    Hostile or broken DNS for one name must not delay another name: concurrent callers for a name
    share the one lookup in flight (a flood of N calls costs one lookup and holds one thread), a
    failure is cached for `_FAILURE_TTL` seconds (negative cache), lookups run on this resolver's
    own pool of `_LOOKUP_THREADS` threads (asyncio's default executor also serves the revocation
    refresh and the stores), and a caller waits at most `_LOOKUP_WAIT` seconds before it is refused
    (`upstream_failed`) while the slow lookup finishes in the background and fills the cache."""

    def __init__(self, routes: dict[str, tuple[str, int]], lookup: Lookup = system_lookup):
        self._routes = routes
        self._lookup = lookup
        self._pool = ThreadPoolExecutor(max_workers=_LOOKUP_THREADS, thread_name_prefix="dns")
        self._cache: dict[tuple[str, int], tuple[float, tuple[str, int] | Refusal]] = {}
        self._in_flight: dict[tuple[str, int], asyncio.Future[tuple[str, int]]] = {}

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
            if isinstance(cached[1], Refusal):
                raise Refusal(cached[1].code, cached[1].message)
            return cached[1]
        pending = self._in_flight.get(key)
        if pending is None:
            pending = self._in_flight[key] = asyncio.ensure_future(self._look_up(host, port))
            pending.add_done_callback(lambda done: self._finished(key, done))
        try:
            return await asyncio.wait_for(asyncio.shield(pending), _LOOKUP_WAIT)
        except TimeoutError:
            raise Refusal("upstream_failed", f"resolving {host} took longer than {_LOOKUP_WAIT:g}s") from None

    def _finished(self, key: tuple[str, int], done: asyncio.Future[tuple[str, int]]) -> None:
        """Forget the finished lookup; its outcome is in the cache. Retrieving the exception keeps
        asyncio from logging it when every caller had stopped waiting."""
        self._in_flight.pop(key, None)
        if not done.cancelled():
            done.exception()

    async def _look_up(self, host: str, port: int) -> tuple[str, int]:
        """One lookup on the resolver's pool; its answer or refusal is cached."""
        try:
            try:
                answers = await asyncio.get_running_loop().run_in_executor(self._pool, self._lookup, host, port)
            except (OSError, UnicodeError):
                raise Refusal("upstream_failed", f"cannot resolve {host}") from None
            target = self._check(host, port, answers)
        except Refusal as r:
            self._cache[(host, port)] = (time.monotonic() + _FAILURE_TTL, r)
            raise
        self._cache[(host, port)] = (time.monotonic() + _DNS_TTL, target)
        return target

    def _check(self, host: str, port: int, answers: list[str]) -> tuple[str, int]:
        addrs = [ipaddress.ip_address(a) for a in answers]
        for addr in addrs:
            reason = classify(addr)
            if reason:
                # One bad answer taints the name: a rebinding attacker mixes good and bad records.
                raise Refusal("address_denied", f"{host} resolves to a {reason} address")
        if not addrs:
            raise Refusal("upstream_failed", f"cannot resolve {host}")
        return str(addrs[0]), port

    def close(self) -> None:
        """Stop the lookup threads without waiting for a lookup stuck in the system resolver."""
        self._pool.shutdown(wait=False, cancel_futures=True)
