"""Trusted issuers (`identity.issuers`): SPIFFE JWT-SVIDs and OIDC JWTs, minted here with their own
keys, verified by a real gateway at CONNECT, inside the tunnel and on the agent API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config import load
from gateway.errors import ConfigError
from tests.clients import basic, client, error_of, raw_connect
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.identity.issuer_kit import AUDIENCE, IssuerKey, JwksServer, claims, forged, write_jwks
from tests.processes import GatewayProcess

OIDC_ISS = "https://login.acme.example"
BALANCE = "https://api.stripe.com/v1/balance"
SEARCH = "https://serpapi.com/search.json?q=coffee"


class World:
    """The gateway under test and the issuers' keys."""

    def __init__(self, root: Path, pki: PKI, vendor: FakeVendor) -> None:
        self.spire, self.corp, self.idp, self.ops = IssuerKey("RS256"), IssuerKey("ES256"), IssuerKey("RS256"), IssuerKey("ES256")
        self.bundle = write_jwks(root / "bundle.jwks", self.spire, use="jwt-svid")
        corp_jwks = write_jwks(root / "corp.jwks", self.corp)
        write_jwks(root / "ops.jwks", self.ops, use="jwt-svid")
        self.idp_server = JwksServer()
        self.idp_server.doc = {"keys": [self.idp.jwk()]}
        issuers: list[dict[str, Any]] = [
            {"name": "spire", "kind": "spiffe", "trust_domain": "acme.example", "bundle": f"file:{self.bundle}",
             "audience": AUDIENCE, "map": {"path": "/agent/{role}/{sub}", "tenant": "acme", "scopes": ["stripe:*"]}},
            {"name": "corp", "kind": "oidc", "issuer": OIDC_ISS, "jwks": f"file:{corp_jwks}", "algorithms": ["ES256"],
             "audience": AUDIENCE, "map": {"sub": "sub", "role": "claims.agent_role", "tenant": "claims.org",
                                           "scopes": "claims.egress_scopes", "scope_ceiling": ["stripe:*", "openai:*"]}},
            {"name": "idp", "kind": "oidc", "issuer": self.idp_server.url, "jwks": self.idp_server.url + "/jwks",
             "algorithms": ["RS256"], "audience": AUDIENCE, "jwks_min_interval": "2s",
             "map": {"sub": "sub", "role": "=research", "tenant": "=acme", "scopes": ["serpapi:*"]}},
            {"name": "ops", "kind": "spiffe", "trust_domain": "ops.example", "bundle": f"file:{root / 'ops.jwks'}",
             "audience": AUDIENCE, "privileged_roles": ["admin"], "map": {"path": "/{role}/{sub}", "tenant": "acme"}},
        ]
        self.gw = GatewayProcess(root / "gw", vendor_settings(pki, vendor, identity={"issuers": issuers}))

    def svid(self, path: str, key: IssuerKey | None = None, trust_domain: str = "acme.example", **extra: Any) -> str:
        return (key or self.spire).sign(claims(f"spiffe://{trust_domain}{path}", **extra))

    def oidc(self, sub: str = "u-42", **extra: Any) -> str:
        base = {"iss": OIDC_ISS, "agent_role": "support", "org": "acme", "egress_scopes": ["stripe:*", "serpapi:*"]}
        return self.corp.sign(claims(sub, **{**base, **extra}))

    def idp_token(self, key: IssuerKey, sub: str = "svc-7") -> str:
        return key.sign(claims(sub, iss=self.idp_server.url))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("issuers"), pki, vendor_server)
    with w.gw.start():
        yield w
    w.idp_server.close()


def _record(gw: GatewayProcess, decision_id: str) -> dict[str, Any]:
    (rec,) = [r for r in gw.audit() if r["decision_id"] == decision_id and r["phase"] == "decision"]
    return rec


def _refusal(gw: GatewayProcess, token: str) -> dict[str, Any]:
    sock, resp = raw_connect(gw, "api.stripe.com", basic(token))
    sock.close()
    assert resp.status == 407, resp
    return resp.error()


def test_jwt_svid_is_accepted_and_mapped(world: World, vendor: FakeVendor) -> None:
    with client(world.gw, world.svid("/agent/finance/01")) as c:
        ok = c.get(BALANCE)
        other = c.get(SEARCH)  # the issuer's scopes are stripe:* only
    assert ok.status_code == 200, ok.text
    assert (other.status_code, error_of(other)["code"]) == (403, "scope_denied")
    rec = _record(world.gw, ok.headers["x-egress-decision-id"])
    assert (rec["sub"], rec["tenant"], rec["role"], rec["issuer"], rec["decision"]) == ("spire:01", "acme", "finance", "spire", "allow")
    assert rec["jti"].startswith("spire:")
    assert len(vendor.received) == 1


