"""Identities the gateway did not mint: SPIFFE JWT-SVIDs and X.509-SVIDs, and OIDC JWTs
(`identity.issuers` in gateway.yaml), mapped to the gateway's sub, role, tenant and scopes.

A token is routed to its issuer before any check by what it claims (`iss` for an OIDC issuer, the
trust domain of its SPIFFE ID `sub` for a spiffe one), then verified against that issuer alone:
its pinned algorithms (asymmetric only, so an HS256 token "signed" with a public key or `none`
never reaches a key), its key set by `kid` (the key's own `alg` and type must fit), `aud`, `exp`,
`iat` (required: revocation by subject compares it), and the lifetime caps of the gateway's own
tokens.

Subjects are namespaced by the issuer's name: SPIRE's `spiffe://acme.example/agent/finance/01`
mapped by issuer `spire` is the gateway subject `spire:01`, so two issuers can never name the same
agent (per-agent quotas, DLP tokens and policies stay apart), and `token revoke --sub spire:01`
revokes it. The audit record carries `issuer` too. Roles `admin` and `metrics` are refused unless
the issuer lists them in `privileged_roles`, and an issuer's fixed `scopes` (or `scope_ceiling`)
bound what its identities may reach. The py-spiffe package (`spiffe`) is not used: every release
needs cryptography>=46 or protobuf<6 and grpcio, which mitmproxy 11's pins exclude.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.config import Config, OidcIssuer, OidcMap, SpiffeIssuer, SpiffeMap, file_ref
from gateway.errors import ConfigError, Refusal
from gateway.identity.jwks import FileJwks, JwksError, UrlJwks
from gateway.identity.tokens import Identity, TokenLimits, check_role, check_times, token_errors, unverified

PRIVILEGED = frozenset({"admin", "metrics"})
# Used with fullmatch only: `$` also matches before a final newline, which would let `01\n` through.
_VALUE = re.compile(r"[A-Za-z0-9._@+=-]{1,128}")  # a mapped sub, role or tenant
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_SPIFFE_ID = 2048


@dataclass(frozen=True)
class PeerCertificate:
    """What the gateway reads of an agent's verified client certificate."""

    uris: tuple[str, ...]
    not_before: float
    not_after: float
    fingerprint: str  # sha256, hex
    is_ca: bool = False  # a signing certificate, which the SPIFFE spec forbids as a leaf SVID

    @classmethod
    def from_x509(cls, cert: x509.Certificate) -> PeerCertificate:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            uris = ()
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        return cls(
            uris=uris,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
            is_ca=is_ca,
        )


def parse_spiffe_id(value: object) -> tuple[str, tuple[str, ...]]:
    """`spiffe://acme.example/agent/finance/01` -> ("acme.example", ("agent", "finance", "01")),
    by the SPIFFE ID rules (lower-case trust domain; non-empty path segments of [A-Za-z0-9._-], not
    `.` or `..`; no query, fragment, port or user)."""
    if not isinstance(value, str) or not value.startswith("spiffe://") or len(value) > _MAX_SPIFFE_ID:
        raise Refusal("identity_invalid", "the identity is not a SPIFFE ID (spiffe://TRUST_DOMAIN/PATH)")
    trust_domain, _, path = value[len("spiffe://"):].partition("/")
    segments = tuple(path.split("/"))
    if (
        not _TRUST_DOMAIN.fullmatch(trust_domain)
        or not path
        or any(not _SEGMENT.fullmatch(s) or s in (".", "..") for s in segments)
    ):
        raise Refusal("identity_invalid", "the SPIFFE ID is malformed")
    return trust_domain, segments


def _checked(value: object, what: str, issuer: str) -> str:
    if not isinstance(value, str) or not _VALUE.fullmatch(value):
        raise Refusal("identity_invalid", f"issuer {issuer}: the mapped {what} is missing or not a plain name")
    return value


def covers(scope: str, wanted: str) -> bool:
    """Whether `scope` reaches every action `wanted` reaches (`*`, `stripe:*`, `stripe:refund`)."""
    if scope == "*" or scope == wanted:
        return True
    return scope.endswith(":*") and wanted != "*" and wanted.startswith(scope[:-1])


def narrow(scopes: tuple[str, ...], ceiling: tuple[str, ...]) -> tuple[str, ...]:
    """The scopes within both sets: each scope the ceiling covers, and each ceiling entry that a
    wider scope covers (`stripe:*` under a ceiling `stripe:refund` is `stripe:refund`)."""
    out = [s for s in scopes if any(covers(c, s) for c in ceiling)]
    out += [c for c in ceiling if c not in out and any(covers(s, c) for s in scopes)]
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Mapped:
    sub: str
    role: str
    tenant: str | None
    scopes: tuple[str, ...]


