"""The WASM sandbox: untrusted tool code with fuel, memory and time limits, and one way out.

Small private modules, re-exported here (as httpx does):
- `manifest`: the tool manifest model and its Ed25519 attestation;
- `registry`: the tools loaded from directories (`sandbox/tools/` ships the samples);
- `cache`: compiled modules by sha256, serialized to the state dir;
- `hostcall`: the `egress.http_request` import and the manifest's ceiling on it;
- `runner`: engine, stores and limits for WASI modules;
- `component`: the same for `kind: component` tools (registered Python tools, sandbox/wit/tool.wit);
- `python_guest`: the same for ad-hoc Python snippets (CPython as a component; optional);
- `outcome`: how any engine's run ends maps to its output or a refusal code (one place for all three);
- `registration`: checking and storing a tool registered at run time (`POST /v1/tools`);
- `build`: componentize-py builds of Python tools (a build step, never imported by the gateway);
- `service`: `run_tool`, the async entry point;
- `egress`: the production sender (through the gateway's proxy) and the URL → action resolver.

`egress-gateway sandbox run` is gateway/cli/sandbox.py: it needs the config and the state dir.
"""

from sandbox.egress import connector_resolver, make_proxy_sender, refuse_all
from sandbox.manifest import Limits, ToolManifest, sign, verify_signature
from sandbox.outcome import RunResult
from sandbox.registry import Tool, ToolRegistry, builtin_tools_dir
from sandbox.runner import SandboxRunner
from sandbox.service import run_tool

__all__ = [
    "Limits",
    "RunResult",
    "SandboxRunner",
    "Tool",
    "ToolManifest",
    "ToolRegistry",
    "builtin_tools_dir",
    "connector_resolver",
    "make_proxy_sender",
    "refuse_all",
    "run_tool",
    "sign",
    "verify_signature",
]
