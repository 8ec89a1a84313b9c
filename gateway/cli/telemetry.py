"""`egress-gateway quarantine` (the kill switch) and `egress-gateway baseline show|reset|ratify`.

Both act on the state dir the running gateway reads, as `token revoke` does: a quarantine row is
seen by every gateway on that state within a second (and audited by it, with the reason); a
baseline request is applied by the gateway within a second, and `show` reads the baselines it
mirrors there every second.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from gateway.errors import CliError
from gateway.identity.quarantine import Quarantines
from gateway.state import StateDir
from gateway.telemetry.baseline import BaselineFile


def add_commands(
    subparsers: Any,
    *,
    state: Callable[[argparse.Namespace], StateDir],
    quarantines: Callable[[argparse.Namespace], Quarantines],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> None:
    """`quarantines` is the running gateway's store (`stores.state`): the state dir's SQLite file
    was written even with the state on Redis, where no replica reads it (the kill switch said
    "quarantined" and stopped nothing)."""
    quarantine = subparsers.add_parser(
        "quarantine", parents=list(parents), help="stop (or --release) an agent, a tenant, a connector or everything"
    )
    which = quarantine.add_mutually_exclusive_group(required=True)
    which.add_argument("--sub", help="an agent (every token of this subject)")
    which.add_argument("--tenant", help="every agent of a tenant")
    which.add_argument("--connector", help="every call to a connector")
    which.add_argument("--all", action="store_true", help="every agent call through this gateway (kill switch)")
    quarantine.add_argument("--release", action="store_true", help="lift the quarantine instead")
    quarantine.add_argument("--reason", required=True, help="why (recorded and audited)")
    quarantine.set_defaults(func=lambda args: cmd_quarantine(args, quarantines(args)))

    baseline = subparsers.add_parser("baseline", help="agents' behaviour baselines (anomaly:)")
    commands = baseline.add_subparsers(dest="baseline_command", required=True)
    for verb, text in (("show", "print an agent's baseline as JSON"), ("reset", "forget it: the agent is observed again"),
                       ("ratify", "accept what the agent did since as normal")):
        cmd = commands.add_parser(verb, parents=list(parents), help=text)
        cmd.add_argument("agent", help="the agent's sub (or its role, with anomaly.key: role)")
        cmd.add_argument("--tenant", help="the agent's tenant, if its tokens name one")
        cmd.set_defaults(func=lambda args: cmd_baseline(args, state(args)))


def cmd_quarantine(args: argparse.Namespace, store: Quarantines) -> int:
    scope, value = next((s, v) for s, v in (("sub", args.sub), ("tenant", args.tenant), ("connector", args.connector),
                                            ("all", "*" if args.all else None)) if v is not None)
    try:
        changes = store.set(scope, value, release=args.release, reason=args.reason, by="cli")
    except (ValueError, sqlite3.Error) as e:
        raise CliError(str(e)) from None
    print(f"{'released' if args.release else 'quarantined'} {changes[-1].describe()}")
    return 0


def cmd_baseline(args: argparse.Namespace, state_dir: StateDir) -> int:
    key = f"{args.tenant or ''}/{args.agent}"
    try:
        store = BaselineFile(state_dir.baselines)
        if args.baseline_command == "show":
            found = store.load(key)
            if found is None:
                raise CliError(f"no baseline for {key!r} (is anomaly: configured, and has the agent called?)")
            print(json.dumps(found, indent=2))
        else:
            store.request(key, args.baseline_command)
            print(f"{args.baseline_command} of {key!r} requested; the running gateway applies it within a second")
    except sqlite3.Error as e:
        raise CliError(f"baselines: {e}") from None
    return 0
