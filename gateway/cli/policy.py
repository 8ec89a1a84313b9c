"""Command-line glue for policies, approvals and the audit log (registered by `gateway.cli`).

Each `add_*_commands` adds a command group to an argparse sub-parser collection. Leaf commands set
`func`, which takes the parsed `args` and returns the exit code. Where state lives (policy
directory, audit file, approvals database, keys) is the CLI's business, so it is passed in as
resolver functions of `args` (which carry `--config`/`--state-dir`).

    egress-gateway policy check [--policies DIR] [PATH ...]   exit 1 with file:line: reason
    egress-gateway policy test [--policies DIR] --as ROLE [--sub ID] [--tenant T] [--confidence X] REQUEST.json
    egress-gateway policy test ... --mcp-server NAME --tool TOOL [--arguments JSON]
    egress-gateway policy report [DIR_OR_FILE ...]
    egress-gateway approvals list [--all] [--json]
    egress-gateway approvals approve|deny ID [--by NAME]
    egress-gateway audit verify [DIR_OR_FILE ...] [--strict]   exit 1 naming the first bad record

`policy check` and `policy test` judge against the connectors `run` would load from the same
`--config` (its `connectors:` included), and the policy directory `run` would use (`--policies`,
else the config's `policies:`), so they never disagree with the running gateway about what exists.

`policy test` reads `{"connector": ..., "action": ..., "params": {...}}` and prints the decision
the policy gives, without sending anything and without charging rates or budgets (it lists them).
It exits 0 for allow and 1 for deny or approval_required. An MCP tool call is the same question
(the server is the connector, the tool its action, the arguments its params), asked with
`--mcp-server/--tool/--arguments` or in the file; its arguments are first checked against the
input schema the gateway pinned for the tool (read from the state dir's store, as `mcp pins`
does), and what was checked is shown under `mcp`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from connectors import codecs
from connectors.model import BodyEncoding, McpConnector
from connectors.registry import Route
from gateway.audit.log import verify
from gateway.errors import CliError, GatewayError
from gateway.identity.tokens import Identity
from gateway.mcp.schema import ArgumentsSchema, SchemaCache, SchemaRefused
from gateway.mcp.store import McpStore
from gateway.pipeline.call import Call
from gateway.pipeline.request import McpRequest, RequestView
from gateway.pipeline.steps import CONFIDENCE_HEADER, PATH_PARAMS
from gateway.policy.approvals import ApprovalError, ApprovalStore
from gateway.policy.engine import Subject
from gateway.policy.load import ConnectorLookup, PolicyLoadError, check, load_policy_set
from gateway.policy.report import format_report, report_files

T = TypeVar("T")
FromArgs = Callable[[argparse.Namespace], T]


def add_policy_commands(
    subparsers: Any,
    *,
    lookup: FromArgs[ConnectorLookup],
    policies_dir: FromArgs[Path],
    audit_dir: FromArgs[Path],
    mcp_store: FromArgs[McpStore] | None = None,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> None:
    group = subparsers.add_parser("policy", help="check, test and report on policy files")
    cmds = group.add_subparsers(dest="policy_command", required=True)

    check = cmds.add_parser("check", help="validate policy files; exit 1 with file:line: reason", parents=list(parents))
    check.add_argument("paths", nargs="*", type=Path, help="files or directories (default: the policy dir)")
    check.add_argument("--policies", type=Path, help="the policy directory (default: the config's)")
    check.set_defaults(func=lambda a: policy_check(a.paths or [policies_dir(a)], lookup(a)))

    test = cmds.add_parser("test", help="show the decision a request would get, without sending it", parents=list(parents))
    test.add_argument("--as", dest="role", required=True, help="the agent's role")
    test.add_argument("--sub", default="policy-test", help="the agent's sub")
    test.add_argument("--tenant", default=None)
    test.add_argument("--confidence", type=float, default=None, help="as X-Agent-Confidence")
    test.add_argument("--policies", type=Path, help="the policy directory (default: the config's)")
    test.add_argument("request", type=Path, nargs="?", help='JSON: {"connector", "action", "params"}')
    test.add_argument("--mcp-server", help="an MCP server of mcp_servers: (instead of REQUEST.json)")
    test.add_argument("--tool", help="the MCP tool called (with --mcp-server)")
    test.add_argument("--arguments", default="{}", help="the tool's arguments, a JSON object (with --mcp-server)")
    test.set_defaults(
        func=lambda a: policy_test(
            policies_dir(a), lookup(a), Subject(a.sub, a.role, a.tenant), _probe(a), a.confidence,
            (lambda: mcp_store(a)) if mcp_store is not None else None,
        )
    )

    report = cmds.add_parser("report", help="summarise shadow-mode would-deny events by agent and rule", parents=list(parents))
    report.add_argument("paths", nargs="*", type=Path, metavar="DIR_OR_FILE",
                        help="audit logs, or directories of them (default: every chain in the state dir)")
    report.set_defaults(func=lambda a: policy_report(a.paths or [audit_dir(a)]))


def add_approvals_commands(
    subparsers: Any, *, open_store: FromArgs[ApprovalStore], parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    group = subparsers.add_parser("approvals", help="list, approve and deny pending approvals")
    cmds = group.add_subparsers(dest="approvals_command", required=True)

    ls = cmds.add_parser("list", help="pending approvals (or all with --all)", parents=list(parents))
    ls.add_argument("--all", action="store_true", help="every state, not only pending")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=lambda a: approvals_list(open_store(a), a.all, a.json))

    for verb in ("approve", "deny"):
        p = cmds.add_parser(verb, help=f"{verb} a pending approval", parents=list(parents))
        p.add_argument("id")
        p.add_argument("--by", default=None, help="approver name (default: the OS user)")
        p.add_argument("--reason", default=None, help="why, for the agent (at most 500 characters)")
        p.set_defaults(func=lambda a, verb=verb: approvals_decide(open_store(a), verb, a.id, a.by, a.reason))


def add_audit_commands(
    subparsers: Any,
    *,
    audit_dir: FromArgs[Path],
    public_keys: FromArgs[list[Ed25519PublicKey]],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> None:
    group = subparsers.add_parser("audit", help="the tamper-evident audit log")
    cmds = group.add_subparsers(dest="audit_command", required=True)
    v = cmds.add_parser("verify", help="verify the hash chains and signatures; exit 1 naming the first bad record",
                        parents=list(parents))
    v.add_argument("paths", nargs="*", type=Path, metavar="DIR_OR_FILE",
                   help="chains to verify: files, or directories (every audit*.jsonl in them); default the state dir")
    v.add_argument("--strict", action="store_true",
                   help="for a stopped gateway's log: also fail unless it ends with the signature written at shutdown")
    v.set_defaults(func=lambda a: audit_verify(a.paths or [audit_dir(a)], public_keys(a), a.strict))


def policy_check(paths: list[Path], lookup: ConnectorLookup) -> int:
    found = check(paths, lookup)
    for p in found.warnings + found.problems:
        print(p, file=sys.stderr)
    if found.problems:
        return 1
    print(f"ok: {', '.join(str(p) for p in paths)}")
    return 0


@dataclass(frozen=True)
class Probe:
    """What `policy test` asks about: a request file, or an MCP tool call given on the command line."""

    request: Path | None
    mcp: tuple[str, str, str] | None = None  # server, tool, arguments (JSON)

    def read(self) -> tuple[str, str, dict[str, Any]]:
        """(connector, action, params); ValueError and the like for what cannot be read."""
        if self.mcp is not None:
            server, tool, arguments = self.mcp
            params = json.loads(arguments)
            if not isinstance(params, dict):
                raise ValueError("--arguments must be a JSON object")
            return server, tool, params
        assert self.request is not None
        req = json.loads(self.request.read_text())
        return req["connector"], req["action"], dict(req.get("params", {}))


def _probe(a: argparse.Namespace) -> Probe:
    if (a.request is None) == (a.mcp_server is None) or (a.mcp_server is None) != (a.tool is None):
        raise CliError("give either REQUEST.json or --mcp-server with --tool")
    return Probe(a.request, (a.mcp_server, a.tool, a.arguments) if a.mcp_server is not None else None)


def policy_test(
    directory: Path,
    lookup: ConnectorLookup,
    subject: Subject,
    probe: Probe,
    confidence: float | None,
    mcp_store: Callable[[], McpStore] | None = None,
) -> int:
    """The decision a request would get, from the very steps a live call is judged by (the
    action's schema and coercion, then the policy: `gateway.pipeline.decision.judge`), as the audit
    record would hold it, plus the quotas it would be charged against."""
    try:
        policies = load_policy_set(directory, lookup)
    except PolicyLoadError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 2
    try:
        connector, action, params = probe.read()
        # The path's parameters, as policies name them (`_path.id`), are not body parameters.
        route = _route(lookup, connector, action, {} if isinstance(lookup(connector), McpConnector) else params.pop(PATH_PARAMS, {}))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{probe.request or '--arguments'}: expected JSON with connector, action and params ({e})", file=sys.stderr)
        return 2
    from gateway.pipeline.decision import judge  # loads the DLP models: only for this command

    mcp: dict[str, Any] | None = None
    schema: ArgumentsSchema | None = None
    if isinstance(route.connector, McpConnector):
        view = _mcp_view(route.connector, action, params)
        mcp, schema = _pinned_schema(mcp_store, route.connector.name, action)
    else:
        view = _view(route, params, confidence)
    agent = Identity(subject.sub, subject.role, subject.tenant, ("*",), "policy-test", 0, 0, 0)
    call = Call(host=view.host, method=view.method, path=view.path)
    ctx, refusal = asyncio.run(judge(view, call, route, agent, policies, schema))
    decision = ctx.decision
    out = call.record(decision.outcome if decision else "deny", refusal or (decision.refusal if decision else None))
    if mcp is not None:
        out["mcp"] = mcp
    if decision is not None:
        out["quota"] = [
            {"rule": m.ref.id, "rate": m.rule.rate, "budget": m.rule.budget.model_dump() if m.rule.budget else None}
            for m in decision.rules
            if m.rule.rate or m.rule.budget
        ]
        out["approval_summary"] = dict(decision.approval_summary)
    print(json.dumps(out, indent=2))
    # A tool the store knows a live call of is refused (a pending change, an uncheckable schema)
    # fails the test whatever the policy says: a CI gate must not read it as allowed.
    live_refused = mcp is not None and mcp.get("live_call") == "refused"
    return 0 if decision is not None and decision.outcome == "allow" and refusal is None and not live_refused else 1


def _pinned_schema(open_store: Callable[[], McpStore] | None, server: str, tool: str) -> tuple[dict[str, Any], ArgumentsSchema | None]:
    """The tool's pinned input schema, compiled as a live call compiles it, and what `policy test`
    says of it: which pin was checked, or why none was (a live call would then be refused)."""
    shown: dict[str, Any] = {"server": server, "tool": tool}
    try:
        store = open_store() if open_store is not None else None
        pin = store.state(server, tool) if store is not None else None
        stored = store.schema(pin.pinned) if store is not None and pin is not None else None
    except GatewayError as e:
        shown["input_schema"] = f"not checked: the MCP store cannot be read ({type(e).__name__})"
        return shown, None
    if pin is None or stored is None:
        shown["input_schema"] = "not checked: the gateway has not listed this tool yet (a live call is refused mcp_tool_changed)"
        return shown, None
    shown["pin"] = pin.pinned
    if pin.pending is not None:
        shown["changed"] = "the server changed this tool's definition; a live call is refused mcp_tool_changed until accepted"
        shown["live_call"] = "refused"
    try:
        schema = SchemaCache().get(pin.pinned, lambda: stored)
    except SchemaRefused as e:
        shown["input_schema"] = f"cannot be checked, so a live call is refused: {e}"
        shown["live_call"] = "refused"
        return shown, None
    shown["input_schema"] = "checked"
    return shown, schema


def _route(lookup: ConnectorLookup, connector: str, action: str, path: dict[str, str]) -> Route:
    found = lookup(connector)
    act = found.action(action) if found else None
    if found is None or act is None:
        raise ValueError(f"no action {connector}:{action}")
    return Route(found, act, {str(k): str(v) for k, v in path.items()})


def _mcp_view(connector: McpConnector, tool: str, arguments: dict[str, Any]) -> RequestView:
    """The tools/call an agent would POST, as the MCP door reads it: the tool and its arguments."""
    host = connector.hosts[0] if connector.hosts else "?"
    return RequestView(
        tunnel=None, method="POST", raw_method=b"POST", scheme="https", host=host, port=443, authority=None,
        host_header=None, sni=None, path=connector.endpoint, query="", headers=(), body=b"", mcp=McpRequest(tool, arguments),
    )


def _view(route: Route, params: dict[str, Any], confidence: float | None) -> RequestView:
    """The request an agent would send for `params`, encoded as the action's vendor takes them."""
    action = route.action
    query = codecs.encode_form(params) if action.encoding is BodyEncoding.QUERY else ""
    body = b"" if action.encoding is BodyEncoding.QUERY else codecs.encode(action.encoding, params)
    headers = ((CONFIDENCE_HEADER.encode(), str(confidence).encode()),) if confidence is not None else ()
    host = route.connector.hosts[0] if route.connector.hosts else "?"
    return RequestView(
        tunnel=None, method=action.method, raw_method=action.method.encode(), scheme="https", host=host, port=443,
        authority=None, host_header=None, sni=None, path=action.path, query=query, headers=headers, body=body,
    )


def policy_report(paths: Sequence[Path]) -> int:
    """One report over every chain given (workers each write their own)."""
    chains = audit_chains(paths)
    try:
        print(format_report(report_files(chains)))
    except OSError as e:
        print(f"{e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    return 0


def approvals_list(store: ApprovalStore, all_states: bool, as_json: bool) -> int:
    states = ("pending", "approved", "denied", "expired", "used") if all_states else ("pending",)
    items = store.list(states)
    for a in items:
        if as_json:
            print(json.dumps(a.public(), sort_keys=True))
        else:
            created = datetime.fromtimestamp(a.created_at, UTC).isoformat(timespec="seconds")
            summary = " ".join(f"{k}={v}" for k, v in a.summary.items())
            print(f"{a.id}  {a.state:8}  {created}  {a.sub}  {a.connector}.{a.action}  {summary}")
            print(f"    {a.reason}")
            if a.body is not None:  # tokenized: no raw value
                print(f"    body: {json.dumps(a.body, sort_keys=True)}")
    if not items and not as_json:
        print("no approvals" if all_states else "no pending approvals")
    return 0


def approvals_decide(store: ApprovalStore, verb: str, approval_id: str, by: str | None, reason: str | None) -> int:
    who = by or getpass.getuser()
    if reason is not None and not 0 < len(reason) <= 500:
        print("--reason takes 1 to 500 characters", file=sys.stderr)
        return 2
    try:
        a = store.approve(approval_id, who, reason) if verb == "approve" else store.deny(approval_id, who, reason)
    except ApprovalError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{a.id} {a.state} by {who}")
    return 0


def audit_chains(paths: Sequence[Path]) -> list[Path]:
    """The files given, and every chain (`audit*.jsonl`) of each directory given, in order."""
    found: list[Path] = []
    for path in paths:
        found += sorted(path.glob("audit*.jsonl")) if path.is_dir() else [path]
    return found


def audit_verify(paths: Sequence[Path], keys: list[Ed25519PublicKey], strict: bool = False) -> int:
    """Every chain in turn, stopping at the first bad one (its first bad record named). Without
    `strict` a live log's unsigned tail is normal; with it (a stopped gateway's log, a rotated file)
    anything not sealed by the closing signature fails, as a cut tail looks the same. One chain is
    reported as it always was; several each on a line of their own, prefixed with their path."""
    chains = audit_chains(paths)
    if not chains:
        print(f"no audit log in {', '.join(map(str, paths))}", file=sys.stderr)
        return 2
    for chain in chains:
        where = f"{chain}: " if len(chains) > 1 else ""
        try:
            result = verify(chain, keys)
        except OSError as e:
            print(f"{chain}: {e.strerror}", file=sys.stderr)
            return 2
        problem = result.incomplete() if strict else None
        if problem:
            print(f"{where}FAILED (--strict): {problem}", file=sys.stderr)
            return 1
        print(f"{where}{result}", file=sys.stdout if result.ok else sys.stderr)
        if not result.ok:
            return 1
    return 0
