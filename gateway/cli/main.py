"""The `egress-gateway` command line (the README's "Command line" section).

Every command takes `--config` and `--state-dir` (before or after the command name), so they all
find the same state as `run`. Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dlp.vault import StoreUnavailable, sqlite_path, sqlite_stats
from gateway import config
from gateway.cli import agent_env
from gateway.cli import policy as policy_cli
from gateway.cli import sandbox as sandbox_cli
from gateway.cli import telemetry as telemetry_cli
from gateway.cli.mcp import add_mcp_commands
from gateway.cli.progress import progress
from gateway.config import Config, ConfigError, parse_duration, parse_hostport
from gateway.errors import CliError, GatewayError
from gateway.identity import keys as keyring
from gateway.identity import tokens as identity
from gateway.policy.approvals import ApprovalStore
from gateway.policy.load import ConnectorLookup
from gateway.proxy import ca
from gateway.state import StateDir
from gateway.stores import open_state

if TYPE_CHECKING:
    from connectors.registry import Registry


class _Parser(argparse.ArgumentParser):
    """A usage error of a command whose output is `eval`ed (`env`) must fail the `eval` as well."""

    def error(self, message: str) -> NoReturn:
        if failed := self.get_default("eval_on_failure"):
            print(failed)
        super().error(message)


def _config(args: argparse.Namespace) -> Config:
    """The config for this invocation: the file, then the flags; loaded once per run."""
    cached = getattr(args, "_config", None)
    if cached is None:
        overrides = {
            "state_dir": getattr(args, "state_dir", None),
            "listen": getattr(args, "listen", None),
            "api_listen": getattr(args, "api_listen", None),
            "policies": getattr(args, "policies", None),
            "log_format": getattr(args, "log_format", None),
            "workers": getattr(args, "workers", None),
        }
        cached = args._config = config.load(getattr(args, "config", None), overrides)
    return cached


def _state(args: argparse.Namespace) -> StateDir:
    return StateDir.open(_config(args).state_path)


def _policies_dir(args: argparse.Namespace) -> Path:
    return _config(args).policies or Path("policies")


def _keys(args: argparse.Namespace) -> keyring.KeyRing:
    """The running gateway's keys: `keys:` from the config, or the state dir's own."""
    return keyring.load(_config(args), _state(args))


def _public_keys(args: argparse.Namespace) -> list[Ed25519PublicKey]:
    """Every key the audit log may be signed with: the signing key and the rotated-out ones."""
    return [k.public for k in _keys(args).verifying]


def _approvals(args: argparse.Namespace) -> ApprovalStore:
    """The running gateway's approval store (`stores.state`), with its configured expiry."""
    return open_state(_config(args), _state(args)).approvals


def _registry(args: argparse.Namespace) -> Registry:
    """What `run` registers: the entry points, the config's `connectors:` and those registered
    through the API (kept in the state dir)."""
    from gateway.connector_admin import registry_of

    try:
        return registry_of(_config(args))
    except GatewayError as e:
        raise CliError(str(e)) from None


def _lookup(args: argparse.Namespace) -> ConnectorLookup:
    return _registry(args).get


