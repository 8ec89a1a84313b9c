"""The gateway's CA, which agents trust so the gateway can terminate their TLS.

mitmproxy's certificate store reads `<confdir>/mitmproxy-ca.pem`; creating it here (with our own
name on it) lets `egress-gateway ca path` work before the first `run`.
"""

from __future__ import annotations

from pathlib import Path

from mitmproxy.certs import CertStore

from gateway.state import StateDir

KEY_SIZE = 2048


def ensure(state: StateDir) -> Path:
    """Create the CA on first use; return the certificate agents must trust."""
    if not (state.ca_dir / "mitmproxy-ca.pem").exists():
        with CertStore.umask_secret():
            CertStore.create_store(
                state.ca_dir, "mitmproxy", KEY_SIZE, organization="egress-gateway", cn="egress-gateway CA"
            )
    return state.ca_cert