def test_oidc_token_is_mapped_by_claim_paths_under_its_ceiling(world: World, vendor: FakeVendor) -> None:
    with client(world.gw, world.oidc()) as c:
        ok = c.get(BALANCE)
        narrowed = c.get(SEARCH)  # in the token's scopes, but outside the issuer's scope_ceiling
    assert ok.status_code == 200, ok.text
    assert (narrowed.status_code, error_of(narrowed)["code"]) == (403, "scope_denied")
    rec = _record(world.gw, ok.headers["x-egress-decision-id"])
    assert (rec["sub"], rec["tenant"], rec["role"], rec["issuer"]) == ("corp:u-42", "acme", "support", "corp")


def test_two_issuers_naming_the_same_subject_stay_two_agents(world: World) -> None:
    with client(world.gw, world.svid("/agent/finance/u-42")) as a, client(world.gw, world.oidc("u-42")) as b:
        ids = [a.get(BALANCE).headers["x-egress-decision-id"], b.get(BALANCE).headers["x-egress-decision-id"]]
    assert [_record(world.gw, i)["sub"] for i in ids] == ["spire:u-42", "corp:u-42"]


def _cases(w: World) -> dict[str, tuple[str, str]]:
    now = int(time.time())
    stranger = IssuerKey("RS256", kid=w.spire.kid)  # same kid, another key: a forgery
    unknown = IssuerKey("RS256")
    return {
        "wrong trust domain": (w.svid("/agent/finance/01", trust_domain="evil.example"), "identity_invalid"),
        "wrong aud": (w.svid("/agent/finance/01", aud=["someone-else"]), "identity_invalid"),
        "no aud": (w.svid("/agent/finance/01", aud=None), "identity_invalid"),
        "alg swap HS256 with the public key": (
            forged({"alg": "HS256", "typ": "JWT", "kid": w.spire.kid},
                   claims("spiffe://acme.example/agent/finance/01"), w.spire.public_pem()), "identity_invalid"),
        "alg none": (forged({"alg": "none", "kid": w.spire.kid}, claims("spiffe://acme.example/agent/finance/01"), None),
                     "identity_invalid"),
        "expired": (w.svid("/agent/finance/01", iat=now - 900, exp=now - 600), "identity_expired"),
        "over max_token_ttl": (w.svid("/agent/finance/01", ttl=7200), "identity_expired"),
        "no iat": (w.svid("/agent/finance/01", iat=None), "identity_invalid"),
        "unknown kid": (w.svid("/agent/finance/01", key=unknown), "identity_invalid"),
        "signed by another key": (w.svid("/agent/finance/01", key=stranger), "identity_invalid"),
        "path outside the template": (w.svid("/agent/finance/01/extra"), "identity_invalid"),
        "admin from an issuer without privileged_roles": (w.svid("/agent/admin/01"), "identity_invalid"),
        "oidc wrong aud": (w.oidc(aud="other"), "identity_invalid"),
        "oidc unknown issuer": (w.oidc(iss="https://evil.example"), "identity_invalid"),
        "oidc tenant * without admin": (w.oidc(org="*"), "identity_invalid"),
        "oidc role missing": (w.oidc(agent_role=None), "identity_invalid"),
        "oidc token signed with spire's key": (w.spire.sign(claims("u-1", iss=OIDC_ISS, agent_role="x", org="acme")),
                                              "identity_invalid"),
        # A NaN fails every comparison: neither expired nor over max_token_ttl, it would never expire.
        "exp NaN": (w.svid("/agent/finance/01", exp=float("nan")), "identity_invalid"),
        "oidc exp NaN": (w.oidc(exp=float("nan")), "identity_invalid"),
        # A mapped name is a plain name: a final newline would forge a line in the access log.
        "svid id ending in a newline": (w.svid("/agent/finance/01\n"), "identity_invalid"),
        "oidc sub ending in a newline": (w.oidc("u-42\n"), "identity_invalid"),
        "oidc role ending in a newline": (w.oidc(agent_role="support\n"), "identity_invalid"),
        "oidc tenant ending in a newline": (w.oidc(org="acme\n"), "identity_invalid"),
    }


