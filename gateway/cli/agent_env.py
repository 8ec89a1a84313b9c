"""`egress-gateway env`: the shell exports that make any common client use the gateway.

Which variable each client reads (verified by tests/cli/test_env_clients.py where a test can run
the client): httpx and the OpenAI/Anthropic SDKs `SSL_CERT_FILE`, requests `REQUESTS_CA_BUNDLE`,
curl `CURL_CA_BUNDLE`, Node `NODE_EXTRA_CA_CERTS`, Go `SSL_CERT_FILE`; all of them `HTTPS_PROXY`,
but a lowercase `https_proxy` already in the environment wins over it in every one of them, so both
are set. Printing all of them, pointing at one bundle, means an agent never has to know which it is.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import quote

from gateway.config import parse_hostport

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy")
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
_WILDCARDS = ("0.0.0.0", "::", "")
_UNSAFE = re.compile(r"[^A-Za-z0-9._~-]+")


def proxy_url(listen: str, sub: str, token: str, host: str | None = None) -> str:
    """`http://USER:TOKEN@HOST:PORT`: the token is the proxy password, the user name only the sub
    made readable. A gateway listening on every address is reached on loopback unless `host` says
    otherwise."""
    bound, port = parse_hostport(listen, "listen")
    host = host or ("127.0.0.1" if bound in _WILDCARDS else bound)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{user_name(sub)}:{quote(token, safe='')}@{host}:{port}"


def user_name(sub: str) -> str:
    """The sub with every run of characters other than ASCII letters, digits and `._~-` made one
    `-` (`agent` if nothing is left). Clients differ on any other character in a proxy URL's user
    name: aiohttp refuses a `:` in it, requests and aiohttp send it as Latin-1 (and requests fails
    on a character outside Latin-1) where curl sends UTF-8. Nothing reads it but a person."""
    return _UNSAFE.sub("-", sub).strip("-") or "agent"


def exports(proxy: str, bundle: Path) -> str:
    """POSIX shell `export` lines, every value `shlex.quote`d so `eval` never expands or splits it."""
    pairs = [*((name, proxy) for name in PROXY_VARIABLES), *((name, str(bundle)) for name in CA_VARIABLES)]
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in pairs)