class _OneLineFormatter(logging.Formatter):
    """Every character of a log line that is not printable is escaped (`\\n`, `\\x1b`, `\\u2028`):
    a line holds strings from agents (a token's sub and tenant, a tool's name), and a newline in one
    forged a whole line, an ANSI escape coloured the operator's terminal, a right-to-left override
    reversed the line. A traceback is appended after, on lines of its own, as before."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return line if line.isprintable() else "".join(c if c.isprintable() else _escaped(c) for c in line)


def _escaped(char: str) -> str:
    """`char` as a Python string literal writes it: `\\n`, `\\x1b`, `\\u2028`."""
    return char.encode("unicode_escape").decode("ascii")


def _log_to_stderr(line_format: str) -> None:
    """Log lines on stderr. The gateway's loggers have the handler themselves and stop there: on
    the root logger mitmproxy turns each record into a hook event for every addon, woken through
    the loop's self-pipe, which made the access log's two lines a call cost more than the audit
    log. No caller, thread or process is looked up for a record: the format shows none of them."""
    logging._srcfile = None  # the logging HOWTO's "Optimization": no stack walk per record
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineFormatter(line_format))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    ours = logging.getLogger("gateway")
    ours.addHandler(handler)
    ours.propagate = False


def _start_up_done() -> None:
    """The end of the gateway's start-up: the cyclic garbage collector runs again from here on.

    Start-up (importing mitmproxy, Presidio and spaCy, building the DLP engine) makes a few
    million long-lived objects and next to no garbage, yet the collector, triggered by allocations,
    walked them over and over: ~15% of a gateway's start-up CPU. `python -m gateway.cli` turns it
    off before its first import (`main` turns it on again for the other commands) and `run` for its
    own imports and build; `gc.freeze` then keeps what start-up made out of every later collection."""
    gc.freeze()
    gc.enable()


def cmd_run(args: argparse.Namespace) -> int:
    gc.disable()  # for run's own imports and build: see _start_up_done
    cfg = _config(args)
    from gateway import supervisor
    from gateway.identity import keys as keyring

    worker = supervisor.WorkerSockets.parse(args.worker) if args.worker else None
    who = f"worker-{worker.index} " if worker else ""
    _log_to_stderr(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")
    for noisy in ("mitmproxy", "presidio-analyzer"):  # one line per loaded recognizer otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if worker is None and cfg.workers > 1:
            # Keys and CA exist (or are refused) before the workers start, so they never race to create them.
            ring = keyring.load(cfg, _state(args))
            ca.ensure(_state(args), ring.ca_pem)
            _start_up_done()
            return supervisor.Supervisor(cfg, args.argv).run()
        # Only a process that serves imports the proxy (mitmproxy, ~1 s): the supervisor above
        # spawns its workers without, so they start that much sooner.
        from gateway import runtime
        from gateway.proxy import server

        if worker is None:
            server.check_listen(cfg)
        with progress("loading connectors, policies and the DLP models"):
            rt = runtime.build(cfg, worker.index if worker else None)
    except GatewayError as e:
        raise CliError(str(e)) from None
    finally:
        _start_up_done()
    asyncio.run(server.serve(rt, worker))
    logging.getLogger("gateway").info("stopped; the audit log is sealed")
    return 0


def _ensure_ca(args: argparse.Namespace) -> Path:
    with progress("creating the gateway CA"):
        return ca.ensure(_state(args), _keys(args).ca_pem)


def cmd_ca_path(args: argparse.Namespace) -> int:
    print(_ensure_ca(args))
    return 0


def _issue(args: argparse.Namespace) -> str:
    """A token from `--sub/--role/--tenant/--scope/--ttl`, the same for `token issue` and `env`."""
    cfg = _config(args)
    key = _keys(args).signing
    try:
        ttl = parse_duration(args.ttl)
        return identity.issue(
            key,
            sub=args.sub,
            role=args.role,
            ttl=ttl,
            max_ttl=cfg.metrics_token_ttl if args.role == identity.METRICS_ROLE else cfg.max_token_ttl,
            tenant=args.tenant,
            scopes=tuple(args.scope or ()),
        )
    except ValueError as e:
        raise CliError(str(e)) from None


def cmd_token_issue(args: argparse.Namespace) -> int:
    print(_issue(args))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """Only the exports go to stdout (for `eval`); what was issued is said on stderr."""
    token = _issue(args)
    _ensure_ca(args)
    bundle = ca.agent_bundle(_state(args), _keys(args).ca_pem)
    print(agent_env.exports(agent_env.proxy_url(_config(args).listen, args.sub, token, args.proxy_host), bundle))
    print(f"egress-gateway: token for {args.sub!r} (role {args.role!r}), valid {args.ttl}", file=sys.stderr)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    if not (args.jti or args.sub):
        raise CliError("name the token to revoke: --jti or --sub must not be empty")
    open_state(_config(args), _state(args)).revocations.revoke(jti=args.jti, sub=args.sub)
    print(f"revoked {'jti ' + args.jti if args.jti else 'sub ' + args.sub}")
    return 0


def cmd_vault_stats(args: argparse.Namespace) -> int:
    """Entries, expired entries awaiting the purge, and the oldest entry's age: never a value."""
    dlp = _config(args).dlp
    path = sqlite_path(dlp.vault, _state(args).root)
    if path is None:
        raise CliError("vault stats reads SQLite vaults; a Redis vault expires its entries itself")
    try:
        stats = sqlite_stats(path, dlp.token_ttl)
    except StoreUnavailable as e:
        raise CliError(str(e)) from None
    print(json.dumps({**asdict(stats), "retention_s": dlp.token_ttl, "purge_every_s": dlp.purge_every}))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The gateway's readiness and attestation: its `/readyz` at `api_listen` when it answers, else
    what its last start recorded in the state dir. Exit 0 only when it runs and is ready."""
    import httpx

    from gateway import attest

    cfg = _config(args)
    host, port = parse_hostport(cfg.api_listen, "api_listen")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/readyz"
    try:
        r = httpx.get(url, timeout=5, trust_env=False)  # never through a proxy from the environment
        body = r.json()
    except (httpx.HTTPError, ValueError):
        recorded = attest.read_recorded(_state(args))
        if recorded is None:
            raise CliError(f"no gateway answers at {url}, and none has started with the state dir {cfg.state_path}") from None
        print(json.dumps({"running": False, "api": url, "started": recorded.get("started"),
                          "attestation": recorded.get("artifacts")}, indent=2))
        return 1
    print(json.dumps({"running": True, "api": url, **body}, indent=2))
    return 0 if r.status_code == 200 else 1


def cmd_connectors(args: argparse.Namespace) -> int:
    registry = _registry(args)
    for c in registry:
        print(f"{c.name}  ({', '.join(c.hosts)})  [{registry.origin(c.name)}]")
        for a in c.actions:
            print(f"  {a.name:<26} {a.method:<6} {a.path}  [{a.encoding.value}]")
    return 0


def _add_location(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--config", type=Path, default=default, help="gateway.yaml (default: embedded defaults)")
    parser.add_argument("--state-dir", type=Path, default=default,
                        help="CA, keys, audit log, vault (default ~/.egress-gateway)")


def _add_token_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sub", required=True, help="the agent's id")
    parser.add_argument("--role", required=True, help="the agent's role (policies select on it)")
    parser.add_argument("--tenant")
    parser.add_argument("--scope", action="append", help="connector:action or connector:* (repeatable)")
    parser.add_argument("--ttl", default="15m", help="lifetime, at most max_token_ttl (default 15m)")


def _version() -> str:
    try:
        return f"egress-gateway {metadata.version('egress-gateway')}"
    except metadata.PackageNotFoundError:
        return "egress-gateway (not installed: run `pip install -e .`; version unknown)"


def build_parser() -> argparse.ArgumentParser:
    # Given after the command they override the same options given before it; absent, they leave
    # the top-level value alone (SUPPRESS), so `egress-gateway --config X ca path` works too.
    common = _Parser(add_help=False)
    _add_location(common, argparse.SUPPRESS)

    parser = argparse.ArgumentParser(prog="egress-gateway", description="The egress gateway for AI agents.")
    parser.add_argument("--version", action="version", version=_version())
    _add_location(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", parents=[common], help="start the proxy and the API")
    run.add_argument("--listen", help="proxy HOST:PORT (default 127.0.0.1:8080)")
    run.add_argument("--api-listen", help="API HOST:PORT (default 127.0.0.1:8081)")
    run.add_argument("--policies", type=Path, help="directory of policy files")
    run.add_argument("--log-format", choices=("plain", "json"), help="the access log on stderr (default plain)")
    run.add_argument("--workers", type=int, help="processes serving the same two ports (default 1; config `workers`)")
    run.add_argument("--worker", help=argparse.SUPPRESS)  # set by the supervisor: INDEX:PROXY_FD,API_FD,READY_FD
    run.set_defaults(func=cmd_run)

    ca_cmd = sub.add_parser("ca", help="the CA agents must trust").add_subparsers(dest="ca_command", required=True)
    ca_cmd.add_parser("path", parents=[common], help="print the CA certificate's path").set_defaults(func=cmd_ca_path)

    token = sub.add_parser("token", help="agent tokens").add_subparsers(dest="token_command", required=True)
    issue = token.add_parser("issue", parents=[common], help="print a signed agent JWT")
    _add_token_args(issue)
    issue.set_defaults(func=cmd_token_issue)
    revoke = token.add_parser("revoke", parents=[common], help="revoke a token by jti, or all of a subject's")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--jti")
    which.add_argument("--sub")
    revoke.set_defaults(func=cmd_token_revoke)

    env = sub.add_parser("env", parents=[common], help='issue a token and print the exports: eval "$(egress-gateway env ...)"')
    _add_token_args(env)
    env.add_argument("--proxy-host", help="the host agents reach the proxy at (default: its listen address)")
    # On failure stdout gets `false`: `eval` of nothing succeeds, so `eval "$(egress-gateway env ...)"
    # && start-agent` would start the agent without the exports.
    env.set_defaults(func=cmd_env, eval_on_failure="false")
    vault = sub.add_parser("vault", help="the DLP vault").add_subparsers(dest="vault_command", required=True)
    vault.add_parser("stats", parents=[common], help="entries and oldest age, as JSON").set_defaults(func=cmd_vault_stats)

    sub.add_parser("status", parents=[common], help="readiness and the sha256 of every loaded artifact, as JSON").set_defaults(
        func=cmd_status
    )
    sub.add_parser("connectors", parents=[common], help="list connectors and actions").set_defaults(
        func=cmd_connectors
    )
    policy_cli.add_policy_commands(
        sub, lookup=_lookup, policies_dir=_policies_dir, audit_dir=lambda a: _state(a).root,
        mcp_store=lambda a: open_state(_config(a), _state(a)).mcp, parents=[common],
    )
    policy_cli.add_approvals_commands(sub, open_store=_approvals, parents=[common])
    add_mcp_commands(sub, open_store=lambda a: open_state(_config(a), _state(a)).mcp, parents=[common])
    policy_cli.add_audit_commands(sub, audit_dir=lambda a: _state(a).root, public_keys=_public_keys, parents=[common])
    sandbox_cli.add_commands(sub, config=_config, state=_state, parents=[common])
    telemetry_cli.add_commands(sub, state=_state, quarantines=lambda a: open_state(_config(a), _state(a)).quarantine, parents=[common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `run --workers N` repeats it for each worker
    try:
        _config(args)
        gc.enable()  # `python -m gateway.cli` imported this module without it: see _start_up_done
        return int(args.func(args))
    except (CliError, ConfigError, StoreUnavailable) as e:
        print(f"egress-gateway: {e}", file=sys.stderr)
        if failed := getattr(args, "eval_on_failure", None):
            print(failed)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
