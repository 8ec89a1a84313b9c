"""The respond side's secret scrubber on its own: whatever the chunking, no secret form survives,
and everything else of the stream arrives unchanged."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.pipeline.scrub import REPLACEMENT, Scrubber, encodings

_secret = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=40)
_text = st.binary(max_size=300)


@given(secret=_secret, before=_text, after=_text, cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=8))
def test_a_stream_scrubs_every_form_however_it_is_cut(secret: str, before: bytes, after: bytes, cuts: list[int]) -> None:
    scrubber = Scrubber.of([secret])
    forms = sorted(encodings(secret))
    body = before + b" ".join(forms) + after
    modify, removed = scrubber.stream()
    points = sorted({min(c, len(body)) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)])]
    out = b"".join(modify(p) for p in pieces if p) + modify(b"")
    assert removed() >= 1
    assert out.startswith(before if not scrubber.held_back(before) else b"")
    kept = out.replace(REPLACEMENT, b"\x00")
    for form in forms:
        assert form not in kept
    assert not any(scrubber.scrub(out)[1] for _ in (0,))


def test_short_values_are_not_scrubbed_and_nothing_configured_changes_nothing() -> None:
    assert Scrubber.of(["abc"]).scrub(b"abc abc") == (b"abc abc", 0)
    assert Scrubber.of([]).scrub(b"sk_live_x") == (b"sk_live_x", 0)
