"""Step 4: the body is decoded and validated against the action's model; bad input is a clear 4xx."""

from __future__ import annotations

import pytest

from tests.clients import client, error_of
from tests.fakes import FakeVendor
from tests.processes import GatewayProcess


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"amount": "lots", "currency": "usd"}, "amount"),
        ({"amount": "-5", "currency": "usd"}, "amount"),
        ({"amount": "100", "currency": "dollars"}, "currency"),
        ({"currency": "usd"}, "amount"),
        ({"amount": "100", "currency": "usd", "transfer_data[destination]": "acct_x"}, "transfer_data"),
    ],
)
def test_stripe_form_schema_violation_names_the_field(gateway: GatewayProcess, vendor: FakeVendor, data: dict, field: str) -> None:
    with client(gateway, gateway.token()) as c:
        r = c.post("https://api.stripe.com/v1/payment_intents", data=data)
    err = error_of(r)
    assert (r.status_code, err["code"]) == (400, "schema_violation")
    assert err["message"].startswith(field)
    assert (err["connector"], err["action"]) == ("stripe", "create_payment_intent")
    assert not vendor.received


def test_json_schema_violation_in_a_nested_field(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    with client(gateway, gateway.token()) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", json={"model": "m", "messages": [{"role": "wizard", "content": "x"}]})
    err = error_of(r)
    assert (r.status_code, err["code"]) == (400, "schema_violation")
    assert err["message"].startswith("messages.0.role")
    assert not vendor.received


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be an object"),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "nests deeper"),
        (b'{"model": ' + b"9" * 100_00 + b"}", "not valid JSON"),
        (b'{"model": "m", "input": "hi \xed\xa0\x80"}', "not UTF-8"),  # a lone surrogate as raw bytes
        # A lone surrogate cannot be written as UTF-8: DLP and re-encoding failed on it (500 internal_error).
        (b'{"model": "m", "input": "mail jane.doe@example.com \\ud800"}', "lone surrogate"),
        (b'{"model": "m", "input": ["x", {"\\udfff": 1}]}', "lone surrogate"),
        # RFC 8259: JSON between systems is UTF-8. json.loads read UTF-16 and UTF-32 too, and the
        # body left as sent, for a vendor whose parser reads it otherwise (or not at all).
        ('{"model": "m", "input": "x"}'.encode("utf-16"), "not UTF-8"),
        ('{"model": "m", "input": "x"}'.encode("utf-32"), "not UTF-8"),
        (b'{"model": "m", "input": "\xff"}', "not UTF-8"),
    ],
)
def test_malformed_json_is_refused(gateway: GatewayProcess, vendor: FakeVendor, body: bytes, reason: str) -> None:
    with client(gateway, gateway.token()) as c:
        r = c.post("https://api.openai.com/v1/embeddings", content=body, headers={"content-type": "application/json"})
    err = error_of(r)
    assert (r.status_code, err["code"]) == (400, "malformed_body")
    assert reason in err["message"] and "jane" not in r.text
    assert not vendor.received


def test_an_escaped_surrogate_pair_is_one_character_and_goes_out(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """What json.dumps writes for an emoji (ensure_ascii): a valid pair, not a lone surrogate."""
    with client(gateway, gateway.token()) as c:
        r = c.post("https://api.openai.com/v1/embeddings", content=b'{"model": "m", "input": "ok \\ud83d\\ude00"}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert len(vendor.received) == 1


def test_form_with_too_many_keys_is_refused(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    body = "&".join(f"metadata[k{i}]=v" for i in range(2000))
    with client(gateway, gateway.token()) as c:
        r = c.post("https://api.stripe.com/v1/customers", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert (r.status_code, error_of(r)["code"]) == (400, "malformed_body")
    assert not vendor.received


def test_parameters_on_an_action_that_takes_none(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    with client(gateway, gateway.token()) as c:
        r = c.get("https://api.stripe.com/v1/balance?expand[]=everything")
    assert (r.status_code, error_of(r)["code"]) == (400, "schema_violation")


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_max_body_is_413_json(gateway: GatewayProcess, vendor: FakeVendor, chunked: bool) -> None:
    big = b'{"model": "m", "input": "' + b"x" * 100_000 + b'"}'
    with client(gateway, gateway.token()) as c:
        content = iter([big]) if chunked else big
        r = c.post("https://api.openai.com/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert error_of(r)["code"] == "body_too_large"
    assert not vendor.received


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        # Rack 2 and others also split parameters on `;`: there this body has amount=900000.
        ("POST", "https://api.stripe.com/v1/payment_intents", b"amount=100&currency=usd&description=x;amount=900000"),
        ("GET", "https://api.stripe.com/v1/customers?limit=3;email=jane.doe@example.com", b""),
        ("GET", "https://serpapi.com/search.json?q=coffee;num=500", b""),
    ],
)
def test_a_raw_semicolon_between_parameters_is_refused(gateway: GatewayProcess, vendor: FakeVendor, method: str, url: str, body: bytes) -> None:
    """The gateway reads `;` as text and would judge one parameter where such a vendor reads two."""
    with client(gateway, gateway.token()) as c:
        r = c.request(method, url, content=body, headers={"content-type": "application/x-www-form-urlencoded"} if body else {})
    err = error_of(r)
    assert (r.status_code, err["code"]) == (400, "malformed_body") and "%3B" in err["message"] and "jane" not in r.text
    assert not vendor.received


def test_a_percent_encoded_semicolon_is_text_and_goes_out(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """What clients send for a `;` in a value (urlencode, stripe-python, httpx's `data=`)."""
    with client(gateway, gateway.token()) as c:
        r = c.post("https://api.stripe.com/v1/payment_intents", data={"amount": "100", "currency": "usd", "description": "a;b"})
    assert r.status_code == 200, r.text
    assert [x.body for x in vendor.received] == [b"amount=100&currency=usd&description=a%3Bb"]


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "https://api.stripe.com/v1/customers", b"description=mail+jane.doe%FF@example.com"),
        ("POST", "https://api.stripe.com/v1/customers", b"name=Jos%E9+Garc%EDa"),  # Latin-1, as a charset parameter would claim
        ("GET", "https://serpapi.com/search.json?q=jane.doe%C0@example.com", b""),
    ],
)
def test_percent_encoded_bytes_that_are_not_utf8_are_refused(gateway: GatewayProcess, vendor: FakeVendor, method: str, url: str, body: bytes) -> None:
    """They decoded to U+FFFD here, which hid the e-mail address from DLP, and left raw: a vendor
    that drops invalid bytes reads jane.doe@example.com."""
    with client(gateway, gateway.token()) as c:
        r = c.request(method, url, content=body, headers={"content-type": "application/x-www-form-urlencoded"} if body else {})
    err = error_of(r)
    assert (r.status_code, err["code"]) == (400, "malformed_body") and "UTF-8" in err["message"] and "jane" not in r.text
    assert not vendor.received
