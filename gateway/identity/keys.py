"""The keys a gateway signs and verifies with, and its CA: generated per state dir, or shared.

One gateway on its own creates an Ed25519 signing key and a CA in its state dir on first use. A
fleet (replicas, workers) must not: a token signed by one replica would not verify on another, and
agents would have to trust one CA per replica. So `keys:` in the config names them by reference,
read through the same reader as vendor credentials (`gateway.secrets.read_reference`: `env:`,
`file:`, and whatever schemes it learns), and every replica loads the same ones:

    keys:
      ca: file:/run/egress/ca.pem                   # the CA's private key and certificate, PEM
      signing: file:/run/egress/signing-2.pem       # Ed25519, PKCS8 PEM: signs new tokens
      previous_signing: [file:/run/egress/signing-1.pem]   # still verify, sign nothing

Rotation with an overlap window: make the new key `signing` and move the old one to
`previous_signing`; tokens are signed with the new key from then on, tokens signed with the old one
stay valid until they expire (at most `max_token_ttl`, or `metrics_token_ttl` for scrapers), and
the JWKS lists both, each under its own `kid`. Remove the old key once that window has passed.

With a fleet store (`stores.state: redis://…`) and no `keys.signing` or `keys.ca`, the gateway
refuses to start (`ConfigError`) rather than generate keys that only this replica knows; likewise
a shared DLP vault (`dlp.vault: redis://…`) needs a shared `dlp.key`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.identity.tokens import SigningKey, load_or_create_key
from gateway.secrets import read_reference
from gateway.state import StateDir


@dataclass(frozen=True)
class KeyRing:
    """The key that signs, the keys that still verify, and the configured CA (None: the state dir's)."""

    signing: SigningKey
    previous: tuple[SigningKey, ...] = ()
    ca_pem: bytes | None = None

    @property
    def verifying(self) -> tuple[SigningKey, ...]:
        return (self.signing, *self.previous)

    def by_kid(self, kid: str | None) -> SigningKey | None:
        """The key a token names in its header; a token without `kid` is the signing key's."""
        if kid is None:
            return self.signing
        return next((k for k in self.verifying if k.kid == kid), None)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.jwk() for k in self.verifying]}


def is_fleet(config: Config) -> bool:
    """Whether state is shared with other replicas, so per-replica keys would split the fleet."""
    return config.stores.state is not None and config.stores.state.startswith(("redis", "rediss"))


def load(config: Config, state: StateDir) -> KeyRing:
    """The configured keys, or the state dir's own when none are configured and there is no fleet."""
    keys = config.keys
    if is_fleet(config):
        missing = [f"keys.{name}" for name, ref in (("signing", keys.signing), ("ca", keys.ca)) if ref is None]
        if config.dlp.vault is not None and config.dlp.vault.startswith("redis") and config.dlp.key is None:
            missing.append("dlp.key")
        if missing:
            raise ConfigError(
                f"stores.state is shared ({_scheme(config.stores.state)}), so every replica must load the same keys: "
                f"set {', '.join(missing)} (e.g. file:/run/egress/...); per-replica keys would split the fleet"
            )
    plain = config.secrets_allow_plaintext
    signing = _signing_key("keys.signing", keys.signing, plain) if keys.signing else load_or_create_key(state.signing_key)
    previous = tuple(_signing_key(f"keys.previous_signing[{i}]", ref, plain) for i, ref in enumerate(keys.previous_signing))
    return KeyRing(signing, previous, _ca(keys.ca, plain) if keys.ca else None)


def _read(setting: str, ref: str, allow_plaintext: bool) -> bytes:
    return read_reference(ref, setting, allow_plaintext=allow_plaintext).encode()


def _signing_key(setting: str, ref: str, allow_plaintext: bool) -> SigningKey:
    pem = _read(setting, ref, allow_plaintext)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        raise ConfigError(f"{setting} ({ref}) is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{setting} ({ref}) is not an Ed25519 key")
    return SigningKey(key)


def _ca(ref: str, allow_plaintext: bool) -> bytes:
    """The CA as mitmproxy's store wants it: the private key, then the certificate, in one PEM."""
    pem = _read("keys.ca", ref, allow_plaintext)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
        cert = x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        raise ConfigError(f"keys.ca ({ref}) must hold the CA's unencrypted private key and its certificate, PEM") from None
    if cert.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        raise ConfigError(f"keys.ca ({ref}): the private key does not belong to the certificate")
    return pem


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _scheme(uri: str | None) -> str:
    return (uri or "").partition("://")[0] + "://…"
