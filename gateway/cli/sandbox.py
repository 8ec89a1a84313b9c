"""`egress-gateway sandbox run TOOL --input JSON`: run a tool locally, without the gateway running.

It takes the same `--config`/`--state-dir` as every other command, so it runs the same tools as the
gateway (the configured or shipped ones and those registered through `POST /v1/tools` into the state
dir, with the same signature rules and the config's connectors) and loads their compiled code from
the state dir's cache instead of compiling it again.

With no `--proxy`, every host call the tool makes is refused (`sandbox_forbidden`) and nothing leaves
the machine; with `--proxy URL --token JWT --ca FILE` host calls go through that gateway like the
API's runs do. The manifest's ceiling applies either way. The role is the one a caller would hold
(`--role`, default `local`); a tool whose manifest does not list it is refused as it would be there.
Prints the result as JSON; a refusal prints the gateway's JSON error (with a `dec_` decision id, the
one its host calls' refusals carry too) and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.cli.progress import progress
from gateway.config import Config
from gateway.connector_admin import registry_of
from gateway.errors import Refusal
from gateway.pipeline.call import new_decision_id
from gateway.sandbox_service import cache_dir, load_tools
from gateway.state import StateDir
from sandbox import SandboxRunner, connector_resolver, make_proxy_sender, refuse_all, run_tool
from sandbox.hostcall import HttpRequest


def add_commands(
    subparsers: Any,
    *,
    config: Callable[[argparse.Namespace], Config],
    state: Callable[[argparse.Namespace], StateDir],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> None:
    sandbox = subparsers.add_parser("sandbox", help="run WASM tools")
    commands = sandbox.add_subparsers(dest="sandbox_command", required=True)
    run = commands.add_parser("run", help="run one tool on one input and print the result", parents=list(parents))
    run.add_argument("tool")
    run.add_argument("--input", default="{}", help="the input JSON object")
    run.add_argument("--tools", type=Path, default=None, help="directory of tool manifests (default: the config's)")
    run.add_argument("--role", default="local")
    run.add_argument("--cache-dir", type=Path, default=None, help="compiled modules (default: the state dir's)")
    run.add_argument("--proxy", default=None, help="the gateway's proxy URL for host calls")
    run.add_argument("--token", default=None, help="agent token for host calls through --proxy")
    run.add_argument("--ca", default=None, help="the gateway's CA certificate (egress-gateway ca path)")
    run.add_argument("--timeout", type=float, default=30.0, help="seconds per host call")
    run.set_defaults(func=lambda args: cmd_run(args, config(args), state(args)))


def cmd_run(args: argparse.Namespace, cfg: Config, state_dir: StateDir) -> int:
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
    with progress("loading the tools (a first run compiles them: seconds for a Python tool)"):
        registry, _ = load_tools(cfg, state_dir, args.tools)
    resolve = connector_resolver(registry_of(cfg))
    runner = SandboxRunner(cache_dir=args.cache_dir or cache_dir(state_dir), max_workers=1)
    decision_id = new_decision_id()
    try:
        with progress(f"running {args.tool} (compiled on its first run, then cached)"):
            result = asyncio.run(run_tool(runner, registry, args.tool, tool_input, args.role, sender, resolve, decision_id))
    except Refusal as r:
        print(r.body(decision_id).decode())
        return 1
    finally:
        runner.close()
    print(json.dumps({
        "output": result.output,
        "fuel_used": result.fuel_used,
        "duration_ms": result.duration_ms,
        "host_calls": result.host_calls,
        "decision_id": decision_id,
    }))
    return 0