class Issuer:
    """One trusted issuer: verification against its key set, then its claim mapping."""

    def __init__(self, settings: SpiffeIssuer | OidcIssuer, keys: FileJwks | UrlJwks) -> None:
        self.settings, self.key_set = settings, keys
        self.name = settings.name

    def map_claims(self, claims: Mapping[str, Any]) -> Mapped:
        raise NotImplementedError

    def decode(self, token: str, header: Mapping[str, Any], limits: TokenLimits) -> Identity:
        s = self.settings
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in s.algorithms:
            raise Refusal("identity_invalid", f"issuer {self.name} does not sign with this token's algorithm")
        if not isinstance(kid, str):
            raise Refusal("identity_invalid", "the token names no key (kid)")
        jwk = self.key_set.current().get(kid)
        if jwk is None:
            raise Refusal("identity_invalid", f"the token's key (kid) is not in issuer {self.name}'s key set")
        if jwk.get("alg", alg) != alg:
            raise Refusal("identity_invalid", f"issuer {self.name}'s key is for another algorithm")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            raise Refusal("identity_invalid", f"issuer {self.name}'s key does not fit the token's algorithm") from None
        with token_errors():
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuer if isinstance(s, OidcIssuer) else None,
                leeway=limits.leeway,
                options={"require": ["exp", "iat", "aud", "sub"], "verify_exp": False},
            )
        iat, exp, nbf = claims["iat"], claims["exp"], claims.get("nbf", claims["iat"])
        check_times(iat, exp, nbf)
        mapped = self.map_claims(claims)
        self._check(mapped)
        limits.check_lifetime(mapped.role, iat, exp)
        jti = claims.get("jti")
        digest = hashlib.sha256(token.encode()).hexdigest()[:32]
        return Identity(
            sub=f"{self.name}:{mapped.sub}",
            role=mapped.role,
            tenant=mapped.tenant,
            scopes=mapped.scopes,
            jti=f"{self.name}:{jti if isinstance(jti, str) and _VALUE.fullmatch(jti) else digest}",
            iat=float(iat),
            nbf=float(nbf),
            exp=float(exp),
            issuer=self.name,
            key_id=kid,
        )

    def _check(self, mapped: Mapped) -> None:
        if mapped.role in PRIVILEGED and mapped.role not in self.settings.privileged_roles:
            raise Refusal("identity_invalid", f"issuer {self.name} may not grant role {mapped.role} (privileged_roles)")
        check_role(mapped.role, mapped.tenant)


