"""Phone numbers by their shape, beside libphonenumber's reading of valid numbers.

Presidio's recognizer (`dlp.presidio_offline.BarePhoneRecognizer`) finds numbers libphonenumber holds valid
and grouped as their country writes them. An agent's data is often neither: generated test data
(Faker draws area and exchange codes at random, so about half its US numbers are not valid
numbers), placeholders, numbers of ranges reserved for fiction, and international numbers written
with the trunk prefix (`+44 (0)115 496 0622`). For DLP the shape is what matters: a value written
as a phone number is one to keep from the vendor. Two shapes, both unlike ids, dates and amounts:

- North American grouping, 3-3-4 digits: `(383)367-9160`, `(547) 017-4681`, `291-561-4610`,
  `387.978.9328`, with `+1`, `1` or `001` before it and an extension (`x792`, `ext. 12`) after it
  (the extension is part of the value). Groups joined by dashes or dots use one separator
  throughout; a bare `831 007 7283` (spaces only, no area code in parentheses, no `+1`) is read
  only after a word that names a phone (`call`, `phone`, `reach`, `mobile`, ...), within 32
  characters: a row of a table of numbers reads the same;
- a `+` and a country code with groups any country uses, that libphonenumber holds a possible
  number of that country (its length fits): `+4428 9018470`, `+49 (0) 1742 180967`.

Neither reads digits glued to letters, to more digits or to an identifier's separators
(`ORD-291-561-4610`, `v1.291.561.4610`): those are part of a longer identifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import phonenumbers
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

SCORE = 0.9  # over Presidio's reading of the same digits, which may leave out a `+1` or an extension
# Digits glued to letters, more digits or an identifier's separators are part of a longer value.
_BEFORE = r"(?<![\w+./-])"
_AFTER = r"(?![\w-]|[.,/]\d)"
_EXTENSION = r"(?:[ ]?(?:x|ext\.?)[ ]?\d{1,6})?"
_NANP = re.compile(
    _BEFORE + r"""
    (?:(?:\+1|001|1)[ .-]?)?
    (?:\(\d{3}\)[ ]?[.-]?|\d{3}(?P<sep>[.-]))
    \d{3}(?(sep)(?P=sep)|[ .-])\d{4}""" + _EXTENSION + _AFTER,
    re.X,
)
# The country-code form as `dlp.normalize` writes it, whatever joined its groups: `+1 330 640 8653`.
_NANP_CC = re.compile(_BEFORE + r"(?:\+1|001) \d{3} \d{3} \d{4}" + _EXTENSION + _AFTER)
_SPACED = re.compile(_BEFORE + r"\d{3} \d{3} \d{4}" + _AFTER)
_CONTEXT = re.compile(r"(?i)(?<![a-z])(?:call|calls|called|phone|tel|telephone|mobile|cell|cellphone|fax|sms|text|whatsapp|reach|contact|dial|ring)(?![a-z])")
_INTERNATIONAL = re.compile(r"(?<![\w+])\+\d[\d ().-]{5,22}\d(?!\w|[.,/-]\d)")


def _international(text: str, m: re.Match[str]) -> bool:
    try:
        number = phonenumbers.parse(m.group(0), None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_possible_number(number) and len(str(number.national_number)) >= 6


def _after_a_phone_word(text: str, m: re.Match[str]) -> bool:
    return _CONTEXT.search(text, max(0, m.start() - 32), m.start()) is not None


# Each shape with what else a match needs, in order: a later shape's match overlapping an earlier
# one's is dropped (the international reading of `+1 …` after the North American one, say).
_SHAPES: tuple[tuple[re.Pattern[str], Callable[[str, re.Match[str]], bool] | None], ...] = (
    (_NANP, None), (_NANP_CC, None), (_INTERNATIONAL, _international), (_SPACED, _after_a_phone_word),
)


def find_phones(text: str) -> list[tuple[int, int]]:
    """Spans of phone-shaped values in `text`."""
    found: list[tuple[int, int]] = []
    for shape, accepts in _SHAPES:
        found += [m.span() for m in shape.finditer(text)
                  if (accepts is None or accepts(text, m)) and all(m.end() <= s or m.start() >= e for s, e in found)]
    return sorted(found)


class ShapePhoneRecognizer(EntityRecognizer):
    """Presidio adapter for `find_phones` (entity PHONE_NUMBER)."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["PHONE_NUMBER"], name="ShapePhoneRecognizer", supported_language=supported_language)

    def load(self) -> None:
        """Nothing to load: the rules are code."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        return [RecognizerResult("PHONE_NUMBER", s, e, SCORE) for s, e in find_phones(text)]
