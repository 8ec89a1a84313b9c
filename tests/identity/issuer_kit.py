"""What the issuer and mTLS suites mint for themselves: an issuer's signing keys and JWKS, JWT-SVIDs
and OIDC tokens (and forged ones), a loopback IdP serving a JWKS, and a SPIFFE PKI whose client
certificates carry SPIFFE IDs as URI SANs. Every key is generated here; nothing is mocked."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AUDIENCE = "egress-gateway"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class IssuerKey:
    """One signing key of an external issuer (RS256 or ES256), with its `kid`."""

    alg: str = "RS256"
    kid: str = field(default_factory=lambda: "k-" + uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(65537, 2048) if self.alg.startswith("RS") else ec.generate_private_key(ec.SECP256R1())
        )

    def jwk(self, use: str | None = None) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        jwk.update(kid=self.kid, alg=self.alg)
        if use is not None:
            jwk["use"] = use
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **headers})


def jwks(*keys: IssuerKey, use: str | None = None) -> dict[str, Any]:
    return {"keys": [k.jwk(use) for k in keys]}


def write_jwks(path: Path, *keys: IssuerKey, use: str | None = None) -> Path:
    """Write atomically (as SPIRE's bundle publisher does), so the gateway never reads half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jwks(*keys, use=use)))
    tmp.replace(path)
    return path


def claims(sub: str, ttl: float = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": sub, "aud": [AUDIENCE], "iat": now, "exp": now + int(ttl), "jti": uuid.uuid4().hex}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def forged(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT will not make: HS256 "signed" with an issuer's public key, or alg `none`."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret is not None else b""
    return signing_input + "." + _b64(sig)


class JwksServer:
    """A loopback IdP serving `doc` at /jwks; `hits` counts the fetches exactly."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"keys": []}
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps(owner.doc).encode()
                self.send_response(200 if self.path == "/jwks" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class SpiffePki:
    """A trust domain's X.509 CA: the listener's server certificate and agents' X.509-SVIDs."""

    def __init__(self, root: Path, name: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.name = root, name
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{name} CA"))
            .issuer_name(_name(f"{name} CA"))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = root / f"{name}-ca.pem"
        self.ca_file.write_bytes(self._ca.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self, file: str, subject: str, san: list[x509.GeneralName], usage: x509.ObjectIdentifier, lifetime: datetime.timedelta,
        ca: bool = False,
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(self._ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now - datetime.timedelta(minutes=5) + lifetime)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file, key_file = self.root / f"{file}.pem", self.root / f"{file}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        return cert_file, key_file

    def server(self) -> tuple[Path, Path]:
        """The listener's certificate, for 127.0.0.1 and localhost."""
        san: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        return self._issue("listener", "localhost", san, ExtendedKeyUsageOID.SERVER_AUTH, datetime.timedelta(days=1))

    def svid(
        self, file: str, *spiffe_ids: str, lifetime: datetime.timedelta = datetime.timedelta(hours=1), ca: bool = False
    ) -> tuple[Path, Path]:
        """An X.509-SVID: the SPIFFE IDs as URI SANs, for client authentication (`ca`: a signing
        certificate instead, which the SPIFFE spec forbids as a leaf)."""
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(s) for s in spiffe_ids]
        return self._issue(file, file, san, ExtendedKeyUsageOID.CLIENT_AUTH, lifetime, ca)