class Spiffe(Issuer):
    settings: SpiffeIssuer

    def map_claims(self, claims: Mapping[str, Any]) -> Mapped:
        return self.map_id(claims.get("sub"))

    def map_id(self, spiffe_id: object) -> Mapped:
        """A SPIFFE ID of this trust domain through `map.path` (`/agent/{role}/{sub}`)."""
        trust_domain, segments = parse_spiffe_id(spiffe_id)
        if trust_domain != self.settings.trust_domain:
            raise Refusal("identity_invalid", f"the SPIFFE ID is not of trust domain {self.settings.trust_domain}")
        m: SpiffeMap = self.settings.map
        template = m.path.split("/")[1:]
        if len(template) != len(segments):
            raise Refusal("identity_invalid", f"the SPIFFE ID's path does not match issuer {self.name}'s {m.path}")
        found: dict[str, str] = {}
        for want, got in zip(template, segments, strict=True):
            if want.startswith("{"):
                found[want[1:-1]] = got
            elif want != got:
                raise Refusal("identity_invalid", f"the SPIFFE ID's path does not match issuer {self.name}'s {m.path}")
        tenant = found.get("tenant", m.tenant)
        return Mapped(
            sub=_checked(found.get("sub", m.sub), "sub", self.name),
            role=_checked(found.get("role", m.role), "role", self.name),
            tenant=None if tenant is None else _checked(tenant, "tenant", self.name),
            scopes=m.scopes,
        )

    def from_certificate(self, peer: PeerCertificate, max_ttl: float) -> Identity:
        mapped = self.map_id(peer.uris[0])
        self._check(mapped)
        if peer.not_after - peer.not_before > max_ttl:
            raise Refusal("identity_expired", "the client certificate's lifetime exceeds listen_tls.max_cert_ttl")
        return Identity(
            sub=f"{self.name}:{mapped.sub}",
            role=mapped.role,
            tenant=mapped.tenant,
            scopes=mapped.scopes,
            jti=f"{self.name}:x509:{peer.fingerprint[:32]}",
            iat=peer.not_before,
            nbf=peer.not_before,
            exp=peer.not_after,
            issuer=self.name,
        )


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A dotted claim path (`claims.` an optional explicit root), or a fixed `=value`."""
    if path.startswith("="):
        return path[1:]
    node: Any = claims
    parts = path.split(".")
    if parts[0] == "claims" and len(parts) > 1:
        parts = parts[1:]
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class Oidc(Issuer):
    settings: OidcIssuer

    def map_claims(self, claims: Mapping[str, Any]) -> Mapped:
        m: OidcMap = self.settings.map
        tenant = claim(claims, m.tenant) if m.tenant is not None else None
        if isinstance(m.scopes, tuple):
            scopes = m.scopes
        else:
            raw = claim(claims, m.scopes)
            if isinstance(raw, str):
                raw = raw.split()
            if raw is None:
                raw = []
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise Refusal("identity_invalid", f"issuer {self.name}: the scopes claim is not a list of strings")
            scopes = tuple(raw)
        if m.scope_ceiling is not None:
            scopes = narrow(scopes, m.scope_ceiling)
        return Mapped(
            sub=_checked(claim(claims, m.sub), "sub", self.name),
            role=_checked(claim(claims, m.role), "role", self.name),
            tenant=None if tenant is None else _checked(tenant, "tenant", self.name),
            scopes=scopes,
        )


class TrustedIssuers:
    """Every configured issuer, and the routing of a token or a certificate to one of them."""

    def __init__(self, issuers: list[Issuer], certificates: tuple[str, float] | None = None) -> None:
        self.by_name = {i.name: i for i in issuers}
        self._oidc = {i.settings.issuer: i for i in issuers if isinstance(i, Oidc)}
        self._spiffe = {i.settings.trust_domain: i for i in issuers if isinstance(i, Spiffe)}
        self._certificates = certificates  # listen_tls: (its trust domain, max_cert_ttl)

    @classmethod
    def build(cls, config: Config) -> TrustedIssuers | None:
        """The issuers of `identity.issuers`, key sets loaded; None when there are none. A key file
        that cannot be read at start is a config error."""
        issuers: list[Issuer] = []
        for s in config.identity.issuers:
            try:
                if isinstance(s, SpiffeIssuer):
                    issuers.append(Spiffe(s, FileJwks(file_ref(s.bundle, "bundle"), frozenset({"jwt-svid"}))))
                elif s.jwks.startswith("file:"):
                    issuers.append(Oidc(s, FileJwks(file_ref(s.jwks, "jwks"), frozenset({"sig"}))))
                else:
                    keys = UrlJwks(
                        s.jwks, frozenset({"sig"}), refresh=s.jwks_refresh, min_interval=s.jwks_min_interval,
                        max_age=s.jwks_max_age, extra_ca=config.upstream_ca,
                    )
                    issuers.append(Oidc(s, keys))
            except JwksError as e:
                raise ConfigError(f"identity.issuers {s.name}: {e}") from None
        trust_domain = config.listen_trust_domain
        certificates = (trust_domain, config.listen_tls.max_cert_ttl) if trust_domain and config.listen_tls else None
        return cls(issuers, certificates) if issuers else None

    def route(self, claims: Mapping[str, Any]) -> Issuer:
        iss, sub = claims.get("iss"), claims.get("sub")
        if isinstance(iss, str) and iss in self._oidc:
            return self._oidc[iss]
        if isinstance(sub, str) and sub.startswith("spiffe://"):
            trust_domain = sub[len("spiffe://"):].partition("/")[0]
            if trust_domain in self._spiffe:
                return self._spiffe[trust_domain]
            raise Refusal("identity_invalid", "no spiffe issuer trusts the token's trust domain")
        raise Refusal("identity_invalid", "the agent token has the wrong issuer")

    def decode(self, token: str, header: Mapping[str, Any], claims: Mapping[str, Any], limits: TokenLimits) -> Identity:
        return self.route(claims).decode(token, header, limits)

    async def prepare(self, token: str) -> None:
        """Let a URL issuer fetch its key set if the token names a key it lacks (or it is stale)."""
        try:
            header, claims = unverified(token)
            issuer = self.route(claims)
        except Refusal:
            return  # verification says why
        kid = header.get("kid")
        if isinstance(kid, str):
            await issuer.key_set.prepare(kid)

    def still_trusted(self, ident: Identity) -> bool:
        issuer = self.by_name.get(ident.issuer or "")
        return issuer is not None and ident.key_id in issuer.key_set.current()

    def from_certificate(self, peer: PeerCertificate) -> Identity:
        if peer.is_ca:
            raise Refusal("identity_invalid", "the client certificate is a signing (CA) certificate, not an X.509-SVID")
        if len(peer.uris) != 1:
            raise Refusal("identity_invalid", "the client certificate must carry exactly one SPIFFE ID (URI SAN)")
        trust_domain, _ = parse_spiffe_id(peer.uris[0])
        if self._certificates is None or trust_domain != self._certificates[0]:
            raise Refusal("identity_invalid", "listen_tls takes client certificates of its own trust domain only")
        return self._spiffe[trust_domain].from_certificate(peer, self._certificates[1])
