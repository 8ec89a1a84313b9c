"""An agent's MCP client as agents run it: the official SDK's streamable-HTTP client, configured by
nothing but the exports `egress-gateway env` prints (HTTPS_PROXY and the CA bundle)."""

from __future__ import annotations

import os
import shlex
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import GetSessionIdCallback, streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from gateway.cli.agent_env import exports, proxy_url
from tests.cli.env_clients import CLEARED
from tests.processes import GatewayProcess

Exports = dict[str, str]


def agent_exports(gw: GatewayProcess, sub: str, role: str, *scopes: str) -> Exports:
    """What `eval "$(egress-gateway env ...)"` would set, read from the command's own output."""
    args = ["env", "--sub", sub, "--role", role, "--ttl", "20m"]
    for scope in scopes:
        args += ["--scope", scope]
    out = gw.cli(*args).stdout
    return {name: shlex.split(value)[0] for name, _, value in (line.removeprefix("export ").partition("=") for line in out.splitlines())}


def same_exports(gw: GatewayProcess, like: Exports, sub: str, role: str, *scopes: str) -> Exports:
    """The variables `egress-gateway env` prints, for another agent, without another process: the
    same bundle, a token of its own (`gateway.cli.agent_env` writes them for the command too)."""
    token = gw.token(sub=sub, role=role, scopes=scopes, ttl=1200)
    text = exports(proxy_url(f"127.0.0.1:{gw.port}", sub, token), Path(like["SSL_CERT_FILE"]))
    return {name: shlex.split(value)[0] for name, _, value in (line.removeprefix("export ").partition("=") for line in text.splitlines())}


@contextmanager
def environment(exports: Exports) -> Iterator[None]:
    """The process environment, for the moment a client is built, holding only the agent's own
    proxy and CA settings (the runner's are removed): httpx reads them when a client is made."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if CLEARED.match(n)]:
        del os.environ[name]
    os.environ.update(exports)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def http_client(exports: Exports, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """The client the MCP SDK makes (`create_mcp_http_client`), made in the agent's environment."""
    with environment(exports):
        return create_mcp_http_client(headers=headers, timeout=httpx.Timeout(30, read=60))


@asynccontextmanager
async def mcp_session(
    exports: Exports, url: str, headers: dict[str, str] | None = None, **session: Any
) -> AsyncIterator[tuple[ClientSession, GetSessionIdCallback]]:
    """An initialized MCP session through the gateway, and what tells its session id."""
    async with http_client(exports, headers) as client, streamable_http_client(url, http_client=client) as (read, write, ident):
        async with ClientSession(read, write, **session) as s:
            await s.initialize()
            yield s, ident
