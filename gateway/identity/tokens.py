"""Agent identity: short-lived EdDSA JWTs signed by the gateway's own key.

The gateway creates an Ed25519 key in its state dir on first use; `token issue` signs with it and
the proxy verifies with it. Verification (~140 µs) is cached per token string: a tunnel sends many
requests with one token, and what can change between them (expiry, revocation) is re-checked
cheaply on every request by `Verifier.check`. Tokens of other issuers (`identity.issuers`) and
client certificates are verified by `gateway.identity.issuers` and then checked here alike.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import Refusal
from gateway.identity.revocation import Revocations
from gateway.state import write_private

if TYPE_CHECKING:
    from gateway.identity.issuers import PeerCertificate, TrustedIssuers

ISSUER = "egress-gateway"
AUDIENCE = "egress-gateway"
ADMIN_ROLE = "admin"  # the API's administrators; never a proxy credential
METRICS_ROLE = "metrics"  # a scrape credential: /metrics only, with its own, longer TTL cap
ALL_TENANTS = "*"  # the tenant of a global admin, which must say so explicitly
_CACHE_MAX = 4096


@dataclass(frozen=True)
class Identity:
    """Who is calling, from a verified token."""

    sub: str
    role: str
    tenant: str | None
    scopes: tuple[str, ...]
    jti: str
    iat: float
    nbf: float
    exp: float
    tool: str | None = None  # set on tokens the sandbox mints for a tool's host calls
    caller_jti: str | None = None  # on those tokens too: revoking the caller's token stops its tools
    issuer: str | None = None  # the trusted issuer (`identity.issuers`) that vouched; None: the gateway
    key_id: str | None = None  # the issuer's key that signed it, which must stay in its key set
    certificate_jti: str | None = None  # listen_tls: the client certificate under this token, revocable too

    def administers(self, tenant: str | None) -> bool:
        """Whether this admin may see and act on `tenant`'s objects: its own tenant only, unless
        it is a global admin (`tenant: "*"`). A token of another role administers nothing."""
        return self.role == ADMIN_ROLE and self.tenant is not None and self.tenant in (ALL_TENANTS, tenant)

    def allows(self, connector: str, action: str) -> bool:
        """Whether the token's scopes reach `connector:action` (`stripe:*` and `*` are wildcards)."""
        return any(s in ("*", f"{connector}:*", f"{connector}:{action}") for s in self.scopes)


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def kid(self) -> str:
        """RFC 7638-style thumbprint, so rotated keys can be told apart in the JWKS."""
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")

    def jwk(self) -> dict[str, str]:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA", "use": "sig"}


