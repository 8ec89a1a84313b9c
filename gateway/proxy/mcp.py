"""The MCP door: requests to an MCP server's endpoint (`mcp_servers:`), read as JSON-RPC and
decided message by message by the one pipeline, then the server's answer edited on its way back.

A POST's messages are sorted: each `tools/call` is decided on its own by `decide` with its tool
and arguments (identity, session, scopes, policy with its params, approval bound to the arguments,
quota, DLP, credentials, audit: a refused one is answered with a JSON-RPC error of its id); the
protocol messages (initialize, tools/list, ping, notifications, the client's answers) are decided
together as the server's protocol action; any other method (resources, prompts) is refused. What
goes on is re-encoded from the checked messages, with tokenized arguments. A GET (the server's
stream) or DELETE (session end) is decided as the protocol action.

On the way back (`gateway.mcp.answer`): tool lists cut to what the caller may call and to pinned,
unchanged definitions (the rug-pull guard, `gateway.mcp.store`); tool results restored; requests
of the server's own refused unless a policy names them, and then answered to the server with the
refusal so it does not wait; a session id the server issues bound to the agent that opened it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from mitmproxy import http

from connectors.model import MCP_SERVER_REQUESTS, McpConnector
from gateway.errors import DECISION_HEADER, Refusal, StoreUnavailable
from gateway.identity.tokens import Identity
from gateway.mcp import jsonrpc
from gateway.mcp.answer import AnswerEditor
from gateway.mcp.schema import SchemaRefused
from gateway.mcp.store import Seen
from gateway.mcp.tools import definition_digest
from gateway.pipeline import McpRequest, RequestView, Verdict, decide, may_call, request_call
from gateway.pipeline.call import Call
from gateway.pipeline.decision import refused
from gateway.pipeline.dlp import CallDlp
from gateway.pipeline.steps import credential_edits
from gateway.policy.engine import PolicySet
from gateway.proxy.flows import (
    ANSWER_REFUSED,
    CALL,
    MCP,
    STREAM_EDIT,
    OpenTunnel,
    Tunnels,
    is_event_stream,
    request_view,
    respond,
    send,
)
from gateway.runtime import Runtime

log = logging.getLogger(__name__)
SESSION_HEADER = "mcp-session-id"
# Server requests refused one by one (audited, answered to the server) per answer; past them, a
# server flooding requests down one stream has them dropped and counted in the outcome record: it
# must not make the gateway write a record and send an answer for each.
MAX_SERVER_REQUESTS_ANSWERED = 16
SERVER_REQUESTS_REFUSED = "egress.mcp_server_requests"  # flow metadata: how many this answer held
# Method names the audit may show; any other is the agent's own string and shows as `…`.
KNOWN_METHODS = jsonrpc.PROTOCOL_METHODS | {
    "notifications/initialized", "notifications/cancelled", "notifications/progress", "notifications/roots/list_changed",
}


@dataclass
class _Sorted:
    """A POST's messages after their decisions: what goes on, and what the gateway answers."""

    forwarded: list[jsonrpc.Message] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)  # allowed: the protocol action's first
    lists: set[jsonrpc.RequestId] = field(default_factory=set)
    calls: set[jsonrpc.RequestId] = field(default_factory=set)
    others: set[jsonrpc.RequestId] = field(default_factory=set)  # forwarded protocol requests' ids
    refusal: tuple[Call, Refusal] | None = None  # the protocol action's (or a disguised notification's), if refused


