"""Addresses of the gateway's own stores that would carry credentials and state in clear.

Over plain `http://` to a secret store, the store's token and every vendor secret cross the
network readable by anyone on the path; over plain `redis://`, so do revocations, approvals and
DLP tokens, which anyone on the path can also change (un-revoke a token, approve a payment).
Loopback is fine: nothing leaves the host. Both are refused at start unless the config says plain
text is intended (`secrets_allow_plaintext`, `stores.allow_plaintext`).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

# Schemes without TLS that reach a host over the network (`async+` prefixes are the same schemes).
_PLAIN = frozenset({"http", "redis", "redis+sentinel", "redis+cluster"})


def is_loopback(host: str) -> bool:
    """`localhost`, a `.localhost` name, or a loopback IP address (127.0.0.0/8, ::1, ::ffff:127.x)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None  # ::ffff:127.0.0.1 on any Python
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def plaintext_hosts(url: str) -> list[str]:
    """The hosts other than loopback that `url` reaches without TLS (each host of a sentinel or
    cluster list); empty for https://, rediss://, unix sockets and anything else. Only the host
    is returned: the URL itself may hold a password."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower().removeprefix("async+") not in _PLAIN:
        return []
    netloc = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    hosts = [urlsplit(f"//{part}").hostname or part for part in netloc.split(",") if part]
    return [h for h in hosts if not is_loopback(h)]
