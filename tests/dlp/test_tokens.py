"""Token format: unguessable, recognizable, and a stream's pending tail is found exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlp.tokens import MAX_TOKEN_LENGTH, TOKEN_RE, find_tokens, new_token, pending_start, token_type


def test_format() -> None:
    tok = new_token("EMAIL_ADDRESS")
    assert TOKEN_RE.fullmatch(tok)
    assert token_type(tok) == "EMAIL_ADDRESS"
    assert tok.isascii() and all(c.isalnum() or c == "_" for c in tok)
    assert len(tok) <= MAX_TOKEN_LENGTH


def test_random_and_distinct() -> None:
    assert len({new_token("US_SSN") for _ in range(10_000)}) == 10_000


def test_type_with_digits_and_id_with_digits() -> None:
    tok = "tok_TYPE_2_" + "234567abcdefghijklmn"
    assert token_type(tok) == "TYPE_2"


def test_bad_type_rejected() -> None:
    with pytest.raises(ValueError):
        new_token("email")


def test_find_in_text() -> None:
    a, b = new_token("URL"), new_token("IBAN_CODE")
    assert find_tokens(f"see {a}, and ({b}).") == [a, b]


@given(st.integers(min_value=0, max_value=60))
def test_every_prefix_is_pending(cut: int) -> None:
    tok = new_token("PHONE_NUMBER")
    cut = min(cut, len(tok) - 1)
    head = "hello " + tok[:cut]
    start = pending_start(head)
    assert head[start:] == tok[:cut] or (cut == 0 and start == len(head))


def test_complete_token_and_plain_text_are_not_pending() -> None:
    tok = new_token("EMAIL_ADDRESS")
    assert pending_start("x " + tok) == len("x " + tok)
    assert pending_start("plain words.") == len("plain words.")
    assert pending_start("a cat") == len("a cat") - 1  # a trailing "t" may start a token
