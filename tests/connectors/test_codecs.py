"""Body decoding: Stripe-style forms, JSON limits, and the round trip DLP relies on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors import codecs
from connectors.model import BodyEncoding
from gateway.errors import Refusal


def test_stripe_form_nesting() -> None:
    got = codecs.decode_form("amount=100&metadata[account]=1234567890&expand[]=a&expand[]=b&items[0][p]=x&items[1][p]=y")
    assert got == {"amount": "100", "metadata": {"account": "1234567890"}, "expand": ["a", "b"], "items": [{"p": "x"}, {"p": "y"}]}


@pytest.mark.parametrize(
    "text",
    ["a=1&a=2", "a=1&a[b]=2", "a[b]=1&a=2", "[x]=1", "a[]b=1", "a[]=1&a[k]=2", "a=%zz&&b"],
)
def test_ambiguous_or_broken_forms_are_refused(text: str) -> None:
    with pytest.raises(Refusal) as e:
        codecs.decode_form(text)
    assert e.value.code == "malformed_body"


def test_query_action_refuses_a_body_and_body_action_refuses_a_query() -> None:
    with pytest.raises(Refusal):
        codecs.decode(BodyEncoding.QUERY, b"x=1", "")
    with pytest.raises(Refusal):
        codecs.decode(BodyEncoding.FORM, b"x=1", "y=2")


def test_json_limits() -> None:
    assert codecs.decode_json(b"") == {}
    deep = b'{"a":' * 40 + b"1" + b"}" * 40
    with pytest.raises(Refusal, match="nests deeper"):
        codecs.decode_json(deep)
    with pytest.raises(Refusal, match=r"number is too long|not valid JSON"):
        codecs.decode_json(b'{"n": ' + b"1" * 5000 + b"}")
    with pytest.raises(Refusal, match="must be an object"):
        codecs.decode_json(b'"text"')


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"1" + b"0" * 400 + b".5", b"[2e308]"])
def test_a_number_beyond_a_double_is_refused(number: bytes) -> None:
    """It read as Infinity: past every `max`, and a 500 where the API echoes the body back."""
    with pytest.raises(Refusal, match="beyond the range of a double"):
        codecs.decode_json(b'{"n": ' + number + b"}")


def test_the_extremes_of_a_double_still_read() -> None:
    body = b'{"max": 1.7976931348623157e308, "tiny": 5e-324, "under": 1e-999, "int": ' + b"9" * 400 + b"}"
    assert codecs.decode_json(body) == {"max": 1.7976931348623157e308, "tiny": 5e-324, "under": 0.0, "int": int("9" * 400)}


@pytest.mark.parametrize("body", [b'{"a": 1, "a": 2}', b'{"model": 1, "\\uff4dodel": 2}', b'{"x": {"k": 1}, "X": 2}'])
def test_an_envelope_repeating_a_top_level_key_is_refused(body: bytes) -> None:
    with pytest.raises(Refusal, match="same key twice"):
        codecs.refuse_repeated_envelope_key(body)


def test_an_envelope_leaves_what_its_values_hold_alone() -> None:
    codecs.refuse_repeated_envelope_key(b'{"input": {"k": 1, "k": 2, "K": [{"a": 1, "a": 2}]}, "tool": "t"}')


_names = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
_values = st.text(min_size=0, max_size=20)
_forms = st.dictionaries(
    _names,
    st.one_of(_values, st.dictionaries(_names, _values, min_size=1, max_size=3), st.lists(_values, min_size=1, max_size=3)),
    max_size=5,
)


@given(_forms)
def test_form_encode_then_decode_is_identity(params: dict) -> None:
    assert codecs.decode_form(codecs.encode_form(params)) == params