def load_or_create_key(path: Path) -> SigningKey:
    """The gateway's signing key; created (owner-only) on first use."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 key")
        return SigningKey(key)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(path, pem)
    return SigningKey(key)


def issue(
    key: SigningKey,
    *,
    sub: str,
    role: str,
    ttl: float,
    max_ttl: float,
    tenant: str | None = None,
    scopes: tuple[str, ...] = (),
    tool: str | None = None,
    caller_jti: str | None = None,
    now: float | None = None,
) -> str:
    """A signed agent token. A TTL above `max_ttl` is refused here and again at use."""
    if not sub or not role:
        raise ValueError("sub and role are required")
    for name, value in (("sub", sub), ("role", role), ("tenant", tenant)):
        if value is not None and not value.isprintable():
            # A line break in a name would forge a line in the access log on every call the agent makes.
            raise ValueError(f"{name} must be printable (no line break or control character)")
    if ttl <= 0 or ttl > max_ttl:
        raise ValueError(f"ttl {ttl:g}s is outside (0, max_token_ttl={max_ttl:g}s]")
    if role == ADMIN_ROLE and not tenant:
        raise ValueError(f"an admin token names its tenant, or {ALL_TENANTS!r} for every tenant (--tenant)")
    if tenant == ALL_TENANTS and role != ADMIN_ROLE:
        raise ValueError(f"only an admin token may have tenant {ALL_TENANTS!r}")
    now = time.time() if now is None else now
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "role": role,
        "scopes": list(scopes),
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + ttl),
        "jti": uuid.uuid4().hex,
    }
    if tenant:
        claims["tenant"] = tenant
    if tool:
        claims["tool"] = tool
    if caller_jti:
        claims["caller_jti"] = caller_jti
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})


@dataclass(frozen=True)
class TokenLimits:
    """What every token must respect, whoever issued it: the lifetime caps and the clock leeway."""

    max_ttl: float
    metrics_ttl: float
    leeway: float

    def check_lifetime(self, role: str, iat: float, exp: float) -> None:
        cap, setting = (self.metrics_ttl, "metrics_token_ttl") if role == METRICS_ROLE else (self.max_ttl, "max_token_ttl")
        if exp - iat > cap + self.leeway:
            raise Refusal("identity_expired", f"the token's lifetime exceeds {setting}")


def check_times(*times: object) -> None:
    """iat, nbf and exp must be finite numbers, whoever signed the token: PyJWT leaves `exp` to the
    per-request check here (`verify_exp` off), where a string would fail as a 500 and a NaN, which
    every comparison calls false, would never expire."""
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times):
        raise Refusal("identity_invalid", "the token's times are not numbers")


def check_role(role: str, tenant: str | None) -> None:
    """The rules `issue` applies, applied again to every verified token whoever signed it."""
    if role == ADMIN_ROLE and not tenant:
        raise Refusal("identity_invalid", f"an admin token names its tenant, or {ALL_TENANTS!r}")
    if tenant == ALL_TENANTS and role != ADMIN_ROLE:
        raise Refusal("identity_invalid", f"only an admin token may have tenant {ALL_TENANTS!r}")


@contextlib.contextmanager
def token_errors() -> Iterator[None]:
    """PyJWT's failures as the contract's refusals, for the gateway's tokens and every issuer's."""
    try:
        yield
    except jwt.InvalidIssuerError:
        raise Refusal("identity_invalid", "the agent token has the wrong issuer") from None
    except jwt.InvalidAudienceError:
        raise Refusal("identity_invalid", "the agent token has the wrong audience") from None
    except jwt.ImmatureSignatureError:
        raise Refusal("identity_expired", "the agent token is not valid yet") from None
    except jwt.MissingRequiredClaimError as e:
        raise Refusal("identity_invalid", f"the agent token lacks the {e.claim!r} claim") from None
    except jwt.InvalidTokenError:
        raise Refusal("identity_invalid", "the agent token is malformed or badly signed") from None


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A token's header and claims before any check: only to choose who verifies it."""
    with token_errors():
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    return header, claims


