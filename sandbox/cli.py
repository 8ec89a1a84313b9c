"""`egress-gateway sandbox run TOOL --input JSON`: run a tool locally, without the gateway running.

With no `--proxy`, every host call the tool makes is refused (`sandbox_forbidden`) and nothing leaves
the machine; with `--proxy URL --token JWT --ca FILE` host calls go through that gateway like the
API's runs do. The manifest's ceiling applies either way. The role is the one a caller would hold
(`--role`, default `local`); a tool whose manifest does not list it is refused as it would be there.
Prints the result as JSON; a refusal prints the gateway's JSON error and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

from connectors import registry as connectors_registry
from gateway.errors import Refusal
from sandbox.egress import connector_resolver, make_proxy_sender, refuse_all
from sandbox.hostcall import HttpRequest
from sandbox.registry import ToolRegistry, builtin_tools_dir
from sandbox.runner import SandboxRunner
from sandbox.service import run_tool


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sandbox = subparsers.add_parser("sandbox", help="run WASM tools")
    commands = sandbox.add_subparsers(dest="sandbox_command", required=True)
    run = commands.add_parser("run", help="run one tool on one input and print the result")
    run.add_argument("tool")
    run.add_argument("--input", default="{}", help="the input JSON object")
    run.add_argument("--tools", type=Path, default=builtin_tools_dir(), help="directory of tool manifests")
    run.add_argument("--role", default="local")
    run.add_argument("--cache-dir", type=Path, default=None, help="where compiled modules are kept")
    run.add_argument("--proxy", default=None, help="the gateway's proxy URL for host calls")
    run.add_argument("--token", default=None, help="agent token for host calls through --proxy")
    run.add_argument("--ca", default=None, help="the gateway's CA certificate (egress-gateway ca path)")
    run.add_argument("--timeout", type=float, default=30.0, help="seconds per host call")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        tool_input = json.loads(args.input)
    except ValueError:
        print("--input is not JSON", file=sys.stderr)
        return 2
    if not isinstance(tool_input, dict):
        print("--input must be a JSON object", file=sys.stderr)
        return 2
    if args.proxy and not (args.token and args.ca):
        print("--proxy needs --token and --ca", file=sys.stderr)
        return 2
    sender: HttpRequest = make_proxy_sender(args.proxy, args.ca, args.token, args.timeout) if args.proxy else refuse_all
    registry = ToolRegistry.load(args.tools)
    runner = SandboxRunner(cache_dir=args.cache_dir, max_workers=1)
    try:
        result = asyncio.run(
            run_tool(
                runner, registry, args.tool, tool_input, args.role, sender,
                connector_resolver(connectors_registry.load()),
            )
        )
    except Refusal as r:
        print(r.body(uuid.uuid4().hex).decode())
        return 1
    finally:
        runner.close()
    print(json.dumps({
        "output": result.output,
        "fuel_used": result.fuel_used,
        "duration_ms": result.duration_ms,
        "host_calls": result.host_calls,
    }))
    return 0
