"""Everything that touches mitmproxy, and nothing else does: the proxy front door.

One addon per concern, as mitmproxy's own are split: `tunnels` (authentication at CONNECT),
`admission` (identity and size judged at the request head, before any body is read), `decision`
(each request through `gateway.pipeline.decide`), `pinning` (dial only the checked address),
`deadlines` (client and upstream timeouts mitmproxy lacks), `outcome` (restore, scrub, audit the
answer; classify failures), `streams` (cut streams whose identity was revoked), `mtls` (the
`listen_tls` listener, where the agent's client certificate is its identity); `flows` is what they
share, `mitm_compat` every reach into mitmproxy's internals, `ca` the gateway's CA, and `server`
runs the proxy and the API in one event loop.
"""

from gateway.faces import lazy_face

_FACE = {"serve": "server", "gateway_addons": "server", "ensure": "ca"}
__all__ = sorted(_FACE)
__getattr__ = lazy_face(__name__, _FACE)
