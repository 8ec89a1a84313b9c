"""`POST /v1/sandbox/run`: untrusted tool code, whose only way out is back through this gateway.

A tool's host calls (`egress.http_request`) are sent to the gateway's own proxy port with a token
the gateway mints for the run: the caller's subject, role and tenant, scopes narrowed to what both
the caller's token and the tool's manifest allow, a `tool` claim (so every host call's audit
record names the tool), a `caller_jti` claim (so revoking the caller's token, by jti or by sub,
stops its running tools' host calls at their next request), and a lifetime no longer than the run or the caller's own token. Every
pipeline step (policy, quotas, DLP, credentials, audit) applies to it like any other call.

Every run is one decision: its `dec_` id (the API call's) is on the response, in its refusals and in
every refusal its host calls get inside the run, and it has one audit record naming the tool, the
caller, the outcome code and the fuel used, never the input or the output.

One agent has at most RUNS_PER_AGENT runs on the runner's workers at once; the rest of its runs
wait on the event loop for its own slots, so no agent can take every worker from the others; and
at most RUNS_WAITING_PER_AGENT wait, each holding its request body (up to `max_body`): beyond them a
run is refused `rate_limited` at once, so one agent's flood cannot grow the gateway's memory.

Tools come from the shipped (or configured) directory and from `<state>/tools/`, where `POST
/v1/tools` keeps the tools registered through the API (sandbox/registration.py), so they survive a
restart. A registered name may not shadow a loaded one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from connectors.registry import Registry
from gateway.config import Config
from gateway.errors import Refusal
from gateway.identity import tokens as identity
from gateway.identity.tokens import Identity, SigningKey
from gateway.pipeline.call import Call
from gateway.pipeline.steps import authorize_scopes
from gateway.policy.engine import PYTHON_SNIPPETS, SANDBOX, PolicySet, Subject
from gateway.state import StateDir
from gateway.stores.tools import LocalShelf, ToolShelf
from sandbox import (
    RunResult,
    SandboxRunner,
    Tool,
    ToolRegistry,
    builtin_tools_dir,
    connector_resolver,
    make_proxy_sender,
    run_tool,
)
from sandbox.manifest import ToolManifest
from sandbox.registration import register

log = logging.getLogger(__name__)
HOST_CALL_SLACK = 5.0  # seconds a host-call token outlives the run's own deadline
# Runs one agent may have on the runner's workers at once (of sandbox.runner.MAX_CONCURRENT_RUNS);
# its further runs wait for one of its own to end, so a flood of slow runs by one agent leaves the
# other workers to everyone else.
RUNS_PER_AGENT = 4
RUNS_WAITING_PER_AGENT = 28  # its runs beyond those, waiting for one of its slots (32 in all); more are refused


class RunRequest(BaseModel):
    """The API body: a registered tool by name, or an ad-hoc Python snippet."""

    model_config = ConfigDict(extra="forbid")
    tool: str | None = Field(default=None, min_length=1, max_length=64)
    python: str | None = Field(default=None, min_length=1, max_length=256 * 1024)
    input: dict[str, Any] = Field(default_factory=dict)


class RegisterRequest(BaseModel):
    """`POST /v1/tools`: a manifest (checked by sandbox/registration.py) and the module's bytes."""

    model_config = ConfigDict(extra="forbid")
    manifest: dict[str, Any]
    module_base64: str = Field(min_length=1)


