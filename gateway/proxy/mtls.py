"""`listen_tls`: the proxy itself on TLS, where the agent's X.509-SVID is its identity (mTLS).

mitmproxy 11 serves a TLS-wrapped proxy ("HTTPS proxy") on any `regular` listener: when a client's
first bytes are a TLS ClientHello, its next-layer logic puts a client TLS layer under the HTTP
proxy layer, and the tunnel's own TLS (the vendor's, intercepted) then runs inside that one
(TLS-over-TLS, which mitmproxy supports). So `listen_tls` is a second `regular@HOST:PORT` mode of
the same mitmproxy, with no extra hop, and this addon makes its outer handshake an mTLS one:

- `tls_start_client`: for the outer handshake on the `listen_tls` listener (the only client TLS
  layer in the stack; the tunnel's inner one sits under an HTTP layer), the connection uses the
  listener's certificate and requires a client certificate chaining to `client_ca` (OpenSSL
  verifies it; mitmproxy's own TLS set-up for that handshake is replaced);
- `tls_established_client`: the verified leaf certificate is read (`PeerCertificate`) and kept
  for the CONNECT, where `gateway.pipeline.decide_connect` maps it to an identity by the spiffe
  issuer of its trust domain;
- `tls_failed_client`: a handshake refused (no certificate, or one outside `client_ca`) is audited
  as an `identity_invalid`/`identity_missing` refusal, aggregated per source like every refusal
  without an identity (`gateway.audit.noise`).

A connection that reaches the listener without TLS has no certificate: its CONNECT is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from mitmproxy import connection, tls
from mitmproxy.proxy.layers import ClientTLSLayer
from OpenSSL import SSL

from gateway.config import ListenTls, file_ref, parse_hostport
from gateway.errors import ConfigError, Refusal
from gateway.identity.issuers import PeerCertificate
from gateway.pipeline.call import Call
from gateway.pipeline.decision import refused
from gateway.runtime import Runtime

HTTP11 = b"http/1.1"


def listener_context(settings: ListenTls) -> SSL.Context:
    """The outer handshake's context: our certificate, a client certificate required and verified."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No resumption: every connection shows its certificate again, so an expired or replaced one
    # is never carried over from an earlier session.
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    steps = (
        ("cert", settings.cert, "a PEM certificate chain", ctx.use_certificate_chain_file),
        ("key", settings.key, "the PEM private key of listen_tls.cert", ctx.use_privatekey_file),  # OpenSSL checks the pair
        ("client_ca", settings.client_ca, "a PEM CA bundle", ctx.load_verify_locations),
    )
    load: Callable[[str], object]
    for name, ref, expected, load in steps:
        path = file_ref(ref, f"listen_tls.{name}")
        try:
            path.read_bytes()
            load(str(path))
        except OSError as e:
            raise ConfigError(f"listen_tls.{name}: cannot read {path}: {e.strerror}") from None
        except SSL.Error:
            raise ConfigError(f"listen_tls.{name}: {path} is not {expected}") from None
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda _c, _x, _n, _d, ok: bool(ok))
    # pyOpenSSL 24's own annotation of the callback's type is wrong (it says it returns None).
    ctx.set_alpn_select_callback(cast(Any, _alpn))
    return ctx


def _alpn(_conn: SSL.Connection, offers: list[bytes]) -> bytes:
    """The proxy speaks HTTP/1.1 to its agents; a client offering only others gets no ALPN."""
    return HTTP11 if HTTP11 in offers else SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


class ClientCertificates:
    def __init__(self, rt: Runtime, settings: ListenTls, mode: str) -> None:
        self.rt, self.mode = rt, mode
        self._context = listener_context(settings)
        self._peers: dict[str, PeerCertificate] = {}

    def on_listener(self, client: connection.Client) -> bool:
        return client.proxy_mode.full_spec == self.mode

    def peer(self, client: connection.Client) -> PeerCertificate | None:
        return self._peers.get(client.id)

    def _outer(self, data: tls.TlsData) -> bool:
        """The handshake with the listener itself: its TLS layer sits right on the proxy mode's
        layer, and is the only client TLS layer (the tunnel's, inside, comes under an HTTP layer)."""
        layers = data.context.layers
        return (
            self.on_listener(data.context.client)
            and len(layers) > 1
            and isinstance(layers[1], ClientTLSLayer)
            and sum(isinstance(x, ClientTLSLayer) for x in layers) == 1
        )

    def tls_start_client(self, data: tls.TlsData) -> None:
        if not self._outer(data):
            return
        conn = SSL.Connection(self._context)
        conn.set_accept_state()
        data.ssl_conn = conn

    def tls_established_client(self, data: tls.TlsData) -> None:
        if not self._outer(data):
            return
        cert = data.ssl_conn.get_peer_certificate() if data.ssl_conn else None
        if cert is not None:  # OpenSSL required it and verified it against client_ca
            self._peers[data.context.client.id] = PeerCertificate.from_x509(cert.to_cryptography())

    def tls_failed_client(self, data: tls.TlsData) -> None:
        if not self._outer(data):
            return
        error = (data.conn.error or "").lower()
        if "peer did not return a certificate" in error or "certificate required" in error:
            refusal = Refusal("identity_missing", "listen_tls needs a client certificate; none was sent")
        else:
            refusal = Refusal("identity_invalid", "the TLS handshake failed: the client certificate did not verify against listen_tls.client_ca")
        address = data.context.client.peername
        refused(self.rt, Call(method="CONNECT"), refusal, str(address[0]) if address else None)

    def client_disconnected(self, client: connection.Client) -> None:
        self._peers.pop(client.id, None)


def mode_spec(settings: ListenTls) -> str:
    """The mitmproxy mode of the listener: a second `regular` proxy on its address."""
    host, port = parse_hostport(settings.address, "listen_tls.address")
    return f"regular@{f'[{host}]' if ':' in host else host}:{port}"
