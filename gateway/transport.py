"""Addresses of the gateway's own stores that would carry credentials and state in clear.

Over plain `http://` to a secret store, the store's token and every vendor secret cross the
network readable by anyone on the path; over plain `redis://`, so do revocations, approvals and
DLP tokens, which anyone on the path can also change (un-revoke a token, approve a payment).
Loopback is fine: nothing leaves the host. Both are refused at start unless the config says plain
text is intended (`secrets_allow_plaintext`, `stores.allow_plaintext`).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

# Schemes without TLS that reach a host over the network (`async+` prefixes are the same schemes).
_PLAIN = frozenset({"http", "redis", "redis+sentinel", "redis+cluster"})
_AUTHORITY_END = re.compile(r"[/?#\\]")
UNREADABLE = "a host the URL does not spell clearly (percent-encode / ? # \\ in a user name or password)"


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
    is returned, or `UNREADABLE`, never a part of the URL that may be its password.

    The authority ends at the first `/`, `?` or `#` (where Python's `urlsplit`, which redis-py
    uses, ends it) or `\\` (where urllib3, under requests and so hvac, ends it too), and the host
    follows its last `@`: cut at the first of them all, a host either client would dial is judged.
    Read otherwise, `redis://10.0.0.5#@127.0.0.1` looked like loopback while redis-py dialled
    10.0.0.5, and a password holding a `/` was shown in the refusal as if it were the host."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower().removeprefix("async+") not in _PLAIN:
        return []
    authority = _AUTHORITY_END.split(rest, maxsplit=1)[0].rpartition("@")[2]
    hosts = [_host(part) for part in authority.split(",") if part]
    return [h for h in hosts if not is_loopback(h)]


def _host(hostport: str) -> str:
    """`host` of `host:port`, or `UNREADABLE` (a malformed IPv6 address; a password's tail cut
    from the URL, like `:pa` of `redis://:pa/ss@host`), which is refused without being shown."""
    try:
        host = urlsplit(f"//{hostport}").hostname
    except ValueError:
        host = None
    return host or UNREADABLE
