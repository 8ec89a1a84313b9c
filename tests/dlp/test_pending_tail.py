"""Regression: a complete token at the end of a stream chunk is never held back in part.

Token ids are random; one ending in "t" (1 in 32) used to be split before that letter, so the SSE
detokenizer emitted it in two pieces and restored neither (a flaky failure of the stream tests).
"""

from __future__ import annotations

import pytest

from dlp.tokens import ID_LENGTH, pending_start


@pytest.mark.parametrize("tail", ["t", "to", "tok", "7t"])
def test_complete_token_ending_like_a_token_prefix_is_not_pending(tail: str) -> None:
    tok = "tok_PHONE_NUMBER_" + "a" * (ID_LENGTH - len(tail)) + tail
    assert pending_start("x " + tok) == len("x " + tok)
    assert pending_start(tok + " then t") == len(tok + " then ")
