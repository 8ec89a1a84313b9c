"""The one entry point the API and the CLI call: who may run which tool, then run it off the event loop."""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import Refusal
from sandbox.hostcall import HttpRequest, ResolveAction
from sandbox.registry import ToolRegistry
from sandbox.runner import RunResult, SandboxRunner

MAX_INPUT_BYTES = 1024 * 1024


async def run_tool(
    runner: SandboxRunner,
    registry: ToolRegistry,
    name: str,
    input: dict[str, Any],
    role: str,
    http_request: HttpRequest,
    resolve_action: ResolveAction,
    decision_id: str,
) -> RunResult:
    """Run tool `name` for a caller holding `role`; raises `Refusal` with a sandbox code.

    Checks, in order: the tool exists, the role may run it, its manifest's signature held at load;
    the module's sha256 is checked by the runner before it compiles anything. The run happens on the
    runner's worker pool (at most MAX_CONCURRENT_RUNS at once; more wait their turn), so awaiting
    this never blocks the event loop. `decision_id` is the run's (the caller audits the run under it);
    every refusal a host call gets inside the run carries it.
    """
    tool = registry.get(name)
    if tool is None:
        # The name is the agent's own string: echoed nowhere (a message lands in the audit log too).
        raise Refusal("sandbox_unknown_tool", "no tool of that name is registered")
    if not tool.manifest.runnable_by(role):
        raise Refusal("sandbox_forbidden", f"role {role!r} may not run tool {name!r}")
    if tool.attestation_error is not None:
        raise Refusal("sandbox_hash_mismatch", f"tool {name!r}: {tool.attestation_error}")
    try:
        payload = json.dumps(input, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError):
        raise Refusal("malformed_body", "the tool input is not JSON-serializable") from None
    if len(payload) > MAX_INPUT_BYTES:
        raise Refusal("body_too_large", f"the tool input is over {MAX_INPUT_BYTES} bytes")
    return await runner.run_async(tool, payload, http_request, resolve_action, decision_id)
