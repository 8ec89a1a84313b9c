"""Who is calling: the gateway's EdDSA agent tokens (`tokens`: issue, verify with a cache, check
expiry and revocation on every request), the revocation list every worker reads (`revocation`),
and the identities of trusted issuers (`issuers`: SPIFFE JWT-SVIDs and X.509-SVIDs, OIDC JWTs)
with their key sets (`jwks`).
"""

from gateway.faces import lazy_face

_FACE = {"Identity": "tokens", "Verifier": "tokens", "SigningKey": "tokens", "issue": "tokens", "ADMIN_ROLE": "tokens", "ALL_TENANTS": "tokens", "Revocations": "revocation"}
__all__ = sorted(_FACE)
__getattr__ = lazy_face(__name__, _FACE)
