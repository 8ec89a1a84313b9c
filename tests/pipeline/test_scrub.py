"""The respond side's secret scrubber on its own: whatever the chunking, no secret form survives,
and everything else of the stream arrives unchanged."""

from __future__ import annotations

import base64

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


def _spell(c: str, how: int) -> str:
    """One character of a secret as an echo may spell it (how: 0..11): HTML5 decodes a numeric
    reference without its `;` and with any number of leading zeros."""
    return [
        c, c.upper(), c.lower(), "".join(f"%{b:02X}" for b in c.encode()), "".join(f"%{b:02x}" for b in c.encode()),
        f"\\u{ord(c):04x}", f"\\u{ord(c):04X}", f"&#{ord(c)};", f"&#x{ord(c):x};",
        f"&#{ord(c)}", f"&#0000000{ord(c)};", f"&#X{ord(c):07X}",
    ][how]


@given(
    secret=_secret, before=_text, after=_text, data=st.data(),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_every_spelling_of_every_character_is_scrubbed_however_the_stream_is_cut(
    secret: str, before: bytes, after: bytes, data: st.DataObject, cuts: list[int]
) -> None:
    """Case changes, percent, JSON `\\u` and HTML references, mixed character by character."""
    hows = data.draw(st.lists(st.integers(min_value=0, max_value=11), min_size=len(secret), max_size=len(secret)))
    echo = "".join(_spell(c, how) for c, how in zip(secret, hows)).encode()
    scrubber = Scrubber.of([secret])
    body = before + b" " + echo + b" " + after
    whole, n = scrubber.scrub(body)
    assert n >= 1 and echo not in whole
    modify, removed = scrubber.stream()
    points = sorted({min(c, len(body)) for c in cuts})
    out = b"".join(modify(body[a:b]) for a, b in zip([0, *points], [*points, len(body)]) if b > a) + modify(b"")
    assert removed() >= 1
    assert echo not in out and out.count(REPLACEMENT) >= 1


def test_named_echoes_of_a_bearer_credential_are_scrubbed() -> None:
    secret = "sk-fake-openai_key/0002+x"
    scrubber = Scrubber.of([secret])
    echoes = [
        b"Authorization: BEARER SK-FAKE-OPENAI_KEY/0002+X",
        b"sk&#45;fake&#x2D;openai&lowbar;key&sol;0002&plus;x",
        b"sk%2Dfake-openai%5fkey%2F0002%2Bx",
        b'{"echo": "sk\\u002dfake\\u002Dopenai\\u005fkey\\/0002+x"}',
        base64.urlsafe_b64encode(b"user:" + secret.encode()),
        base64.urlsafe_b64encode(secret.encode()),
    ]
    for echo in echoes:
        out, n = scrubber.scrub(b"<pre>" + echo + b"</pre>")
        assert n == 1, echo
        assert REPLACEMENT in out


def test_text_without_a_secret_passes_unchanged_and_flows_without_holding_back() -> None:
    scrubber = Scrubber.of(["sk-fake-openai-key-0002"])
    body = b'data: {"text": "sk-fake and %2D and \\u002d, &#45; &amp; SK-FAKE-OPENAI"}\n\n'
    assert scrubber.scrub(body) == (body, 0)
    modify, removed = scrubber.stream()
    assert modify(body) == body and removed() == 0


def test_a_credential_of_thousands_of_characters_is_scrubbed_in_every_form() -> None:
    """Long credentials are common (service JWTs, cloud access tokens run to 1-2 KB). The pattern
    of a spelling's possible beginning nested one group per character, and the regular expression
    parser's recursion limit failed at about 490: the scrubber could not be built, and every answer
    went to the agent unscrubbed."""
    secret = "".join("abcdefghijklmnopqrstuvwxyz0123456789-_."[(i * 7 + i // 13) % 39] for i in range(3000))
    scrubber = Scrubber.of([secret])
    echoes = [
        secret.encode(), secret.upper().encode(), "".join(f"%{b:02X}" for b in secret.encode()).encode(),
        "".join(f"\\u{ord(c):04x}" for c in secret).encode(), base64.b64encode(b"user:" + secret.encode()),
    ]
    for echo in echoes:
        body = b'{"echo": "' + echo + b'"}'
        out, n = scrubber.scrub(body)
        assert n >= 1 and echo not in out
        modify, removed = scrubber.stream()
        streamed = b"".join(modify(body[i : i + 997]) for i in range(0, len(body), 997)) + modify(b"")
        assert removed() >= 1 and echo not in streamed
