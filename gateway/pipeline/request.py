"""What the pipeline is asked about, and what it answers: plain values, no mitmproxy.

A front door (the proxy addon, and its MCP door for each JSON-RPC message) reads its protocol into a `ConnectView` or
a `RequestView`, asks `gateway.pipeline.decision`, and applies the `Verdict`: a refusal to answer
with, or the edits to make before forwarding. Nothing here knows where the bytes came from, so the
same decision is made, tested and benchmarked whatever the front door.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.errors import Refusal
from gateway.identity.issuers import PeerCertificate
from gateway.identity.tokens import Identity
from gateway.pipeline.call import Call

if TYPE_CHECKING:
    from gateway.pipeline.dlp import CallDlp  # the DLP models load only where a call is decided

HostPort = tuple[str, int | None]


@dataclass(frozen=True)
class ConnectView:
    """A CONNECT request: the target the agent names and its proxy credentials."""

    host: str
    port: int
    proxy_authorization: str | None
    client: str | None = None  # the agent's address: unauthenticated refusals are aggregated by it
    mtls: bool = False  # arrived on `listen_tls`, where a client certificate is required
    certificate: PeerCertificate | None = None  # the verified client certificate, on `listen_tls`
    traceparent: str | None = None  # the agent's W3C header, if any: a refused CONNECT's span continues it


@dataclass(frozen=True)
class Tunnel:
    """What a granted CONNECT established: who opened it, for which target, at which checked address."""

    identity: Identity
    host: str
    port: int
    address: tuple[str, int]


@dataclass(frozen=True)
class McpRequest:
    """What the MCP door read from a request to an MCP server's endpoint: the tool one tools/call
    names and its arguments, or no tool (initialize, tools/list, notifications, a GET stream)."""

    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    approval: str | None = None  # an approval id the tools/call presents in its `params._meta`


@dataclass(frozen=True)
class RequestView:
    """One HTTP request as the agent sent it (inside a tunnel, or not: `tunnel` is None then)."""

    tunnel: Tunnel | None
    method: str  # as the proxy shows it (upper case)
    raw_method: bytes  # as sent: routing must judge what the vendor will see
    scheme: str
    host: str  # the request target's host
    port: int
    authority: HostPort | None  # an absolute-form target, if the agent sent one
    host_header: HostPort | None
    sni: str | None
    path: str  # without the query
    query: str  # the raw query string
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    client: str | None = None  # the agent's address: unauthenticated refusals are aggregated by it
    mcp: McpRequest | None = None  # set by the MCP door: decide this message, not the HTTP body

    def header(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        key = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None


@dataclass
class Forward:
    """What to change before the request leaves, applied in this order: `path` (with its query)
    replaced, query parameters dropped then set, headers dropped then set, `body` replaced."""

    address: tuple[str, int]
    path: str | None = None
    drop_query: list[str] = field(default_factory=list)
    set_query: dict[str, str] = field(default_factory=dict)
    drop_headers: list[str] = field(default_factory=list)
    set_headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    arguments: dict[str, Any] | None = None  # an MCP tool call's arguments, replaced (tokenized)
    dlp: CallDlp | None = None  # what restoring the response needs


@dataclass
class ConnectVerdict:
    call: Call
    refusal: Refusal | None = None
    tunnel: Tunnel | None = None


@dataclass
class Verdict:
    """The pipeline's answer: exactly one of `refusal` and `forward` is set."""

    call: Call
    refusal: Refusal | None = None
    forward: Forward | None = None