@dataclass
class Tools:
    """The runner, the registered tools, and (loaded on first use) the Python guest."""

    config: Config
    state: StateDir
    key: SigningKey
    connectors: Registry
    runner: SandboxRunner
    registry: ToolRegistry
    publishers: dict[str, Ed25519PublicKey]
    shelf: ToolShelf = field(default_factory=LocalShelf)  # the fleet's registered tools
    _python: Any = field(default=None, repr=False)
    _python_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _register_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _ca_context: ssl.SSLContext | None = field(default=None, repr=False)
    _turns: dict[tuple[str | None, str], tuple[asyncio.Semaphore, int]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls, config: Config, state: StateDir, key: SigningKey, connectors: Registry, shelf: ToolShelf | None = None
    ) -> Tools:
        registry, publishers = load_tools(config, state)
        for path, reason in registry.errors.items():
            log.warning("tool not loaded: %s (%s)", path, reason)
        runner = SandboxRunner(cache_dir=cache_dir(state))
        return cls(config, state, key, connectors, runner, registry, publishers, shelf or LocalShelf())

    def visible_to(self, role: str) -> list[dict[str, Any]]:
        """What `GET /v1/tools` shows a role: only the tools it may run."""
        tools = [t for name in self.registry.visible_to(role) if (t := self.registry.get(name)) is not None]
        return [
            {"name": t.name, "description": t.manifest.description, "kind": t.manifest.kind,
             "allowed": list(t.manifest.allowed), "limits": t.manifest.limits.model_dump()}
            for t in tools
        ]

    async def register(self, request: RegisterRequest) -> Tool:
        """Claim the name on the fleet's shelf, then check, compile (off the event loop), store
        under the state dir and add one tool; a failed local registration gives the name back."""
        try:
            module = base64.b64decode(request.module_base64, validate=True)
        except ValueError:
            raise Refusal("malformed_body", "module_base64 is not base64") from None
        name = request.manifest.get("name") if isinstance(request.manifest, dict) else None
        async with self._register_lock:
            if isinstance(name, str) and self.registry.get(name) is None:
                if not await asyncio.to_thread(self.shelf.claim, name, request.manifest, module):
                    raise Refusal("conflict", f"a tool named {name!r} is already registered")
                try:
                    return await self._register_here(request.manifest, module)
                except Exception:  # a refusal, or a disk that failed: the name is not taken
                    await asyncio.to_thread(self.shelf.release, name)
                    raise
            return await self._register_here(request.manifest, module)

    async def _register_here(self, manifest: Any, module: bytes) -> Tool:
        return await asyncio.to_thread(
            register, self.registry, self.runner, registered_dir(self.state), manifest, module,
            self.publishers, self.config.sandbox.require_signature,
        )

    async def sync(self) -> None:
        """Register here the fleet's tools this replica has not seen (checked as if sent here)."""
        missing = await asyncio.to_thread(self.shelf.names)
        for name in sorted(missing - set(self.registry.names())):
            shelved = await asyncio.to_thread(self.shelf.get, name)
            if shelved is None:
                continue
            async with self._register_lock:
                if self.registry.get(name) is None:
                    try:
                        await self._register_here(*shelved)
                    except Refusal as r:  # e.g. a publisher this replica does not trust
                        log.warning("shared tool %s not registered here: %s", name, r.code)

    async def run(self, call: Call, request: RunRequest, policies: PolicySet | None) -> RunResult:
        """Run the request for `call`'s caller, its audit fields left in `call` whatever the outcome.

        `policies` (the current set, or None when token scopes alone decide) says whether the
        caller may run an ad-hoc Python snippet; registered tools are governed by their manifests."""
        if (request.tool is None) == (request.python is None):
            raise Refusal("malformed_body", 'send exactly one of "tool" or "python"')
        assert call.identity is not None
        if request.tool is not None and self.registry.get(request.tool) is None:
            await self.sync()  # registered on another replica?
        # A tool name the agent made up is its own string, which could be anything (PII included),
        # so only a registered name reaches the audit record.
        known = request.tool is None or self.registry.get(request.tool) is not None
        name = (request.tool or PYTHON_SNIPPETS) if known else "?"
        call.connector, call.action = SANDBOX, name
        call.extra.update(tool=name, fuel_used=0)
        if request.python is not None:
            may_run_snippets(call, policies)
        try:
            async with self._turn(call.identity):
                result = await self._run(call.identity, request, call.decision_id)
        except Refusal as r:
            fuel_used = r.details.get("fuel_used")
            call.extra["fuel_used"] = fuel_used if isinstance(fuel_used, int) else 0
            raise
        call.extra.update(fuel_used=result.fuel_used, host_calls=result.host_calls, duration_ms=result.duration_ms)
        return result

    @asynccontextmanager
    async def _turn(self, caller: Identity) -> AsyncIterator[None]:
        """One of the caller's RUNS_PER_AGENT slots, waited for on the event loop (no worker held).
        An agent's entry lives while it has runs running or waiting, so the map stays bounded."""
        owner = (caller.tenant, caller.sub)
        slots, users = self._turns.get(owner) or (asyncio.Semaphore(RUNS_PER_AGENT), 0)
        if users >= RUNS_PER_AGENT + RUNS_WAITING_PER_AGENT:
            raise Refusal("rate_limited", f"this agent already has {users} sandbox runs running or waiting; "
                          "send another when one has ended", headers={"Retry-After": "1"})
        self._turns[owner] = (slots, users + 1)
        try:
            async with slots:
                yield
        finally:
            slots, users = self._turns[owner]
            if users == 1:
                del self._turns[owner]
            else:
                self._turns[owner] = (slots, users - 1)

    async def _run(self, caller: Identity, request: RunRequest, decision_id: str) -> RunResult:
        if request.tool is not None:
            tool = self.registry.get(request.tool)
            allowed, timeout_ms = (tool.manifest.allowed, tool.manifest.limits.timeout_ms) if tool else ((), 0)
            with self._sender(caller, request.tool, allowed, timeout_ms) as send:
                return await run_tool(
                    self.runner, self.registry, request.tool, request.input, caller.role, send,
                    connector_resolver(self.connectors), decision_id,
                )
        guest = await self._python_guest()
        ceiling: ToolManifest = guest.ceiling(self.config.sandbox.python.allowed, self.config.sandbox.python.limits)
        with self._sender(caller, "python", ceiling.allowed, ceiling.limits.timeout_ms) as send:
            assert request.python is not None
            return await guest.run_async(
                request.python, request.input, ceiling, send, connector_resolver(self.connectors), decision_id
            )

    def _sender(self, caller: Identity, tool: str, allowed: tuple[str, ...], timeout_ms: int) -> _Sender:
        scopes = tuple(
            f"{c.name}:{a.name}"
            for c in self.connectors
            for a in c.actions
            if caller.allows(c.name, a.name) and _manifest_allows(allowed, c.name, a.name)
        )
        ttl = min(timeout_ms / 1000 + HOST_CALL_SLACK, caller.exp - time.time())
        if ttl <= 0:
            raise Refusal("identity_expired", "the caller's token expires before the run could finish")
        token = identity.issue(
            self.key, sub=caller.sub, role=caller.role, tenant=caller.tenant, scopes=scopes, tool=tool,
            caller_jti=caller.jti, ttl=ttl, max_ttl=self.config.max_token_ttl,
        )
        return _Sender(f"http://{self.config.listen}", self._trust(), token, max(timeout_ms / 1000, 1.0))

    def _trust(self) -> ssl.SSLContext:
        """One TLS context trusting the gateway's CA, shared by every run's host calls."""
        if self._ca_context is None:
            self._ca_context = ssl.create_default_context(cafile=str(self.state.ca_cert))
        return self._ca_context

    async def _python_guest(self) -> Any:
        """The CPython component, compiled once (seconds) and then loaded from the state dir (ms)."""
        async with self._python_lock:
            if self._python is None:
                try:
                    from sandbox.python_guest import PythonGuest
                except ImportError:
                    raise Refusal("sandbox_unknown_tool", "the Python guest is not installed (extra: python-guest)") from None
                try:
                    self._python = await asyncio.to_thread(PythonGuest, self.state.root / "sandbox-cache")
                except ImportError:
                    raise Refusal("sandbox_unknown_tool", "the Python guest is not installed (extra: python-guest)") from None
            return self._python

    def close(self) -> None:
        self.runner.close()
        if self._python is not None:
            self._python.close()


