"""Step 1: the agent token, at CONNECT and again on every request inside the tunnel."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.identity import tokens as identity
from tests.clients import basic, client, error_of, raw_connect, read_response
from tests.fakes import FakeVendor, vendor_settings
from tests.processes import GatewayProcess


def _signed(gw: GatewayProcess, **claims: object) -> str:
    key = identity.load_or_create_key(gw.state_dir / "signing-key.pem")
    now = int(time.time())
    base: dict[str, object] = {
        "iss": "egress-gateway", "aud": "egress-gateway", "sub": "a", "role": "finance", "scopes": ["*"],
        "iat": now, "nbf": now, "exp": now + 300, "jti": "j-" + str(now),
    }
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key.private, algorithm="EdDSA")


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        (None, "identity_missing"),
        ("Digest abc", "identity_missing"),
        ("Basic !!!notbase64", "identity_invalid"),
        ("Bearer not.a.jwt", "identity_invalid"),
    ],
)
def test_connect_without_a_usable_token_is_407(gateway: GatewayProcess, auth: str | None, code: str) -> None:
    sock, resp = raw_connect(gateway, "api.stripe.com", auth)
    sock.close()
    assert resp.status == 407
    assert resp.headers["proxy-authenticate"].startswith("Basic")
    assert resp.error()["code"] == code


@pytest.mark.parametrize("tail", [b"\xe9\xff", b"\xc3", b"\xed\xa0\x80"])
def test_a_bearer_token_with_bytes_that_are_not_utf8_is_invalid_not_an_internal_error(
    gateway: GatewayProcess, tail: bytes
) -> None:
    """mitmproxy hands such bytes over as surrogates, which PyJWT could not encode: the CONNECT was
    refused as 500 internal_error with a traceback in the log. A JWT is ASCII; anything else is a
    malformed token."""
    failed = gateway.log_file.read_text().count("decision failed")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"CONNECT api.stripe.com:443 HTTP/1.1\r\nHost: api.stripe.com:443\r\n"
                     b"Proxy-Authorization: Bearer " + gateway.token().encode() + tail + b"\r\n\r\n")
        answer = read_response(sock)
    assert (answer.status, answer.headers["x-egress-error"]) == (200, "identity_invalid")
    assert gateway.log_file.read_text().count("decision failed") == failed  # no traceback logged


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        (lambda now: {"exp": now - 120}, "identity_expired"),
        (lambda now: {"nbf": now + 600, "exp": now + 900}, "identity_expired"),
        (lambda now: {"aud": "someone-else"}, "identity_invalid"),
        (lambda now: {"iss": "evil"}, "identity_invalid"),
        (lambda now: {"jti": None}, "identity_invalid"),
        (lambda now: {"role": None}, "identity_invalid"),
        (lambda now: {"exp": now + 7200}, "identity_expired"),  # lifetime above max_token_ttl
    ],
)
def test_bad_claims_are_refused_at_connect(gateway: GatewayProcess, claims: Callable[[int], dict], code: str) -> None:
    # Times from when the test runs, not when it was collected: a long suite would let nbf pass.
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(_signed(gateway, **claims(int(time.time())))))
    sock.close()
    assert (resp.status, resp.error()["code"]) == (407, code)


@pytest.mark.parametrize(
    "times",
    [
        {"exp": float("nan")},  # every comparison with NaN is false: it would never expire
        {"exp": "9999999999"},  # PyJWT leaves exp to the gateway (verify_exp off): was a 500 internal_error
        {"exp": [1]},
        {"iat": "1"},  # PyJWT's own check takes int("1")
        {"exp": True},
    ],
    ids=["exp-nan", "exp-string", "exp-list", "iat-string", "exp-bool"],
)
def test_signed_token_with_times_that_are_not_numbers_is_refused(gateway: GatewayProcess, times: dict) -> None:
    token = _signed(gateway, **times)
    r = httpx.post(f"{gateway.api_url}/v1/detokenize", json={"text": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert (r.status_code, error_of(r)["code"]) == (401, "identity_invalid")
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(token))
    sock.close()
    assert (resp.status, resp.error()["code"]) == (407, "identity_invalid")


def test_token_signed_by_another_key_is_refused(gateway: GatewayProcess) -> None:
    now = int(time.time())
    forged = jwt.encode(
        {"iss": "egress-gateway", "aud": "egress-gateway", "sub": "a", "role": "finance", "scopes": ["*"],
         "iat": now, "nbf": now, "exp": now + 60, "jti": "x"},
        Ed25519PrivateKey.generate(), algorithm="EdDSA",
    )
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(forged))
    sock.close()
    assert (resp.status, resp.error()["code"]) == (407, "identity_invalid")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_hs256_token_with_public_key_as_secret_is_refused(gateway: GatewayProcess) -> None:
    now = int(time.time())
    forged = jwt.encode(
        {"iss": "egress-gateway", "aud": "egress-gateway", "sub": "a", "role": "finance", "scopes": ["*"],
         "iat": now, "nbf": now, "exp": now + 60, "jti": "x"},
        "secret", algorithm="HS256",
    )
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(forged))
    sock.close()
    assert (resp.status, resp.error()["code"]) == (407, "identity_invalid")


def test_admin_token_is_not_a_proxy_credential(gateway: GatewayProcess) -> None:
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(gateway.token(role="admin")))
    sock.close()
    assert (resp.status, resp.error()["code"]) == (407, "identity_invalid")


def _basic_raw(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


# Hostile Basic credentials since the token became the last ':' field (or the user name when the
# password is empty): none authenticates as anyone, takes a role, or turns the 407 into a 500.
CRAFTED: dict[str, tuple[Callable[[GatewayProcess], str], str]] = {
    "admin token as the user, no password": (lambda g: _basic_raw(g.token(role="admin").encode() + b":"), "identity_invalid"),
    "metrics token alone": (lambda g: _basic_raw(g.token(role="metrics", scopes=()).encode()), "identity_invalid"),
    "agent token as the user, junk password": (lambda g: _basic_raw(g.token().encode() + b":junk"), "identity_invalid"),
    "admin token as password, agent as user": (lambda g: basic(g.token(role="admin"), user=g.token()), "identity_invalid"),
    "token with a NUL": (lambda g: _basic_raw(b"agent:" + g.token().encode() + b"\x00"), "identity_invalid"),
    "token with a byte that is not UTF-8": (lambda g: _basic_raw(b"agent:" + g.token().encode() + b"\xff"), "identity_invalid"),
    "only colons": (lambda g: _basic_raw(b":" * 4000), "identity_missing"),
    "a long junk token": (lambda g: _basic_raw(b"agent:" + b"e" * 6000), "identity_invalid"),
}


@pytest.mark.parametrize("form", CRAFTED)
def test_crafted_basic_credentials_are_refused_407(gateway: GatewayProcess, form: str) -> None:
    make, code = CRAFTED[form]
    sock, resp = raw_connect(gateway, "api.stripe.com", make(gateway))
    sock.close()
    assert (resp.status, resp.error()["code"]) == (407, code)


def test_refused_connect_is_audited_without_the_token(gateway: GatewayProcess) -> None:
    token = _signed(gateway, aud="someone-else")
    time.sleep(1.1)  # refusals without a valid token are written one a second per source (gateway.audit.noise)
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(token))
    sock.close()
    decision_id = resp.error()["decision_id"]
    rec = next(r for r in gateway.audit() if r.get("decision_id") == decision_id)
    assert rec["decision"] == "deny" and rec["code"] == "identity_invalid" and rec["method"] == "CONNECT"
    assert token not in gateway.audit_file.read_text()


@pytest.mark.parametrize("by", ["jti", "sub"])
def test_revocation_stops_an_open_tunnel_within_a_second(gateway: GatewayProcess, vendor: FakeVendor, by: str) -> None:
    sub = f"revoked-{by}"
    token = gateway.token(sub=sub, scopes=("stripe:*",))
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    other = gateway.token(sub="bystander", scopes=("stripe:*",))
    with client(gateway, token) as c, client(gateway, other) as bystander:
        assert c.get("https://api.stripe.com/v1/balance").status_code == 200
        gateway.cli("token", "revoke", f"--{by}", jti if by == "jti" else sub)
        time.sleep(1.0)
        before = len(vendor.received)
        r = c.get("https://api.stripe.com/v1/balance")
        assert r.status_code == 407, r.text
        assert error_of(r)["code"] == "identity_revoked"
        assert len(vendor.received) == before
        assert bystander.get("https://api.stripe.com/v1/balance").status_code == 200


@pytest.mark.chaos_full  # waits out a token (~8 s); expiry inside a tunnel is in the default run (tests/proxy/test_admission.py, test_stream_cutoff.py)
def test_token_expiring_inside_an_open_tunnel_stops_working(make_gateway, pki, vendor: FakeVendor) -> None:
    gw = make_gateway(vendor_settings(pki, vendor, token_leeway="1s"))
    token = gw.token(scopes=("stripe:*",), ttl=2)
    with client(gw, token, limits=httpx.Limits(keepalive_expiry=60)) as c:
        assert c.get("https://api.stripe.com/v1/balance").status_code == 200
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        time.sleep(max(0.0, expires + 1 + 0.5 - time.time()))  # past exp plus the 1 s clock-skew leeway (and 0.5 s)
        r = c.get("https://api.stripe.com/v1/balance")
    assert (r.status_code, error_of(r)["code"]) == (407, "identity_expired")


def test_scopes_decide_which_actions(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    token = gateway.token(scopes=("stripe:retrieve_balance",))
    with client(gateway, token) as c:
        assert c.get("https://api.stripe.com/v1/balance").status_code == 200
        r = c.post("https://api.stripe.com/v1/refunds", data={"payment_intent": "pi_1"})
    err = error_of(r)
    assert (r.status_code, err["code"], err["connector"], err["action"]) == (403, "scope_denied", "stripe", "create_refund")
    assert [x.path for x in vendor.received] == ["/v1/balance"]
