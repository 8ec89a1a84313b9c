"""The gateway's CA, which agents trust so the gateway can terminate their TLS.

mitmproxy's certificate store reads `<confdir>/mitmproxy-ca.pem`; creating it here (with our own
name on it) lets `egress-gateway ca path` work before the first `run`.
"""

from __future__ import annotations

from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy.certs import CertStore

from gateway.state import StateDir, write_atomic

KEY_SIZE = 2048


def ensure(state: StateDir, configured: bytes | None = None) -> Path:
    """Create the CA on first use, or install the configured one (`keys.ca`: the private key and
    certificate, PEM, shared by a fleet) where mitmproxy and `ca path` find it; return the
    certificate agents must trust."""
    if configured is not None:
        install(state, configured)
    elif not (state.ca_dir / "mitmproxy-ca.pem").exists():
        with CertStore.umask_secret():
            CertStore.create_store(
                state.ca_dir, "mitmproxy", KEY_SIZE, organization="egress-gateway", cn="egress-gateway CA"
            )
    return state.ca_cert


def install(state: StateDir, pem: bytes) -> None:
    """Write the configured CA into the state dir, only when it changed (a rotated CA file)."""
    state.ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert = x509.load_pem_x509_certificates(pem)[0].public_bytes(serialization.Encoding.PEM)
    for path, data, mode in ((state.ca_dir / "mitmproxy-ca.pem", pem, 0o600), (state.ca_cert, cert, 0o644)):
        if not path.exists() or path.read_bytes() != data:
            write_atomic(path, data, mode)


def agent_bundle(state: StateDir, configured: bytes | None = None) -> Path:
    """The gateway CA appended to the system CAs (certifi's Mozilla set), as one PEM file.

    `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and `CURL_CA_BUNDLE` replace a client's trust store rather
    than add to it: pointed at the gateway CA alone they break every other HTTPS connection the agent
    makes (a package index, a model download). One combined file is right for every variable.
    Rewritten only when its content would change, atomically, so running agents never read half.
    """
    gateway_ca = ensure(state, configured).read_bytes()
    system = Path(certifi.where()).read_bytes()
    data = system.rstrip(b"\n") + b"\n\n# egress-gateway CA\n" + gateway_ca
    path = state.agent_bundle
    if not path.exists() or path.read_bytes() != data:
        write_atomic(path, data, 0o644)
    return path
