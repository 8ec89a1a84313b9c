"""mTLS to the proxy (`listen_tls`): the agent's X.509-SVID is its identity, through curl and httpx
with an https:// proxy URL, against a real gateway and the fake vendor."""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from openai import OpenAI

from tests.clients import error_of, read_response, trusting
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.identity.issuer_kit import AUDIENCE, IssuerKey, SpiffePki, claims, write_jwks
from tests.processes import GatewayProcess, free_port

BALANCE = "https://api.stripe.com/v1/balance"
SEARCH = "https://serpapi.com/search.json?q=tea"


class Mtls:
    def __init__(self, root: Path, pki: PKI, vendor: FakeVendor) -> None:
        self.acme = SpiffePki(root / "acme", "acme")
        self.evil = SpiffePki(root / "evil", "evil")
        self.key = IssuerKey("ES256")
        bundle = write_jwks(root / "bundle.jwks", self.key, use="jwt-svid")
        cert, key = self.acme.server()
        self.tls_port = free_port()
        issuer = {"name": "spire", "kind": "spiffe", "trust_domain": "acme.example", "bundle": f"file:{bundle}",
                  "audience": AUDIENCE, "map": {"path": "/agent/{role}/{sub}", "tenant": "acme", "scopes": ["stripe:*", "openai:*"]}}
        # A second trust domain, federated for JWT-SVIDs: listen_tls names the one its client_ca is for.
        partner = {**issuer, "name": "partner", "trust_domain": "partner.example",
                   "bundle": f"file:{write_jwks(root / 'partner.jwks', IssuerKey('ES256'), use='jwt-svid')}"}
        listen_tls = {"address": f"127.0.0.1:{self.tls_port}", "cert": f"file:{cert}", "key": f"file:{key}",
                      "client_ca": f"file:{self.acme.ca_file}", "trust_domain": "acme.example"}
        # The shipped policies decide within the certificate's scopes, by the role its SPIFFE ID maps to.
        identity = {"issuers": [issuer, partner]}
        # A 1 s clock leeway: a certificate's expiry inside an open tunnel shows within seconds.
        settings = vendor_settings(pki, vendor, identity=identity, listen_tls=listen_tls, policies=str(REPO / "policies"),
                                   token_leeway="1s")
        self.gw = GatewayProcess(root / "gw", settings)
        self.agent = self.acme.svid("agent-01", "spiffe://acme.example/agent/finance/01")
        self.researcher = self.acme.svid("research-01", "spiffe://acme.example/agent/research/r1")

    @property
    def proxy(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def proxy_context(self, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        """What the agent's client uses toward the proxy: trust the listener, show its SVID."""
        ctx = ssl.create_default_context(cafile=str(self.acme.ca_file))
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx

    def httpx(self, cert: tuple[Path, Path] | None, token: str | None = None) -> httpx.Client:
        proxy = httpx.Proxy(self.proxy, ssl_context=self.proxy_context(cert), headers=_bearer(token))
        return httpx.Client(proxy=proxy, verify=trusting(self.gw), timeout=20)

    def curl(self, cert: tuple[Path, Path] | None, url: str = BALANCE) -> subprocess.CompletedProcess[str]:
        args = ["curl", "-sS", "--proxy", self.proxy, "--proxy-cacert", str(self.acme.ca_file),
                "--cacert", str(self.gw.ca_file), "-w", "\n%{http_code}", url]
        if cert is not None:
            args += ["--proxy-cert", str(cert[0]), "--proxy-key", str(cert[1])]
        return subprocess.run(args, capture_output=True, text=True, timeout=30)

    def jwt_svid(self, path: str) -> str:
        return self.key.sign(claims(f"spiffe://acme.example{path}"))


def _bearer(token: str | None) -> dict[str, str] | None:
    return {"proxy-authorization": f"Bearer {token}"} if token else None


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[Mtls]:
    m = Mtls(tmp_path_factory.mktemp("mtls"), pki, vendor_server)
    with m.gw.start():
        yield m


def _record(gw: GatewayProcess, decision_id: str) -> dict[str, Any]:
    (rec,) = [r for r in gw.audit() if r["decision_id"] == decision_id and r["phase"] == "decision"]
    return rec


def _handshake_refusals(gw: GatewayProcess) -> list[dict[str, Any]]:
    """Refusals with no host: the handshake's, and the summaries of those held back."""
    return [r for r in gw.audit() if r["sub"] is None and r["host"] is None and r["decision"] == "deny"]


def test_curl_through_the_tls_listener_with_its_svid(mtls: Mtls, vendor: FakeVendor) -> None:
    r = mtls.curl(mtls.agent)
    body, _, status = r.stdout.rpartition("\n")
    assert (r.returncode, status) == (0, "200"), r.stderr
    assert '"host": "api.stripe.com"' in body
    (received,) = vendor.received
    rec = _record(mtls.gw, received.headers["x-egress-decision-id"])
    assert (rec["sub"], rec["tenant"], rec["role"], rec["issuer"]) == ("spire:01", "acme", "finance", "spire")
    assert rec["jti"].startswith("spire:x509:")


def test_httpx_https_proxy_with_its_svid_and_the_certificates_scopes(mtls: Mtls, vendor: FakeVendor) -> None:
    with mtls.httpx(mtls.agent) as c:
        ok = c.get(BALANCE)
        outside = c.get(SEARCH)  # the spire issuer's scopes are stripe:* and openai:* only
    assert ok.status_code == 200, ok.text
    assert (outside.status_code, error_of(outside)["code"]) == (403, "scope_denied")
    assert len(vendor.received) == 1


def test_a_certificate_outside_the_trust_bundle_or_none_is_refused_at_the_handshake_and_audited(
    mtls: Mtls, vendor: FakeVendor
) -> None:
    foreign = mtls.evil.svid("foreign", "spiffe://acme.example/agent/finance/01")
    time.sleep(1.1)  # past the noise window of earlier unauthenticated refusals from 127.0.0.1
    before = len(_handshake_refusals(mtls.gw))
    r = mtls.curl(foreign)
    assert r.returncode != 0 and r.stdout.strip() in ("", "000"), r.stdout  # no HTTP answer at all
    # TLS 1.3: the client finishes its side first; the refusal arrives as the connection closing.
    with pytest.raises(httpx.TransportError), mtls.httpx(foreign) as c:
        c.get(BALANCE)
    _wait_for(lambda: len(_handshake_refusals(mtls.gw)) == before + 1)
    time.sleep(1.1)  # the next window: its first refusal is written as it is
    r = mtls.curl(None)
    assert r.returncode != 0 and r.stdout.strip() in ("", "000"), r.stdout
    _wait_for(lambda: len(_handshake_refusals(mtls.gw)) == before + 3)
    assert vendor.received == []
    # Per window, the first refusal is written as it is and the rest are counted in a summary.
    new = _handshake_refusals(mtls.gw)[before:]
    assert [(x["code"], x["client"]) for x in new] == [
        ("identity_invalid", "127.0.0.1"), (None, "127.0.0.1"), ("identity_missing", "127.0.0.1")
    ]
    assert "client_ca" in new[0]["message"]
    assert new[1]["suppressed"]["codes"] == {"identity_invalid": 1}


def _wait_for(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done()


def test_a_jwt_on_top_must_name_the_same_agent(mtls: Mtls, vendor: FakeVendor) -> None:
    with mtls.httpx(mtls.agent, token=mtls.jwt_svid("/agent/finance/02")) as c:
        mismatch = c.get(BALANCE)
    err = error_of(mismatch)
    assert (mismatch.status_code, err["code"]) == (407, "identity_invalid")
    assert "different agents" in err["message"]
    rec = _record(mtls.gw, err["decision_id"])
    assert rec["sub"] == "spire:01"  # who the certificate says connected
    with mtls.httpx(mtls.agent, token=mtls.jwt_svid("/agent/finance/01")) as c:
        agree = c.get(BALANCE)
    assert agree.status_code == 200, agree.text
    assert len(vendor.received) == 1


@pytest.mark.parametrize("trust_domain", ["other.example", "partner.example"])
def test_a_trusted_certificate_of_another_trust_domain_gets_a_readable_refusal(
    mtls: Mtls, vendor: FakeVendor, trust_domain: str
) -> None:
    """partner.example is a configured issuer, but acme's CA may not vouch for its SPIFFE IDs."""
    other = mtls.acme.svid(f"cert-{trust_domain}", f"spiffe://{trust_domain}/agent/finance/01")
    with mtls.httpx(other) as c:
        r = c.get(BALANCE)
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_invalid")
    assert "its own trust domain" in error_of(r)["message"]
    two = mtls.acme.svid("two-ids", "spiffe://acme.example/agent/finance/01", "spiffe://acme.example/agent/finance/02")
    with mtls.httpx(two) as c:
        r = c.get(BALANCE)
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_invalid")
    assert vendor.received == []


def test_a_certificate_whose_spiffe_id_ends_in_a_newline_maps_to_no_agent(mtls: Mtls, vendor: FakeVendor) -> None:
    """`spiffe://acme.example/agent/finance/01` plus a newline is not a SPIFFE ID: it would be the
    agent `spire:01` and a newline, a subject no revocation of `spire:01` reaches and a forged line
    in the access log."""
    trailing = mtls.acme.svid("newline-id", "spiffe://acme.example/agent/finance/01\n")
    with mtls.httpx(trailing) as c:
        r = c.get(BALANCE)
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_invalid")
    assert vendor.received == []


def test_a_ca_certificate_is_no_agent_even_from_the_trust_domains_ca(mtls: Mtls, vendor: FakeVendor) -> None:
    """The SPIFFE X.509-SVID spec: a leaf sets cA false. A signing certificate (an intermediate CA
    carrying an agent's SPIFFE ID) is not an agent's identity, whoever signed it."""
    signing = mtls.acme.svid("ca-leaf", "spiffe://acme.example/agent/finance/01", ca=True)
    with mtls.httpx(signing) as c:
        r = c.get(BALANCE)
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_invalid")
    assert "signing (CA) certificate" in error_of(r)["message"]
    assert vendor.received == []


def test_plain_http_on_the_tls_listener_has_no_identity(mtls: Mtls, vendor: FakeVendor) -> None:
    """Even with a valid token: this listener's identity is the certificate. The refusal is readable
    inside the tunnel as on the plain listener (the tunnel's TLS is the gateway CA's, not mTLS)."""
    token = mtls.jwt_svid("/agent/finance/01")
    with socket.create_connection(("127.0.0.1", mtls.tls_port), timeout=10) as sock:
        sock.sendall(f"CONNECT api.stripe.com:443 HTTP/1.1\r\nHost: api.stripe.com:443\r\n"
                     f"Proxy-Authorization: Bearer {token}\r\n\r\n".encode())
        answer = read_response(sock)
        assert (answer.status, answer.headers["x-egress-error"]) == (200, "identity_missing")
        with trusting(mtls.gw).wrap_socket(sock, server_hostname="api.stripe.com") as tls:
            tls.sendall(b"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
            refusal = read_response(tls)
    assert (refusal.status, refusal.error()["code"]) == (407, "identity_missing")
    assert "listen_tls" in refusal.error()["message"]
    assert vendor.received == []


def test_revoking_the_certificates_subject_closes_its_tunnel(mtls: Mtls) -> None:
    revoked = mtls.acme.svid("agent-rev", "spiffe://acme.example/agent/finance/rev")
    with mtls.httpx(revoked) as c:
        assert c.get(BALANCE).status_code == 200
        mtls.gw.cli("token", "revoke", "--sub", "spire:rev")
        deadline = time.monotonic() + 10
        while (r := c.get(BALANCE)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_revoked")


def test_a_token_on_top_does_not_outlive_the_certificate(mtls: Mtls) -> None:
    """With a token on top the tunnel's identity is the token's, narrowed to the certificate: its
    expiry must be the earlier of the two, or an expired certificate serves as long as the token."""
    short = mtls.acme.svid("short-lived", "spiffe://acme.example/agent/finance/short",
                           lifetime=datetime.timedelta(minutes=5, seconds=3))  # issued 5 min ago: 3 s left
    with mtls.httpx(short, token=mtls.jwt_svid("/agent/finance/short")) as c:
        assert c.get(BALANCE).status_code == 200
        deadline = time.monotonic() + 15
        while (r := c.get(BALANCE)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.25)
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_expired")


def test_revoking_the_certificate_by_its_jti_closes_its_tunnel_under_a_token_too(mtls: Mtls) -> None:
    """The audit names a certificate `spire:x509:<sha256>`; revoking that jti must stop the tunnel
    even when a token of the same agent rides on top (the tunnel's identity is then the token's)."""
    cert = mtls.acme.svid("agent-stolen", "spiffe://acme.example/agent/finance/stolen")
    der = x509.load_pem_x509_certificate(cert[0].read_bytes()).public_bytes(serialization.Encoding.DER)
    with mtls.httpx(cert, token=mtls.jwt_svid("/agent/finance/stolen")) as c:
        assert c.get(BALANCE).status_code == 200
        mtls.gw.cli("token", "revoke", "--jti", f"spire:x509:{hashlib.sha256(der).hexdigest()[:32]}")
        deadline = time.monotonic() + 10
        while (r := c.get(BALANCE)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_revoked")


def _urllib3(m: Mtls) -> tuple[int, str]:
    pool = urllib3.ProxyManager(m.proxy, proxy_ssl_context=m.proxy_context(m.agent), ca_certs=str(m.gw.ca_file))
    r = pool.request("GET", BALANCE)
    return r.status, r.json()["host"]


def _requests(m: Mtls) -> tuple[int, str]:
    """requests has no setting for a proxy's client certificate; an adapter hands urllib3 one."""
    ctx = m.proxy_context(m.agent)

    class ProxyCertificate(requests.adapters.HTTPAdapter):
        def proxy_manager_for(self, proxy: str, **kw: Any) -> Any:
            return super().proxy_manager_for(proxy, proxy_ssl_context=ctx, **kw)

    with requests.Session() as session:
        session.mount("https://", ProxyCertificate())
        r = session.get(BALANCE, proxies={"https": m.proxy}, verify=str(m.gw.ca_file), timeout=20)
    return r.status_code, r.json()["host"]


def _openai(m: Mtls) -> tuple[int, str]:
    with m.httpx(m.researcher) as http:  # the research policy allows embeddings; finance's does not
        sdk = OpenAI(api_key="sk-agent-placeholder", http_client=http, max_retries=0)
        raw = sdk.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["hello"])
        return raw.status_code, raw.http_response.json()["host"]


@pytest.mark.parametrize(
    ("name", "call", "host"),
    [("urllib3", _urllib3, "api.stripe.com"), ("requests", _requests, "api.stripe.com"), ("openai", _openai, "api.openai.com")],
)
def test_sdks_that_can_present_a_client_certificate_to_an_https_proxy(
    mtls: Mtls, vendor: FakeVendor, name: str, call: Callable[[Mtls], tuple[int, str]], host: str
) -> None:
    assert call(mtls) == (200, host), name
    assert len(vendor.received) == 1


def test_the_policy_decides_by_the_role_the_certificate_maps_to(mtls: Mtls, vendor: FakeVendor) -> None:
    with mtls.httpx(mtls.agent) as finance, mtls.httpx(mtls.researcher) as research:
        allowed = finance.get(BALANCE)
        denied = research.get(BALANCE)  # within the issuer's scopes, but no research rule names it
    assert allowed.status_code == 200, allowed.text
    assert (denied.status_code, error_of(denied)["code"]) == (403, "policy_denied")
    assert _record(mtls.gw, allowed.headers["x-egress-decision-id"])["rules"] == ["finance-balance"]
    assert len(vendor.received) == 1
