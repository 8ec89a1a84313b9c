"""`egress-gateway mcp pins [SERVER]` and `egress-gateway mcp accept SERVER TOOL`: the rug-pull
guard's pins, seen and accepted by an operator (the admin API has the same under `/v1/mcp/`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from gateway.errors import CliError
from gateway.mcp.store import McpStore


def add_mcp_commands(
    subparsers: Any, *, open_store: Callable[[argparse.Namespace], McpStore], parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    group = subparsers.add_parser("mcp", help="MCP tool pins: list them, accept a changed definition")
    cmds = group.add_subparsers(dest="mcp_command", required=True)
    pins = cmds.add_parser("pins", help="every pinned tool definition, one JSON object a line", parents=list(parents))
    pins.add_argument("server", nargs="?")
    pins.set_defaults(func=lambda a: mcp_pins(open_store(a), a.server))
    accept = cmds.add_parser("accept", help="accept a tool's changed definition (shown and callable again)", parents=list(parents))
    accept.add_argument("server")
    accept.add_argument("tool")
    accept.set_defaults(func=lambda a: mcp_accept(open_store(a), a.server, a.tool))


def mcp_pins(store: McpStore, server: str | None) -> int:
    for pin in store.pins(server):
        print(json.dumps(pin.as_dict(), sort_keys=True))
    return 0


def mcp_accept(store: McpStore, server: str, tool: str) -> int:
    pin = store.accept(server, tool)
    if pin is None:
        raise CliError(f"{server} tool {tool} has no changed definition waiting (see `egress-gateway mcp pins {server}`)")
    print(f"accepted {server} {tool}: {pin.pinned}")
    return 0