class Verifier:
    """Verifies agent tokens (the gateway's own, and those of `identity.issuers`) and client
    certificates; one per process, shared by the proxy and the API."""

    def __init__(
        self,
        keys: SigningKey | tuple[SigningKey, ...],
        revocations: Revocations,
        max_ttl: float,
        leeway: float,
        metrics_ttl: float | None = None,
        issuers: TrustedIssuers | None = None,
    ):
        # Every key that still verifies (the signing key first, then rotated-out ones), by kid.
        ring = (keys,) if isinstance(keys, SigningKey) else keys
        self._keys = {k.kid: k for k in ring}
        self._default = ring[0]
        self._revocations = revocations
        self.limits = TokenLimits(max_ttl, max_ttl if metrics_ttl is None else metrics_ttl, leeway)
        self._leeway = leeway
        self._issuers = issuers
        self._cache: dict[str, Identity] = {}

    async def authenticate(self, token: str) -> Identity:
        """`verify`, after fetching the key set of a URL issuer when the token's key is new to it."""
        cached = self._cache.get(token)
        if self._issuers is not None and (cached is None or cached.issuer is not None):
            await self._issuers.prepare(token)
        return self.verify(token)

    def verify(self, token: str) -> Identity:
        """Full verification (signature and claims), cached; then the cheap per-request checks."""
        ident = self._cache.get(token)
        if ident is None:
            ident = self._decode(token)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[token] = ident
        self.check(ident)
        return ident

    def from_certificate(self, peer: PeerCertificate) -> Identity:
        """The identity of an agent's verified X.509-SVID (the mTLS listener), checked like a token's."""
        if self._issuers is None:
            raise Refusal("identity_invalid", "no spiffe issuer is configured to map client certificates")
        ident = self._issuers.from_certificate(peer)
        self.check(ident)
        return ident

    def check(self, ident: Identity, now: float | None = None) -> None:
        """What can change while a tunnel is open: time, revocation, and the issuer's key set."""
        now = time.time() if now is None else now
        if now > ident.exp + self._leeway:
            raise Refusal("identity_expired", "the agent token has expired")
        if now + self._leeway < ident.nbf:
            raise Refusal("identity_expired", "the agent token is not valid yet")
        # A trusted issuer's clock may run ahead of ours by up to the leeway: a token it issued
        # before a revocation of its subject can carry an iat after it, so its iat counts as that
        # much earlier (a token it issues right after a revocation waits out the leeway). Held in no
        # cache, so it holds on every replica and after any restart. The gateway's own iat is ours.
        issued = ident.iat - (self._leeway if ident.issuer is not None else 0.0)
        if any(
            jti is not None and self._revocations.is_revoked(jti, ident.sub, issued)
            for jti in (ident.jti, ident.caller_jti, ident.certificate_jti)
        ):
            raise Refusal("identity_revoked", "the agent token has been revoked")
        if ident.key_id is not None and (self._issuers is None or not self._issuers.still_trusted(ident)):
            raise Refusal("identity_invalid", f"the key that signed the token left issuer {ident.issuer}'s key set")

    def _key_for(self, token: str) -> SigningKey:
        """The key the token's header names (`kid`); a token without one is the signing key's."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise Refusal("identity_invalid", "the agent token is malformed or badly signed") from None
        key = self._default if kid is None else self._keys.get(str(kid))
        if key is None:
            raise Refusal("identity_invalid", "the agent token is signed by a key this gateway does not know")
        return key

    def _decode(self, token: str) -> Identity:
        if self._issuers is not None:
            header, claims = unverified(token)
            if claims.get("iss") != ISSUER:
                return self._issuers.decode(token, header, claims, self.limits)
        key = self._key_for(token)
        with token_errors():
            claims = jwt.decode(
                token,
                key.public,
                algorithms=["EdDSA"],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway,
                options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub", "jti"], "verify_exp": False},
            )
        check_times(claims["iat"], claims["nbf"], claims["exp"])
        role, scopes, tenant = claims.get("role"), claims.get("scopes", []), claims.get("tenant")
        if not isinstance(role, str) or not role:
            raise Refusal("identity_invalid", "the agent token lacks a role")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise Refusal("identity_invalid", "the agent token's scopes are not a list of strings")
        if tenant is not None and not isinstance(tenant, str):
            raise Refusal("identity_invalid", "the agent token's tenant is not a string")
        self.limits.check_lifetime(role, claims["iat"], claims["exp"])
        tool, caller_jti = claims.get("tool"), claims.get("caller_jti")
        return Identity(
            sub=str(claims["sub"]),
            role=role,
            tenant=tenant,
            scopes=tuple(scopes),
            jti=str(claims["jti"]),
            iat=float(claims["iat"]),
            nbf=float(claims["nbf"]),
            exp=float(claims["exp"]),
            tool=tool if isinstance(tool, str) else None,
            caller_jti=caller_jti if isinstance(caller_jti, str) else None,
        )


def token_from_proxy_authorization(header: str | None) -> str:
    """The JWT from `Basic base64(user:JWT)` (what clients send for a proxy URL) or `Bearer JWT`."""
    if not header:
        raise Refusal("identity_missing", "send the agent token as the proxy password or a Bearer token")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        if not value.isascii():
            # A JWT is ASCII. Bytes that are not UTF-8 arrive from mitmproxy as surrogates, which
            # PyJWT cannot even encode (a 500 internal_error): malformed, like any other bad token.
            raise Refusal("identity_invalid", "the agent token is malformed or badly signed")
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True)
        except ValueError:
            raise Refusal("identity_invalid", "the Basic proxy credentials are not valid base64") from None
        # A JWT holds no ':', so the token is the last field whatever the user name holds: clients
        # send a ':' in it as it is, and encode it as Latin-1 (requests, aiohttp) or UTF-8 (curl).
        # With an empty password the user name is the token (`http://TOKEN@host:port`, as proxies
        # keyed by one secret are often configured).
        user, _, password = decoded.rpartition(b":")
        token = password or user.rpartition(b":")[2]
        if token:
            if not token.isascii():
                raise Refusal("identity_invalid", "the agent token is malformed or badly signed")
            return token.decode()
    raise Refusal("identity_missing", "Proxy-Authorization must be Basic user:TOKEN or Bearer TOKEN")
