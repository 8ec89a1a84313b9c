"""Payment card numbers of every current network, Luhn-checked, however they are grouped.

Presidio's own card recognizer knows the prefixes of 2015 (no Mastercard 2-series, no 19-digit
Visa, no UnionPay or Maestro), so a third of today's cards left the gateway raw. This one reads any
run of 12 to 19 digits, whole or in groups joined by separators (space, dash, dot, slash or underscore, mixed
as a hurried hand or a careless paste mixes them: `4111 1111-1111.1111`), and accepts it only if
the prefix and length belong to a network (`NETWORKS`) and the Luhn check digit is right: about
one random digit string in ten passes Luhn, and a network's prefix cuts that further, so order ids
and timestamps of the same length stay text.

A run of groups can hold more than the card (`4111-1111-1111-1111 12 items`, a date before it), so
the card is looked for among its consecutive groups, the longest first, starting and ending only
at the run's ends or at a space: a dash, dot or slash binds its groups into one identifier (an
order id, a date, an IP address) whose middle is never read as a card. A part of a run is read
only if it holds no space (one identifier), or if what it leaves out on either side is an
identifier of several groups (`10.0.0.1`, `2024-01-15`) and its groups but the last hold 3 digits
or more (a row of a table of small numbers is no card): in a run of space-separated groups
(`6011 1234 5678 9012 3`) which of them would be the card is a guess, and about one guess in ten
passes Luhn, so such a run is a card whole or not at all.
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


# Prefix ranges and lengths as the networks publish them (ISO/IEC 7812 IINs), current as of 2025,
# and the older ranges cards still carry and test-data generators still issue (Faker, the usual
# source of generated cards, draws JCB from all of 35, 15-digit JCB from 1800 and 2131, and Maestro
# from 56-58, 0604 and 6390: about one generated card in six was left raw without them). Each
# two-digit prefix added makes about 0.1% of random 12-19 digit strings a card (Luhn passes one in
# ten), which the measured share of random seeds below (README) includes.
NETWORKS: tuple[Network, ...] = (
    Network("visa", (("4", "4"),), (13, 16, 19)),
    Network("mastercard", (("51", "55"), ("2221", "2720")), (16,)),
    Network("amex", (("34", "34"), ("37", "37")), (15,)),
    Network("discover", (("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")), (16, 17, 18, 19)),
    Network("unionpay", (("62", "62"), ("81", "81")), (16, 17, 18, 19)),
    Network("jcb", (("35", "35"),), (16, 17, 18, 19)),
    Network("jcb-15", (("1800", "1800"), ("2131", "2131")), (15,)),
    Network(
        "maestro",
        (("5018", "5018"), ("5020", "5020"), ("5038", "5038"), ("56", "58"), ("5893", "5893"), ("0604", "0604"),
         ("6304", "6304"), ("6390", "6390"), ("6759", "6759"), ("6761", "6763")),
        tuple(range(12, 20)),
    ),
    Network("diners", (("300", "305"), ("36", "36"), ("38", "39")), (14, 15, 16, 17, 18, 19)),
    Network("mir", (("2200", "2204"),), (16, 17, 18, 19)),
)

# A run of digit groups joined by single separators (normalization made every run of separators
# one); digits or letters around it would make it part of a longer identifier, so they end it.
_RUN = re.compile(r"(?<![\w.,/-])\d+(?:[ ./_-]\d+)*(?![\w]|[.,/-]\d)")
_GROUP = re.compile(r"\d+")
# A card's first group holds at least 2 digits, each later one at most 15 (an Amex's last two
# groups, 6 and 5, whose separator was an invisible character removed by normalization).
_LAST_GROUP_MAX = 15


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
    found: list[tuple[int, int]] = []
    for run in _RUN.finditer(text):
        found += _cards_in_run(text, [g.span() for g in _GROUP.finditer(text, run.start(), run.end())])
    return found


def _cards_in_run(text: str, groups: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Card numbers among consecutive `groups` (spans of one run), left to right, longest first."""
    edges = {0} | {i for i in range(1, len(groups)) if text[groups[i][0] - 1] == " "}
    ends = {len(groups) - 1} | {i - 1 for i in edges if i > 0}
    found: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        hit = None
        if i in edges and groups[i][1] - groups[i][0] >= 2:
            digits = ""
            for j in range(i, len(groups)):
                start, end = groups[j]
                if len(digits) + end - start > 19 or (j > i and end - start > _LAST_GROUP_MAX):
                    break
                digits += text[start:end]
                if j in ends and _stands_alone(text, groups, i, j) and network_of(digits) is not None:
                    hit = j
        if hit is None:
            i += 1
            continue
        found.append((groups[i][0], groups[hit][1]))
        i = hit + 1
    return found


def _stands_alone(text: str, groups: list[tuple[int, int]], i: int, j: int) -> bool:
    """Whether groups `i..j` of a run can be read apart from the rest (see the module docstring)."""

    def sep(k: int) -> str:  # the separator between groups k and k + 1
        return text[groups[k][1] : groups[k + 1][0]]

    if all(sep(k) != " " for k in range(i, j)):
        return True
    before = i == 0 or (i >= 2 and sep(i - 2) != " ")
    after = j == len(groups) - 1 or (j + 2 < len(groups) and sep(j + 1) != " ")
    whole = i == 0 and j == len(groups) - 1
    # Cut from a longer run, it must be grouped as cards are (4-4-4-4, 4-6-5), not a table's row.
    return whole or (before and after and all(groups[k][1] - groups[k][0] >= 3 for k in range(i, j)))


class CardRecognizer(EntityRecognizer):
    """Presidio adapter for `find_cards` (entity CREDIT_CARD, score 1.0: the checksum validates)."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["CREDIT_CARD"], name="CardRecognizer", supported_language=supported_language)

    def load(self) -> None:
        """Nothing to load: the rules are code."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        return [RecognizerResult("CREDIT_CARD", s, e, 1.0) for s, e in find_cards(text)]
