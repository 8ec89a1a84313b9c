"""The DLP evasion classes on generated corpora, at the engine: values split by any separator,
spaced and worded e-mail addresses, and the PII-free text none of that may touch. The same
classes through the real proxy are in `test_evasion_proxy.py`."""

from __future__ import annotations

import asyncio
import base64
import random

import pytest

from dlp.cards import find_cards
from dlp.encoded import Blob, blank_encodings, find_blobs
from dlp.engine import PiiEngine
from dlp.outbound import Tokenizer, scope_key
from dlp.vault import SqliteVault
from gateway.errors import Refusal
from tests.dlp.evasion_corpus import NUMERIC, clean_samples, email_samples, encoded, split_samples
from tests.dlp.user_corpus import Gen

DEFAULT = frozenset({"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "PERSON"})


LONG = pytest.mark.chaos_full


@pytest.mark.parametrize(("seed", "n"), [(101, 200), (102, 200), pytest.param(111, 2000, marks=LONG), pytest.param(112, 2000, marks=LONG)])
def test_split_values_are_found_whole_whatever_separates_their_groups(engine: PiiEngine, seed: int, n: int) -> None:
    """Tabs, newlines, Unicode spaces, every dash, dots, slashes, mixed in one value: each value is
    one finding of its type covering exactly its original characters."""
    samples = split_samples(seed, n)
    missed = []
    for s in samples:
        (g,) = s.gold
        got = [(f.start, f.end, f.entity_type) for f in engine.analyze(s.text, DEFAULT)]
        if got != [(g.start, g.end, g.entity_type)]:
            missed.append((g.entity_type, s.text[g.start : g.end], got))
    assert missed == []
    assert {s.gold[0].entity_type for s in samples} == NUMERIC


@pytest.mark.parametrize(("seed", "n"), [(103, 150), (104, 150), pytest.param(113, 2000, marks=LONG)])
def test_spaced_and_worded_addresses_are_found_whole(engine: PiiEngine, seed: int, n: int) -> None:
    samples = email_samples(seed, n)
    missed = []
    for s in samples:
        (g,) = s.gold
        got = [(f.start, f.end) for f in engine.analyze(s.text, DEFAULT) if f.entity_type == "EMAIL_ADDRESS"]
        if got != [(g.start, g.end)]:
            missed.append(s.text)
    assert missed == []


@pytest.mark.parametrize(("seed", "n"), [(105, 400), (106, 400), pytest.param(115, 4000, marks=LONG), pytest.param(116, 4000, marks=LONG)])
def test_numbers_dates_ids_and_prose_about_places_stay_untouched(engine: PiiEngine, seed: int, n: int) -> None:
    """Dates in every order and separator, times, timestamps, order ids, UUIDs, versions, IPs with
    ports, amounts, tab- and newline-separated tables, `at` and `@` as words: zero findings."""
    texts = clean_samples(seed, n)
    found = {t: [(t[f.start : f.end], f.entity_type) for f in engine.analyze(t, DEFAULT)] for t in texts}
    assert {t: f for t, f in found.items() if f} == {}


@pytest.mark.parametrize(
    ("text", "cards"),
    [
        ("card 4111-1111-1111-1111 12 items", ["4111-1111-1111-1111"]),  # a number after it is not part of it
        ("on 2024-01-15 4111 1111 1111 1111 at 10.30", ["4111 1111 1111 1111"]),
        ("host 10.0.0.1 4111 1111 1111 1111", ["4111 1111 1111 1111"]),
        ("pay 4111 1111-1111.1111 now", ["4111 1111-1111.1111"]),
        ("x 6011 1111 1111 1117 3 y", []),  # space-separated run: a card whole or not at all
        ("order 4111-1111-1111-1111-12", []),  # a dash binds: the middle of an identifier is no card
    ],
)
def test_card_found_among_the_groups_of_a_longer_run(text: str, cards: list[str]) -> None:
    assert [text[s:e] for s, e in find_cards(text)] == cards


def test_numbers_are_read_with_their_key_as_context(engine: PiiEngine, sqlite_vault: SqliteVault) -> None:
    """`ssn: 536904399` is an SSN, `n: 536904399` is not; in a DLP field PII becomes its token,
    outside one (`seed`) it refuses the call, whatever the number's JSON form."""
    tok = Tokenizer(engine, sqlite_vault, memo_size=0, workers=1)
    scope = scope_key("acme", "numbers")
    try:
        meta: dict[str, object] = {"customer_ssn": 536904399, "n": 536904399, "phone": 2125550199, "card": -4111111111111111}
        body = {"metadata": meta, "seed": 7}
        summary = asyncio.run(tok.tokenize_body(body, ("metadata.*",), DEFAULT, scope))
        assert summary.counts == {"CREDIT_CARD": 1, "PHONE_NUMBER": 1, "US_SSN": 1}
        kinds = {"customer_ssn": "US_SSN", "phone": "PHONE_NUMBER", "card": "CREDIT_CARD"}
        assert [str(meta[k])[: len(f"tok_{t}_")] for k, t in kinds.items()] == [f"tok_{t}_" for t in kinds.values()]
        assert (meta["n"], body["seed"]) == (536904399, 7)
        # A 10-digit seed that is a valid US number is a seed: outside the text fields only a key
        # that names a phone makes it one.
        body = {"metadata": {}, "seed": 2125550199, "n": 3000000000}
        asyncio.run(tok.tokenize_body(body, ("metadata.*",), DEFAULT, scope))
        assert body == {"metadata": {}, "seed": 2125550199, "n": 3000000000}
        outsiders = ({"seed": 4111111111111111}, {"seed": 5555555555554444.0}, {"limits": [1, {"ssn": 536904399}]}, {"x": {"mobile_phone": 2125550199}}, {"phone": 2125550199}, {"customer_phone": 2125550199})
        for outside in outsiders:
            with pytest.raises(Refusal) as refused:
                asyncio.run(tok.tokenize_body({"metadata": {}, **outside}, ("metadata.*",), DEFAULT, scope))
            assert refused.value.code == "pii_blocked"
            assert "4111111111111111" not in str(refused.value) and "536904399" not in str(refused.value)
    finally:
        tok.close()


def test_an_encoding_is_scanned_decoded_and_only_runs_that_could_spell_pii_stay_in_the_clear() -> None:
    """Base64 of generated text is wholly blanked for the scan of the outer text (its decoded text
    is scanned instead), but a run of its own characters that could be a card, an SSN, a phone or
    an IBAN stays, whatever the blob decodes to."""
    gen = Gen(107)
    for kind in ("EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "PHONE_NUMBER"):
        clear = f"Customer record: {gen.value(kind)}, verified on the call."
        text = f"see {encoded(clear, 'base64')} end"
        (blob,) = find_blobs(text)
        assert (blob.text, text[blob.start : blob.end]) == (clear, encoded(clear, "base64"))
        assert blank_encodings(text, [blob]) == "see " + " " * (blob.end - blob.start) + " end"
    spelled = "ab+4111/1111/1111/1111+xyz+GB82WEST12345698765432+gb82west12345698765432+q12"
    blob = Blob(0, len(spelled), "base64", "made up")
    kept = blank_encodings(spelled, [blob])
    assert len(kept) == len(spelled) and kept.split() == ["4111/1111/1111/1111", "GB82WEST12345698765432", "gb82west12345698765432"]
    assert [kept[i] for i in range(len(kept)) if kept[i] != " "] == [spelled[i] for i in range(len(kept)) if kept[i] != " "]


def test_numbers_inside_objects_that_hold_text_keep_their_type_unless_their_key_names_a_phone(
    engine: PiiEngine, sqlite_vault: SqliteVault
) -> None:
    """A JSON number is read with its key as context wherever it sits. An object that holds text
    (a JSON schema in `tools` or `response_format`, an MCP tool's nested arguments) is scanned, but
    its numbers are numbers: `maximum: 2147483647` (a valid Dallas number) left as a string token,
    and the vendor got a schema whose bound is a string. Generated: 10-digit numbers of which
    about 40% are valid US numbers, under the keys schemas and ids use; none may change, and the
    same numbers under a key that names a phone still leave as tokens."""
    tok = Tokenizer(engine, sqlite_vault, memo_size=0, workers=1)
    scope = scope_key("acme", "schema-numbers")
    rng = random.Random(113)
    numbers = [2147483647, 4294967295] + [rng.randrange(2_000_000_000, 9_999_999_999) for _ in range(78)]
    keys = ("maximum", "minimum", "default", "order_id", "customer_id", "const")
    try:
        schema = {"type": "object", "description": "an order", "properties": {f"p{i}": {"type": "integer", keys[i % len(keys)]: n} for i, n in enumerate(numbers)}}
        body = {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}], "filter": {"note": "x", "ids": numbers}}
        before = repr(body)
        summary = asyncio.run(tok.tokenize_body(body, ("tools", "filter"), DEFAULT, scope))
        assert (summary.counts, repr(body)) == ({}, before)
        contact = {"note": "call", "phone": 2125550199, "mobile": 4155550123, "customer_id": 2125550199}
        asyncio.run(tok.tokenize_body({"contact": contact}, ("contact",), DEFAULT, scope))
        assert [str(v)[:17] for v in contact.values()] == ["call", "tok_PHONE_NUMBER_", "tok_PHONE_NUMBER_", "2125550199"]
    finally:
        tok.close()


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_wrapped_block_ends_at_its_last_line_whatever_word_follows(newline: str) -> None:
    """A MIME block whose text fills its last line exactly (a multiple of 57 bytes) is followed by
    the agent's next word on a line of its own: that word is not part of the block. It was taken
    for an unpadded last line and decoded into it, two bytes of noise in the text scanned, and the
    block written back without the word."""
    for size in range(57, 57 * 8 + 1):
        text = ("Customer record: jane.doe@example.com, card 4111 1111 1111 1111. " * 8)[:size]
        block = "".join(line + newline for line in base64.encodebytes(text.encode()).decode().splitlines())
        for after in ("end", "thanks", "ok", "done", "Best", "Cheers", "EOF1"):
            message = f"attachment:{newline}{block}{after}"
            (blob,) = find_blobs(message)
            assert blob.text == text, (size, after)
            assert message[blob.end :] == newline + after