CASES = (
    "wrong trust domain", "wrong aud", "no aud", "alg swap HS256 with the public key", "alg none", "expired",
    "over max_token_ttl", "no iat", "unknown kid", "signed by another key", "path outside the template",
    "admin from an issuer without privileged_roles", "oidc wrong aud", "oidc unknown issuer",
    "oidc tenant * without admin", "oidc role missing", "oidc token signed with spire's key", "exp NaN", "oidc exp NaN",
    "svid id ending in a newline", "oidc sub ending in a newline", "oidc role ending in a newline",
    "oidc tenant ending in a newline",
)


@pytest.mark.parametrize("case", CASES)
def test_bad_tokens_are_refused_with_readable_json(world: World, vendor: FakeVendor, case: str) -> None:
    token, code = _cases(world)[case]
    err = _refusal(world.gw, token)
    assert err["code"] == code, err
    assert err["message"] and "spiffe://" not in err["message"]  # names the rule, never echoes the token
    assert vendor.received == []


def test_revocation_by_mapped_sub_reaches_an_open_tunnel(world: World) -> None:
    with client(world.gw, world.svid("/agent/finance/rev-1")) as c, client(world.gw, world.svid("/agent/finance/rev-2")) as other:
        assert c.get(BALANCE).status_code == 200
        assert other.get(BALANCE).status_code == 200
        world.gw.cli("token", "revoke", "--sub", "spire:rev-1")
        deadline = time.monotonic() + 10
        while (r := c.get(BALANCE)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (r.status_code, error_of(r)["code"]) == (407, "identity_revoked")
        assert other.get(BALANCE).status_code == 200  # another subject of the same issuer is untouched


def test_revocation_reaches_a_token_whose_iat_is_ahead_of_the_gateways_clock(world: World) -> None:
    """An IdP whose clock runs 8 s fast (within token_leeway): its token's iat is later than the
    revocation, yet the token was in use before it. Revoking the subject must stop it, in the open
    tunnel and in a new one; and a token of that IdP the gateway never saw before the revocation
    (so nothing remembered of it, as after a restart or on another replica) is stopped too."""
    now = int(time.time())
    skewed = world.oidc("skew-1", iat=now + 8, exp=now + 300)
    unseen = world.oidc("skew-1", iat=now + 8, exp=now + 300)
    with client(world.gw, skewed) as c:
        assert c.get(BALANCE).status_code == 200
        world.gw.cli("token", "revoke", "--sub", "corp:skew-1")
        deadline = time.monotonic() + 10
        while (r := c.get(BALANCE)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_revoked")
    assert _refusal(world.gw, skewed)["code"] == "identity_revoked"
    assert _refusal(world.gw, unseen)["code"] == "identity_revoked"


def test_agent_api_takes_issuer_tokens_and_privileged_roles_only_where_declared(world: World) -> None:
    api = world.gw.api_url
    agent = httpx.post(f"{api}/v1/detokenize", json={"text": "hello"}, headers={"authorization": "Bearer " + world.oidc()})
    assert (agent.status_code, agent.json()) == (200, {"text": "hello"})
    admin = world.svid("/admin/alice", key=world.ops, trust_domain="ops.example")
    decisions = httpx.get(f"{api}/v1/decisions", headers={"authorization": "Bearer " + admin})
    assert decisions.status_code == 200, decisions.text
    as_agent = httpx.get(f"{api}/v1/decisions", headers={"authorization": "Bearer " + world.oidc()})
    assert (as_agent.status_code, as_agent.json()["error"]["code"]) == (403, "admin_required")
    # An admin identity is for the API only, never a proxy credential (as the gateway's own).
    assert _refusal(world.gw, admin)["code"] == "identity_invalid"


def test_bundle_file_rotation_is_picked_up_and_drops_the_old_key(world: World) -> None:
    old_token = world.svid("/agent/finance/rot")
    with client(world.gw, old_token) as c:
        assert c.get(BALANCE).status_code == 200
        new_key = IssuerKey("ES256")
        write_jwks(world.bundle, new_key, use="jwt-svid")
        new_token = world.svid("/agent/finance/rot", key=new_key)
        deadline = time.monotonic() + 10
        while _refusal_or_none(world.gw, new_token) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _refusal_or_none(world.gw, new_token) is None
        inside = c.get(BALANCE)  # the tunnel opened with the removed key is refused from now on
    assert (inside.status_code, error_of(inside)["code"]) == (407, "identity_invalid")
    assert _refusal(world.gw, old_token)["code"] == "identity_invalid"
    world.spire = new_key


def _refusal_or_none(gw: GatewayProcess, token: str) -> dict[str, Any] | None:
    sock, resp = raw_connect(gw, "api.stripe.com", basic(token))
    sock.close()
    return None if resp.status == 200 and "x-egress-error" not in resp.headers else resp.error()


def test_url_jwks_follows_kid_rotation_with_a_fetch_rate_limit(world: World) -> None:
    idp = world.idp_server
    first = world.idp_token(world.idp)
    rotated = IssuerKey("RS256")
    with client(world.gw, first) as c:
        assert c.get(SEARCH).status_code == 200
    assert idp.hits == 1  # fetched once, on the first token
    assert _refusal_or_none(world.gw, world.idp_token(world.idp, sub="svc-8")) is None
    assert idp.hits == 1  # a known kid needs no fetch

    # The IdP rotates. Within jwks_min_interval (2 s) of the last fetch, tokens naming a key the
    # gateway lacks are refused without a fetch: a flood of made-up kids cannot hammer the IdP.
    idp.doc = {"keys": [rotated.jwk()]}
    new_token = world.idp_token(rotated)
    for _ in range(5):
        assert _refusal(world.gw, new_token)["code"] == "identity_invalid"
    assert idp.hits == 1

    time.sleep(2.1)  # past jwks_min_interval
    assert _refusal_or_none(world.gw, new_token) is None
    assert idp.hits == 2  # the unknown kid fetched the key set once
    # The rotated-out key is no longer trusted, even for a token the gateway verified before.
    assert _refusal(world.gw, first)["code"] == "identity_invalid"
    assert idp.hits == 2


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ({"name": "x", "kind": "oidc", "issuer": "https://i", "jwks": "file:/j", "algorithms": ["HS256"],
          "audience": "a", "map": {"role": "r"}}, "algorithms ['HS256'] refused"),
        ({"name": "x", "kind": "oidc", "issuer": "https://i", "jwks": "file:/j", "algorithms": ["none"],
          "audience": "a", "map": {"role": "r"}}, "algorithms ['none'] refused"),
        ({"name": "x", "kind": "oidc", "issuer": "https://i", "jwks": "http://idp.corp/jwks", "algorithms": ["RS256"],
          "audience": "a", "map": {"role": "r"}}, "plain http only on loopback"),
        ({"name": "x", "kind": "spiffe", "trust_domain": "a.example", "bundle": "file:/b", "audience": "a",
          "map": {"path": "/agent/{sub}"}}, "map.role: put {role} in the path or fix it"),
        ({"name": "x", "kind": "spiffe", "trust_domain": "a.example", "bundle": "file:/b",
          "map": {"path": "/agent/{role}/{sub}"}}, "audience"),
    ],
)
def test_unsafe_issuer_settings_are_config_errors(tmp_path: Path, issuer: dict[str, Any], message: str) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({"identity": {"issuers": [issuer]}}))
    with pytest.raises(ConfigError) as e:
        load(cfg)
    assert message in str(e.value)


