"""Sandbox fixtures: a runner, the sample tools, a local plain-HTTP vendor and a real sender to it.

Host calls in these tests leave the guest through `egress.http_request` and reach a real HTTP server
on 127.0.0.1 (stdlib `http.server`), so the bytes a tool sends and receives cross a socket; the
sender stands in for the gateway's proxy by sending `https://api.stripe.com/...` to that server.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from connectors import registry as connectors_registry
from gateway.pipeline.call import new_decision_id
from sandbox.egress import connector_resolver
from sandbox.hostcall import HttpRequest, ResolveAction
from sandbox.registry import ToolRegistry, builtin_tools_dir
from sandbox.runner import SandboxRunner

BALANCE = {
    "object": "balance",
    "available": [{"amount": 10000, "currency": "usd"}, {"amount": 2500, "currency": "eur"}],
    "pending": [{"amount": 400, "currency": "usd"}, {"amount": 700, "currency": "jpy"}],
}


@dataclass
class Vendor:
    """The local server's state: what it answers and what it received."""

    status: int = 200
    body: str = json.dumps(BALANCE)
    seen: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0


class _Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    vendor: Vendor

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode()
        self.vendor.seen.append(
            {"method": self.command, "path": self.path, "host": self.headers.get("host"), "body": body,
             "headers": {k.lower(): v for k, v in self.headers.items()}}
        )
        data = self.vendor.body.encode()
        self.send_response(self.vendor.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_vendor() -> Iterator[Vendor]:
    """A plain-HTTP vendor on 127.0.0.1 (the root conftest's `vendor` is the TLS FakeVendor)."""
    state = Vendor()
    handler = type("Handler", (_Handler,), {"vendor": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def sender(http_vendor: Vendor) -> HttpRequest:
    """A real sender: the request goes over a socket to the local vendor, with the original Host."""

    def send(request: dict[str, Any]) -> dict[str, Any]:
        url = urlsplit(request["url"])
        conn = http.client.HTTPConnection("127.0.0.1", http_vendor.port, timeout=5)
        try:
            path = url.path + (f"?{url.query}" if url.query else "")
            headers = {**request["headers"], "Host": url.hostname or ""}
            conn.request(request["method"], path, body=request["body"].encode(), headers=headers)
            response = conn.getresponse()
            body = response.read().decode()
            return {"status": response.status, "headers": {k.lower(): v for k, v in response.getheaders()}, "body": body}
        finally:
            conn.close()

    return send


@pytest.fixture(scope="session")
def resolve() -> ResolveAction:
    return connector_resolver(connectors_registry.load())


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxRunner]:
    r = SandboxRunner(cache_dir=tmp_path_factory.mktemp("cwasm"))
    yield r
    r.close()


@pytest.fixture(scope="session")
def registry() -> ToolRegistry:
    r = ToolRegistry.load(builtin_tools_dir())
    assert not r.errors
    return r


def _write_tool(root: Path, name: str, module: bytes | str, suffix: str = ".wasm", **fields: Any) -> Path:
    """A tool directory under `root` holding `module` and a manifest with its true sha256."""
    data = module.encode() if isinstance(module, str) else module
    tool_dir = root / name
    tool_dir.mkdir(parents=True, exist_ok=True)
    (tool_dir / f"tool{suffix}").write_bytes(data)
    manifest = {"name": name, "module": f"tool{suffix}", "sha256": hashlib.sha256(data).hexdigest(), "roles": ["*"]}
    manifest.update(fields)
    (tool_dir / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return tool_dir


def _sample_variant(root: Path, sample: str, name: str, **fields: Any) -> Path:
    """A copy of a sample tool under a new name, with manifest fields overridden (e.g. limits)."""
    src = builtin_tools_dir() / sample
    manifest = yaml.safe_load((src / "manifest.yaml").read_text())
    manifest.update(name=name, **fields)
    tool_dir = root / name
    tool_dir.mkdir(parents=True)
    shutil.copy(src / "tool.wasm", tool_dir / "tool.wasm")
    (tool_dir / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return tool_dir


@pytest.fixture
def make_tool(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`make_tool(name, module, suffix=".wasm", **manifest_fields)` -> the tool's directory under tmp_path/tools."""
    return lambda *args, **kw: _write_tool(tmp_path / "tools", *args, **kw)


@pytest.fixture
def make_variant(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`make_variant(sample, name, **manifest_fields)` -> a renamed copy of a sample tool under tmp_path/tools."""
    return lambda *args, **kw: _sample_variant(tmp_path / "tools", *args, **kw)


@pytest.fixture
def tools_dir(tmp_path: Path) -> Path:
    return tmp_path / "tools"


def _no_host_calls(request: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError("this tool must not reach the sender")


@pytest.fixture
def run(runner: SandboxRunner, registry: ToolRegistry, resolve: ResolveAction):  # type: ignore[no-untyped-def]
    """`run(name, input, role="tester", sender=..., registry=...)` -> RunResult, through `run_tool`."""
    import asyncio

    from sandbox.service import run_tool

    def call(
        name: str,
        tool_input: dict[str, Any] | None = None,
        role: str = "tester",
        sender: HttpRequest = _no_host_calls,
        tools: ToolRegistry | None = None,
    ) -> Any:
        return asyncio.run(run_tool(runner, tools or registry, name, tool_input or {}, role, sender, resolve, new_decision_id()))

    return call