class _Sender:
    """The run's host-call sender, closed when the run ends."""

    def __init__(self, proxy_url: str, ca: ssl.SSLContext, token: str, timeout: float):
        self._send = make_proxy_sender(proxy_url, ca, token, timeout)

    def __enter__(self) -> Any:
        return self._send

    def __exit__(self, *_: object) -> None:
        self._send.close()  # type: ignore[attr-defined]


def may_run_snippets(call: Call, policies: PolicySet | None) -> None:
    """Ad-hoc Python is code no one reviewed: the token's scopes must reach `sandbox:python` (the
    ceiling, and the whole decision while no policies are loaded), and then a policy must grant it
    to the caller (`sandbox: {python_snippets: true}`). Refuses with `scope_denied` or
    `policy_denied`; a shadowed refusal goes into the run's audit record as `would_deny`."""
    assert call.identity is not None
    authorize_scopes(call.identity, SANDBOX, PYTHON_SNIPPETS)
    if policies is None:
        return
    ident = call.identity
    decision = policies.python_snippets(Subject(ident.sub, ident.role, ident.tenant))
    call.decided_by(decision)
    if decision.refusal is not None:
        raise decision.refusal


def registered_dir(state: StateDir) -> Path:
    """Where `POST /v1/tools` keeps registered tools."""
    return state.root / "tools"


def cache_dir(state: StateDir) -> Path:
    """Compiled tools, so a restart (or `egress-gateway sandbox run`) loads rather than compiles."""
    return state.root / "sandbox-cache"


def load_tools(
    config: Config, state: StateDir, tools_dir: Path | None = None
) -> tuple[ToolRegistry, dict[str, Ed25519PublicKey]]:
    """The configured (or shipped, or `tools_dir`) tools and the registered ones, and the trusted
    publishers' keys: the gateway and the CLI run the same tools, checked the same way."""
    sandbox = config.sandbox
    publishers = {name: _public_key(name, b64) for name, b64 in sandbox.trusted_publishers.items()}
    directory = tools_dir or sandbox.tools or builtin_tools_dir()
    registry = ToolRegistry.load(directory, publishers, sandbox.require_signature)
    registry.load_dir(registered_dir(state), publishers, sandbox.require_signature)
    return registry, publishers


def _manifest_allows(allowed: tuple[str, ...], connector: str, action: str) -> bool:
    return any(a in (f"{connector}:*", f"{connector}:{action}") for a in allowed)


def _public_key(name: str, b64: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except ValueError:
        raise ValueError(f"sandbox.trusted_publishers.{name}: not a base64 Ed25519 public key") from None