def _spiffe(name: str, trust_domain: str) -> dict[str, Any]:
    return {"name": name, "kind": "spiffe", "trust_domain": trust_domain, "bundle": "file:/b", "audience": "a",
            "map": {"path": "/agent/{role}/{sub}"}}


@pytest.mark.parametrize(
    ("issuers", "trust_domain", "message"),
    [
        ([], None, "listen_tls: client certificates are mapped by a spiffe issuer"),
        ([_spiffe("a", "a.example"), _spiffe("b", "b.example")], None, "listen_tls.trust_domain: name the one of a.example, b.example"),
        ([_spiffe("a", "a.example")], "b.example", "listen_tls.trust_domain b.example: no spiffe issuer has it"),
    ],
)
def test_listen_tls_maps_one_trust_domain(tmp_path: Path, issuers: list[dict[str, Any]], trust_domain: str | None, message: str) -> None:
    cfg = tmp_path / "gateway.yaml"
    tls = {"address": "127.0.0.1:8443", "cert": "file:/c", "key": "file:/k", "client_ca": "file:/ca", "trust_domain": trust_domain}
    cfg.write_text(yaml.safe_dump({"listen_tls": tls, "identity": {"issuers": issuers}}))
    with pytest.raises(ConfigError) as e:
        load(cfg)
    assert message in str(e.value)
