"""Payment card numbers of every current network, Luhn-checked, however they are grouped.

Presidio's own card recognizer knows the prefixes of 2015 (no Mastercard 2-series, no 19-digit
Visa, no UnionPay or Maestro), so a third of today's cards left the gateway raw. This one reads any
run of 12 to 19 digits, whole or grouped with one kind of separator (space, dash, dot or slash),
and accepts it only if the prefix and length belong to a network (`NETWORKS`) and the Luhn check
digit is right: about one random digit string in ten passes Luhn, and a network's prefix cuts that
further, so order ids and timestamps of the same length stay text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts


@dataclass(frozen=True)
class Network:
    """A card network: inclusive IIN prefix ranges (as digit strings of one length) and lengths."""

    name: str
    ranges: tuple[tuple[str, str], ...]
    lengths: tuple[int, ...]

    def claims(self, digits: str) -> bool:
        if len(digits) not in self.lengths:
            return False
        return any(lo <= digits[: len(lo)] <= hi for lo, hi in self.ranges)


# Prefix ranges and lengths as the networks publish them (ISO/IEC 7812 IINs), current as of 2025.
NETWORKS: tuple[Network, ...] = (
    Network("visa", (("4", "4"),), (13, 16, 19)),
    Network("mastercard", (("51", "55"), ("2221", "2720")), (16,)),
    Network("amex", (("34", "34"), ("37", "37")), (15,)),
    Network("discover", (("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")), (16, 17, 18, 19)),
    Network("unionpay", (("62", "62"), ("81", "81")), (16, 17, 18, 19)),
    Network("jcb", (("3528", "3589"),), (16, 17, 18, 19)),
    Network(
        "maestro",
        (("5018", "5018"), ("5020", "5020"), ("5038", "5038"), ("5893", "5893"), ("6304", "6304"), ("6759", "6759"), ("6761", "6763")),
        tuple(range(12, 20)),
    ),
    Network("diners", (("300", "305"), ("36", "36"), ("38", "39")), (14, 15, 16, 17, 18, 19)),
    Network("mir", (("2200", "2204"),), (16, 17, 18, 19)),
)

# 12-19 digits, whole or in groups of 1-8 joined by one kind of separator (a group of 8 is two
# groups of 4 whose separator was an invisible character, removed by normalization); digits or
# letters around it would make it part of a longer identifier, so they are excluded.
_CANDIDATE = re.compile(r"(?<![\w.,/-])\d{2,19}(?:([ ./-])\d{1,8}(?:\1\d{1,8}){0,8})?(?![\w]|[.,/-]\d)")


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number carries in its last digit."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def network_of(digits: str) -> str | None:
    """The network a Luhn-valid digit string belongs to, or None if it is no card number."""
    if not 12 <= len(digits) <= 19 or not luhn_ok(digits):
        return None
    return next((n.name for n in NETWORKS if n.claims(digits)), None)


def find_cards(text: str) -> list[tuple[int, int]]:
    """Spans of card numbers in `text`."""
    found = []
    for m in _CANDIDATE.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if network_of(digits) is not None:
            found.append(m.span())
    return found


class CardRecognizer(EntityRecognizer):
    """Presidio adapter for `find_cards` (entity CREDIT_CARD, score 1.0: the checksum validates)."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["CREDIT_CARD"], name="CardRecognizer", supported_language=supported_language)

    def load(self) -> None:
        """Nothing to load: the rules are code."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        return [RecognizerResult("CREDIT_CARD", s, e, 1.0) for s, e in find_cards(text)]
