"""The pure rules under trusted issuers and listen_tls: SPIFFE ID syntax, scope narrowing, claim
paths, key sets (fail closed on a bad file), and the listener's key material refused with a
readable config error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ListenTls
from gateway.errors import ConfigError, Refusal
from gateway.identity.issuers import claim, covers, narrow, parse_spiffe_id
from gateway.identity.jwks import FILE_POLL_SECONDS, FileJwks, JwksError, parse_jwks
from gateway.proxy.mtls import listener_context
from tests.identity.issuer_kit import IssuerKey, SpiffePki, write_jwks


def test_a_well_formed_spiffe_id_parses() -> None:
    assert parse_spiffe_id("spiffe://acme.example/agent/finance/01") == ("acme.example", ("agent", "finance", "01"))


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://acme.example",  # the trust domain itself is no workload
        "spiffe://acme.example/",
        "spiffe://acme.example//agent",
        "spiffe://acme.example/agent/../admin",
        "spiffe://acme.example/agent/./x",
        "spiffe://ACME.example/agent",
        "spiffe://acme.example:8443/agent",
        "spiffe://user@acme.example/agent",
        "spiffe://acme.example/agent?role=admin",
        "spiffe://acme.example/agent#x",
        "spiffe://acme.example/agent/fin%2Fance",
        "spiffe://acme.example/agent/finance/01\n",  # `$` matches before a final newline; fullmatch does not
        "spiffe://acme.example\n/agent/finance/01",
        "https://acme.example/agent",
        "SPIFFE://acme.example/agent",
        "spiffe://acme.example/" + "a" * 2100,
        42,
        None,
    ],
)
def test_malformed_spiffe_ids_are_refused(value: object) -> None:
    with pytest.raises(Refusal) as e:
        parse_spiffe_id(value)
    assert e.value.code == "identity_invalid"


@pytest.mark.parametrize(
    ("scopes", "ceiling", "expected"),
    [
        (("stripe:*", "serpapi:*"), ("stripe:*", "openai:*"), ("stripe:*",)),
        (("*",), ("stripe:refund", "openai:*"), ("stripe:refund", "openai:*")),
        (("stripe:*",), ("stripe:refund",), ("stripe:refund",)),
        (("stripe:refund",), ("stripe:*",), ("stripe:refund",)),
        (("stripe:refund",), (), ()),
        ((), ("*",), ()),
        (("stripes:*",), ("stripe:*",), ()),  # a prefix of the name is not the connector
    ],
)
def test_narrow_keeps_exactly_what_both_sets_reach(scopes: tuple[str, ...], ceiling: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert narrow(scopes, ceiling) == expected


_scope = st.sampled_from(["*", "stripe:*", "openai:*", "stripe:refund", "stripe:charge", "openai:chat", "serpapi:search"])
_actions = ["stripe:refund", "stripe:charge", "openai:chat", "openai:embed", "serpapi:search"]


@given(st.lists(_scope, max_size=4), st.lists(_scope, max_size=4))
def test_narrowed_scopes_reach_an_action_iff_both_sets_do(scopes: list[str], ceiling: list[str]) -> None:
    narrowed = narrow(tuple(scopes), tuple(ceiling))
    for action in _actions:
        both = any(covers(s, action) for s in scopes) and any(covers(c, action) for c in ceiling)
        assert any(covers(n, action) for n in narrowed) == both, (action, narrowed)


def test_claim_paths() -> None:
    claims = {"sub": "u1", "org": "acme", "ext": {"role": "finance"}, "claims": {"x": "nested"}}
    assert claim(claims, "sub") == "u1"
    assert claim(claims, "claims.org") == "acme"  # `claims.` is the token's own root
    assert claim(claims, "ext.role") == "finance"
    assert claim(claims, "claims.claims.x") == "nested"
    assert claim(claims, "=fixed") == "fixed"
    assert claim(claims, "ext.role.deeper") is None
    assert claim(claims, "missing") is None


def _tls(tmp_path: Path, **files: Path) -> ListenTls:
    pki = SpiffePki(tmp_path / "pki", "acme")
    cert, key = pki.server()
    paths = {"cert": cert, "key": key, "client_ca": pki.ca_file, **files}
    return ListenTls.model_validate({"address": "127.0.0.1:8443", **{k: f"file:{v}" for k, v in paths.items()}})


def test_listener_key_material_loads(tmp_path: Path) -> None:
    listener_context(_tls(tmp_path))


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("cert", None, "listen_tls.cert: cannot read"),
        ("cert", b"not a certificate", "listen_tls.cert: "),
        ("key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "listen_tls.key: "),
        ("client_ca", b"garbage", "listen_tls.client_ca: "),
        ("key", "other", "listen_tls.key: "),  # a key, but of another certificate
    ],
)
def test_bad_listener_key_material_is_a_config_error(tmp_path: Path, which: str, content: bytes | str | None, message: str) -> None:
    bad = tmp_path / f"bad-{which}"
    if content == "other":
        bad = SpiffePki(tmp_path / "other", "other").server()[1]
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        listener_context(_tls(tmp_path, **{which: bad}))
    assert str(e.value).startswith(message), e.value
    assert "BEGIN" not in str(e.value)  # names the file, never its content


def test_a_key_file_that_stops_parsing_trusts_nothing_until_fixed(tmp_path: Path) -> None:
    key = IssuerKey("ES256")
    path = write_jwks(tmp_path / "bundle.jwks", key, use="jwt-svid")
    now = [0.0]
    keys = FileJwks(path, frozenset({"jwt-svid"}), clock=lambda: now[0])
    assert list(keys.current()) == [key.kid]
    path.write_text('{"keys": [')  # a half-written file
    now[0] += FILE_POLL_SECONDS
    assert keys.current() == {}
    write_jwks(path, key, use="jwt-svid")
    now[0] += FILE_POLL_SECONDS
    assert list(keys.current()) == [key.kid]
    path.unlink()
    now[0] += FILE_POLL_SECONDS
    assert keys.current() == {}


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"keys": [{"kid": "a", "kty": "EC", "d": "secret"}]}, "private key material"),
        ({"keys": [{"kid": "a", "kty": "EC"}, {"kid": "a", "kty": "EC"}]}, "two keys share the kid"),
        ({"keys": [{"kty": "EC"}]}, "every key needs a string 'kid' and 'kty'"),
        ({"nokeys": []}, "no 'keys' list"),
    ],
)
def test_unusable_key_sets_are_refused_whole(doc: dict[str, Any], problem: str) -> None:
    with pytest.raises(JwksError, match=problem):
        parse_jwks(json.dumps(doc).encode(), frozenset({"sig"}))


def test_keys_for_another_use_are_skipped() -> None:
    doc = {"keys": [{"kid": "x509", "kty": "EC", "use": "x509-svid"}, {"kid": "jwt", "kty": "EC", "use": "jwt-svid"},
                    {"kid": "any", "kty": "EC"}]}
    assert sorted(parse_jwks(json.dumps(doc).encode(), frozenset({"jwt-svid"}))) == ["any", "jwt"]
