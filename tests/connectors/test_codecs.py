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
