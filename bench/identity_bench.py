"""What an identity from a trusted issuer costs (not a test): one gateway, one fake vendor, three
ways in, measured interleaved in one run and reported as ratios to the gateway's own token.

- own token: `http://` proxy, the gateway's EdDSA token as the proxy password;
- JWT-SVID: the same, with a SPIFFE JWT-SVID (ES256) from a bundle file (`identity.issuers`);
- mTLS: the `listen_tls` listener (`https://` proxy), the agent's X.509-SVID as its identity.

Rows: the median of a GET through one keep-alive tunnel (the per-request re-check), and of a new
connection per call (CONNECT, verification, the proxy and tunnel handshakes).
Usage: python -m bench.identity_bench [--runs N]
"""

from __future__ import annotations

import argparse
import functools
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.clients import trusting
from tests.fakes import PKI, VENDOR_HOSTS, FakeVendor, vendor_settings
from tests.identity.issuer_kit import AUDIENCE, IssuerKey, SpiffePki, claims, write_jwks
from tests.processes import GatewayProcess, free_port

URL = "https://api.stripe.com/v1/balance"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300, help="keep-alive requests per path (new connections: a fifth)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = PKI(root / "pki")
        vendor = FakeVendor(pki.leaf("vendor", VENDOR_HOSTS))
        acme, key = SpiffePki(root / "acme", "acme"), IssuerKey("ES256")
        bundle = write_jwks(root / "bundle.jwks", key, use="jwt-svid")
        cert, cert_key = acme.server()
        port = free_port()
        issuer = {"name": "spire", "kind": "spiffe", "trust_domain": "acme.example", "bundle": f"file:{bundle}",
                  "audience": AUDIENCE, "map": {"path": "/agent/{role}/{sub}", "tenant": "acme", "scopes": ["*"]}}
        listen_tls = {"address": f"127.0.0.1:{port}", "cert": f"file:{cert}", "key": f"file:{cert_key}",
                      "client_ca": f"file:{acme.ca_file}"}
        settings = vendor_settings(pki, vendor, identity={"issuers": [issuer]}, listen_tls=listen_tls)
        try:
            with GatewayProcess(root / "gw", settings).start() as gw:
                report(gw, key, acme, port, args.runs)
        finally:
            vendor.close()


def report(gw: GatewayProcess, key: IssuerKey, acme: SpiffePki, port: int, runs: int) -> None:
    ctx = ssl.create_default_context(cafile=str(acme.ca_file))
    ctx.load_cert_chain(*acme.svid("bench", "spiffe://acme.example/agent/finance/01"))
    own, svid = gw.token(ttl=1500), key.sign(claims("spiffe://acme.example/agent/finance/02", ttl=1500))
    paths: dict[str, Callable[[], httpx.Client]] = {
        "own token": lambda: httpx.Client(proxy=gw.proxy_url(own), verify=trusting(gw), timeout=20),
        "JWT-SVID": lambda: httpx.Client(proxy=gw.proxy_url(svid), verify=trusting(gw), timeout=20),
        "mTLS": lambda: httpx.Client(proxy=httpx.Proxy(f"https://127.0.0.1:{port}", ssl_context=ctx), verify=trusting(gw), timeout=20),
    }
    kept: dict[str, list[float]] = {name: [] for name in paths}
    fresh: dict[str, list[float]] = {name: [] for name in paths}
    clients = {name: make() for name, make in paths.items()}
    try:
        for c in clients.values():
            c.get(URL).raise_for_status()
        for _ in range(runs):  # interleaved, so the machine's load falls on every path alike
            for name, c in clients.items():
                kept[name].append(_timed(functools.partial(c.get, URL)))
    finally:
        for c in clients.values():
            c.close()
    for _ in range(max(runs // 5, 1)):
        for name, make in paths.items():
            fresh[name].append(_timed(functools.partial(_once, make)))
    base_kept, base_fresh = statistics.median(kept["own token"]), statistics.median(fresh["own token"])
    print(f"{'identity':10s} {'keep-alive':>12s} {'ratio':>6s} {'new connection':>15s} {'ratio':>6s}")
    for name in paths:
        k, f = statistics.median(kept[name]), statistics.median(fresh[name])
        print(f"{name:10s} {k * 1000:9.2f} ms {k / base_kept:6.2f} {f * 1000:12.2f} ms {f / base_fresh:6.2f}")


def _once(make: Callable[[], httpx.Client]) -> httpx.Response:
    with make() as c:
        return c.get(URL)


def _timed(call: Callable[[], httpx.Response]) -> float:
    start = time.perf_counter()
    call().raise_for_status()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
