"""The `egress-gateway` command line (contract: ../shared/DESIGN.md, "Command line").

Every command takes `--config` and `--state-dir`, so they all find the same state as `run`.
Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import ca, config, identity
from gateway.config import Config, ConfigError, parse_duration
from gateway.revocation import Revocations
from gateway.state import StateDir

Command = Callable[[argparse.Namespace, Config], int]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _load(args: argparse.Namespace) -> Config:
    overrides = {
        "state_dir": getattr(args, "state_dir", None),
        "listen": getattr(args, "listen", None),
        "api_listen": getattr(args, "api_listen", None),
        "policies": getattr(args, "policies", None),
    }
    return config.load(args.config, overrides)


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from gateway import runtime, server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    try:
        rt = runtime.build(cfg)
    except ValueError as e:
        raise CliError(str(e)) from None
    asyncio.run(server.serve(rt))
    return 0


def cmd_ca_path(args: argparse.Namespace, cfg: Config) -> int:
    print(ca.ensure(StateDir.open(cfg.state_path)))
    return 0


def cmd_token_issue(args: argparse.Namespace, cfg: Config) -> int:
    state = StateDir.open(cfg.state_path)
    key = identity.load_or_create_key(state.signing_key)
    try:
        ttl = parse_duration(args.ttl)
        token = identity.issue(
            key,
            sub=args.sub,
            role=args.role,
            ttl=ttl,
            max_ttl=cfg.max_token_ttl,
            tenant=args.tenant,
            scopes=tuple(args.scope or ()),
        )
    except ValueError as e:
        raise CliError(str(e)) from None
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace, cfg: Config) -> int:
    state = StateDir.open(cfg.state_path)
    Revocations(state.revocations).revoke(jti=args.jti, sub=args.sub)
    print(f"revoked {'jti ' + args.jti if args.jti else 'sub ' + args.sub}")
    return 0


def cmd_connectors(args: argparse.Namespace, cfg: Config) -> int:
    from connectors import registry

    try:
        reg = registry.load(cfg.connectors)
    except registry.RegistryError as e:
        raise CliError(str(e)) from None
    for c in reg:
        print(f"{c.name}  ({', '.join(c.hosts)})")
        for a in c.actions:
            print(f"  {a.name:<26} {a.method:<6} {a.path}  [{a.encoding.value}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="gateway.yaml (default: embedded defaults)")
    common.add_argument("--state-dir", type=Path, help="CA, keys, audit log, vault (default ~/.egress-gateway)")

    parser = argparse.ArgumentParser(prog="egress-gateway", description="The egress gateway for AI agents.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="start the proxy and the API")
    run.add_argument("--listen", help="proxy HOST:PORT (default 127.0.0.1:8080)")
    run.add_argument("--api-listen", help="API HOST:PORT (default 127.0.0.1:8081)")
    run.add_argument("--policies", type=Path, help="directory of policy files")
    run.set_defaults(func=cmd_run)

    ca_cmd = sub.add_parser("ca", help="the CA agents must trust").add_subparsers(dest="ca_command", required=True)
    ca_cmd.add_parser("path", parents=[common], help="print the CA certificate's path").set_defaults(func=cmd_ca_path)

    token = sub.add_parser("token", help="agent tokens").add_subparsers(dest="token_command", required=True)
    issue = token.add_parser("issue", parents=[common], help="print a signed agent JWT")
    issue.add_argument("--sub", required=True, help="the agent's id")
    issue.add_argument("--role", required=True, help="the agent's role (policies select on it)")
    issue.add_argument("--tenant")
    issue.add_argument("--scope", action="append", help="connector:action or connector:* (repeatable)")
    issue.add_argument("--ttl", default="15m", help="lifetime, at most max_token_ttl (default 15m)")
    issue.set_defaults(func=cmd_token_issue)
    revoke = token.add_parser("revoke", parents=[common], help="revoke a token by jti, or all of a subject's")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--jti")
    which.add_argument("--sub")
    revoke.set_defaults(func=cmd_token_revoke)

    sub.add_parser("connectors", parents=[common], help="list connectors and actions").set_defaults(
        func=cmd_connectors
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = _load(args)
        return int(args.func(args, cfg))
    except (CliError, ConfigError) as e:
        print(f"egress-gateway: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