class McpDoor:
    def __init__(self, rt: Runtime, tunnels: Tunnels) -> None:
        self.rt, self.tunnels = rt, tunnels
        raw = rt.key.private.private_bytes_raw()
        self._digest_key = hashlib.sha256(b"egress-gateway mcp arguments\0" + raw).digest()
        self._tasks: set[asyncio.Task[None]] = set()
        self._upstream_tls: ssl.SSLContext | None = None  # made once: loading the CA bundle takes ~0.2 s

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or CALL in flow.metadata:
            return
        open_tunnel = self.tunnels.of(flow)
        if open_tunnel is None:
            return
        connector = self.rt.registry.mcp_endpoint(open_tunnel.tunnel.host, flow.request.path.split("?", 1)[0])
        if connector is None:
            return  # not an MCP endpoint: `Decide` routes it (and refuses any other path of the host)
        view = request_view(flow, open_tunnel.tunnel)
        try:
            await self._handle(flow, open_tunnel, view, connector)
        except Exception:
            log.exception("the MCP door failed on a request")
            call = request_call(self.rt, view)
            self._answer_refusal(flow, call, refused(self.rt, call, Refusal("internal_error", "the gateway failed while deciding")))

    async def _handle(self, flow: http.HTTPFlow, open_tunnel: OpenTunnel, view: RequestView, connector: McpConnector) -> None:
        if view.method != "POST":
            call = self._call(view, connector, methods=[])
            verdict = await decide(self.rt, replace(view, mcp=McpRequest()), call)
            if verdict.refusal is not None:
                self._answer_refusal(flow, call, verdict.refusal)
                return
            self._send(flow, open_tunnel, connector, [verdict], AnswerEditor(), body=None)
            return
        try:
            messages, batch = jsonrpc.parse(view.body)
        except jsonrpc.Malformed as e:
            call = self._call(view, connector, methods=[])
            self._answer_refusal(flow, call, refused(self.rt, call, Refusal("mcp_malformed", str(e)), view.client))
            return
        done = await self._decide(view, connector, messages)
        if done.forwarded:
            editor = AnswerEditor(done.lists, done.calls, done.answers, batch, others=done.others)
            single = len(done.forwarded) == 1  # sent alone: servers need not take batches
            self._send(flow, open_tunnel, connector, done.verdicts, editor, jsonrpc.encode(done.forwarded, batch and not single))
        elif done.answers:
            decision_id = done.answers[0]["error"]["data"]["decision_id"]
            headers = {"content-type": "application/json", DECISION_HEADER: decision_id}
            flow.response = http.Response.make(200, jsonrpc.answers_body(done.answers, batch), headers)
        else:
            assert done.refusal is not None  # nothing forwarded, nothing answered: the protocol action (or a notification) was refused
            self._answer_refusal(flow, *done.refusal)

    async def _decide(self, view: RequestView, connector: McpConnector, messages: list[jsonrpc.Message]) -> _Sorted:
        """Each tools/call decided on its own; the protocol messages together; any other refused."""
        done = _Sorted()
        protocol: list[jsonrpc.Message] = []
        for m in messages:
            if m.is_tool_call:
                await self._tool_call(view, connector, m, done)
            elif m.method is not None and m.method not in jsonrpc.PROTOCOL_METHODS and (m.is_request or not jsonrpc.is_notification(m.method)):
                # A method sent without an id (a tools/call, a resources/read) is no notification:
                # forwarded, it would reach the server undecided.
                call = self._call(view, connector, methods=[m.method])
                refusal = Refusal("unknown_action", "the gateway forwards MCP tools, not this method", connector=connector.name)
                refusal = refused(self.rt, call, refusal, view.client)
                if m.is_request:
                    done.answers.append(jsonrpc.refusal_answer(m.id, refusal, call.decision_id))
                else:  # nothing to answer it with; refused over HTTP if nothing else of the POST goes on
                    done.refusal = (call, refusal)
            else:
                protocol.append(m)
        if not protocol:
            return done
        call = self._call(view, connector, methods=[m.method or "(answer)" for m in protocol])
        # Their strings (a client's name, a notification's message, an answer's content) are the
        # agent's too: DLP scans them as it scans a tool's arguments.
        carried = {"messages": [m.raw for m in protocol]}
        verdict = await decide(self.rt, replace(view, mcp=McpRequest(arguments=carried)), call)
        if verdict.refusal is not None:
            done.refusal = (call, verdict.refusal)
            requests = [m for m in protocol if m.is_request]
            done.answers += [jsonrpc.refusal_answer(m.id, verdict.refusal, call.decision_id) for m in requests]
            return done
        assert verdict.forward is not None
        scanned = verdict.forward.arguments
        done.verdicts.insert(0, verdict)
        done.forwarded += [jsonrpc.Message(raw) for raw in scanned["messages"]] if scanned is not None else protocol
        done.lists |= {m.id for m in protocol if m.is_request and m.method == jsonrpc.TOOLS_LIST and m.id is not None}
        done.others |= {m.id for m in protocol if m.is_request and m.id is not None} - done.lists
        return done

    async def _tool_call(self, view: RequestView, connector: McpConnector, m: jsonrpc.Message, done: _Sorted) -> None:
        call = self._call(view, connector, methods=[jsonrpc.TOOLS_CALL])
        try:
            tool, arguments = m.tool_call()
            approval = m.approval()
        except jsonrpc.Malformed as e:
            refusal = refused(self.rt, call, Refusal("mcp_malformed", str(e)), view.client)
            done.answers.append(jsonrpc.refusal_answer(m.id, refusal, call.decision_id))
            return
        call.extra["mcp"]["arguments"] = jsonrpc.arguments_digest(arguments, self._digest_key)
        verdict = await decide(self.rt, replace(view, mcp=McpRequest(tool, arguments, approval)), call)
        if verdict.refusal is not None:
            done.answers.append(jsonrpc.refusal_answer(m.id, verdict.refusal, call.decision_id))
            return
        assert verdict.forward is not None and m.id is not None
        done.forwarded.append(m.as_forwarded(verdict.forward.arguments if verdict.forward.arguments is not None else arguments))
        done.verdicts.append(verdict)
        done.calls.add(m.id)

    def _call(self, view: RequestView, connector: McpConnector, methods: list[str]) -> Call:
        """A call of this request, whose audit record names the server and the MCP methods."""
        call = request_call(self.rt, view)
        assert view.tunnel is not None
        call.identity = view.tunnel.identity
        shown = [name if name in KNOWN_METHODS or name in (jsonrpc.TOOLS_CALL, "(answer)") else "…" for name in methods]
        call.extra["mcp"] = {"server": connector.name, "methods": shown}
        return call

    def _answer_refusal(self, flow: http.HTTPFlow, call: Call, refusal: Refusal) -> None:
        flow.metadata[CALL] = call
        respond(flow, call.decision_id, refusal)

    def _send(
        self,
        flow: http.HTTPFlow,
        open_tunnel: OpenTunnel,
        connector: McpConnector,
        verdicts: list[Verdict],
        editor: AnswerEditor,
        body: bytes | None,
    ) -> None:
        """Forward as the first allowed verdict says (every verdict of one request carries the same
        credential and header edits); the answer is edited for all of them."""
        carrier = verdicts[0]
        forward = carrier.forward
        assert forward is not None
        forward.dlp = _merged_dlp([v.forward.dlp for v in verdicts if v.forward is not None])
        identity = open_tunnel.tunnel.identity
        policies = self.rt.policies.current if self.rt.policies else None
        over_limit: list[str] = []  # this answer's new tool names past the server's max_pinned_tools
        editor.keep = lambda tool: self._keep(identity, policies, connector, tool, over_limit)
        editor.listed = lambda: self._report_over_limit(connector, over_limit)
        editor.server_request = lambda msg: self._server_request(flow, open_tunnel, connector, msg)
        editor.max_event = self.rt.config.max_response_body
        if forward.dlp is not None and forward.dlp.reveal:
            editor.restore = self.rt.dlp.restore_now(forward.dlp)
        flow.metadata[CALL] = carrier.call
        flow.metadata[MCP] = editor
        send(flow, open_tunnel, forward)
        if body is not None:
            flow.request.content = body

    def _keep(self, identity: Identity, policies: PolicySet | None, connector: McpConnector, tool: dict[str, Any],
              over_limit: list[str]) -> bool:
        """Whether a listed tool is shown: a tool name of this server (pinned in the config, if it
        pins), its definition the pinned one (a new one is pinned now, unless the server has its
        `max_pinned_tools`: then it is hidden, noted in `over_limit`), and callable by this agent."""
        name: str = tool["name"]
        if connector.action(name) is None or name in MCP_SERVER_REQUESTS:
            return False
        digest = definition_digest(tool)
        try:
            seen = self.rt.mcp.observe(connector.name, name, digest, connector.max_pinned_tools)
        except StoreUnavailable as e:  # a definition that cannot be checked against its pin is not shown
            log.warning("MCP server %s tool %s hidden: %s", connector.name, name, e)
            return False
        if seen is Seen.OVER_LIMIT:
            over_limit.append(name)
            return False
        if seen in (Seen.NEW, Seen.CHANGED):
            event = "mcp_tool_pinned" if seen is Seen.NEW else "mcp_tool_changed"
            self.rt.record_after({"type": event, "server": connector.name, "tool": name, "definition": digest})
            if seen is Seen.CHANGED:
                log.warning("MCP server %s changed tool %s; hidden and refused until accepted", connector.name, name)
        return seen in (Seen.NEW, Seen.SAME) and self._schema_known(connector, name, digest, tool) and may_call(identity, policies, connector.name, name)

    def _report_over_limit(self, connector: McpConnector, over_limit: list[str]) -> None:
        """One audit record and one log line per listing that hid new tools for the bound, never
        one per tool: a hostile server lists thousands of new names on every call."""
        if not over_limit:
            return
        self.rt.record_after({"type": "mcp_tools_over_limit", "server": connector.name, "hidden": len(over_limit),
                              "max_pinned_tools": connector.max_pinned_tools})
        log.warning("MCP server %s listed %d new tools past its max_pinned_tools (%d); hidden and refused",
                    connector.name, len(over_limit), connector.max_pinned_tools)
        over_limit.clear()

    def _schema_known(self, connector: McpConnector, name: str, digest: str, tool: dict[str, Any]) -> bool:
        """The pinned definition's input schema, compiled (once per process) and stored by its
        digest for every process's calls; a schema the gateway cannot check hides the tool."""
        known = digest in self.rt.mcp_schemas
        text = None if known else json.dumps(tool.get("inputSchema"), ensure_ascii=False, separators=(",", ":"))
        try:
            self.rt.mcp_schemas.get(digest, lambda: text)
        except SchemaRefused as e:
            if not known:
                log.warning("MCP server %s tool %s hidden: %s", connector.name, name, e)
            return False
        if text is None:
            return True
        try:
            self.rt.mcp.remember_schema(digest, text)
        except StoreUnavailable as e:
            # Not known until stored: a later listing stores it, or the other processes would
            # refuse the tool for want of its schema as long as this one kept it compiled.
            self.rt.mcp_schemas.forget(digest)
            log.warning("MCP server %s tool %s hidden: its input schema cannot be stored (%s)", connector.name, name, e)
            return False
        return True

    def _server_request(self, flow: http.HTTPFlow, open_tunnel: OpenTunnel, connector: McpConnector, msg: dict[str, Any]) -> bool:
        """A request of the server's own: passed if a policy names its method for this agent, else
        refused, audited, and answered to the server with the refusal."""
        method = msg["method"]
        identity = open_tunnel.tunnel.identity
        policies = self.rt.policies.current if self.rt.policies else None
        if method in MCP_SERVER_REQUESTS and may_call(identity, policies, connector.name, method):
            return True
        refused_here = flow.metadata[SERVER_REQUESTS_REFUSED] = flow.metadata.get(SERVER_REQUESTS_REFUSED, 0) + 1
        if refused_here > MAX_SERVER_REQUESTS_ANSWERED:
            carrier: Call = flow.metadata[CALL]
            carrier.extra["mcp"]["server_requests_dropped"] = refused_here - MAX_SERVER_REQUESTS_ANSWERED
            return False
        shown = method if method in MCP_SERVER_REQUESTS else "…"
        call = Call(host=open_tunnel.tunnel.host, method="POST", identity=identity, connector=connector.name, action=shown)
        call.extra["mcp"] = {"server": connector.name, "methods": [shown], "direction": "server-to-client"}
        refusal = Refusal("policy_denied", f"the MCP server's {shown} request is refused: no policy rule allows it for this agent")
        refused(self.rt, call, refusal)
        answer = jsonrpc.refusal_answer(msg.get("id"), refusal, call.decision_id)
        task = asyncio.get_running_loop().create_task(self._tell_server(flow, open_tunnel, connector, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return False

    async def _tell_server(self, flow: http.HTTPFlow, open_tunnel: OpenTunnel, connector: McpConnector, answer: dict[str, Any]) -> None:
        """POST the refusal to the server, as the agent's client would have answered: to the
        checked address, with the server's credential and the agent's session."""
        tunnel = open_tunnel.tunnel
        ip, port = tunnel.address
        host = f"[{ip}]" if ":" in ip else ip
        _, set_headers, _ = credential_edits(connector, self.rt.secrets)
        headers = {**set_headers, "host": tunnel.host, "content-type": "application/json", "accept": "application/json, text/event-stream"}
        for name in (SESSION_HEADER, "mcp-protocol-version"):
            if (value := flow.request.headers.get(name)) is not None:
                headers[name] = value
        try:
            if self._upstream_tls is None:
                self._upstream_tls = ssl.create_default_context(cafile=str(self.rt.state.upstream_bundle))
            async with httpx.AsyncClient(verify=self._upstream_tls, timeout=self.rt.config.timeouts.connect) as client:
                await client.post(
                    f"https://{host}:{port}{connector.endpoint}",
                    content=json.dumps(answer).encode(),
                    headers=headers,
                    extensions={"sni_hostname": tunnel.host},
                )
        except (httpx.HTTPError, Refusal) as e:
            log.warning("could not tell MCP server %s of a refused request (%s)", connector.name, type(e).__name__)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        editor: AnswerEditor | None = flow.metadata.get(MCP)
        call: Call | None = flow.metadata.get(CALL)
        if editor is None or call is None or flow.response is None:
            return
        session = flow.response.headers.get(SESSION_HEADER)
        server = call.connector or ""
        if session is not None and flow.response.status_code < 400 and call.agent is not None:
            try:
                bound = self.rt.mcp.bind_session(session, call.agent, server)
            except StoreUnavailable as e:  # a session that is not bound would be refused anyway
                log.warning("MCP server %s issued a session id that cannot be bound (%s); removed", server, e)
                bound = False
            else:
                if not bound:  # the server gave this agent a session another agent opened: never pass it on
                    log.warning("MCP server %s issued a session id bound to another agent; removed", server)
            if not bound:
                del flow.response.headers[SESSION_HEADER]
        if is_event_stream(flow):
            flow.metadata[STREAM_EDIT] = editor.stream()

    def response(self, flow: http.HTTPFlow) -> None:
        editor: AnswerEditor | None = flow.metadata.get(MCP)
        resp = flow.response
        if editor is None or resp is None or resp.stream or ANSWER_REFUSED in flow.metadata:
            return
        data = resp.get_content(strict=False) or b""
        edited = editor.body(data)
        if edited != data:
            resp.content = edited
            if edited:  # JSON-RPC now, whatever the server said it sent (a text/plain 500 read as unreadable)
                resp.headers["content-type"] = "application/json"
        if resp.status_code == 202 and edited:
            resp.status_code = 200
            resp.headers["content-type"] = "application/json"


def _merged_dlp(found: list[CallDlp | None]) -> CallDlp | None:
    """One CallDlp for a request's answer: every call of it is the same agent's, with one reveal."""
    present = [d for d in found if d is not None]
    if not present:
        return None
    merged = CallDlp(present[0].scope, present[0].reveal)
    for d in present:
        merged.issued.update(d.issued)
    return merged
