"""A matchable copy of a text, and the way back from its offsets to the original's.

Recognizers are regexes over ASCII shapes; an agent (or a careless paste) defeats them with
full-width digits, a zero-width space inside a card number, `ana [at] example.com`, doubled
dashes or a lower-case IBAN. So the engine matches on a normalized copy and maps each finding back
to the original characters, which are what gets tokenized: the vault keeps the value exactly as
sent, and the text around it is left byte for byte.

Rules, in order:
1. each character by NFKC (full-width and compatibility forms), Unicode decimal digits of any
   script to ASCII, any dash (Unicode category Pd) and the minus sign to "-", any space (category Zs: no-break, thin,
   ideographic) to " ", and format characters (category Cf: zero-width spaces and joiners, soft
   hyphens, bidi marks) and other invisibles removed;
2. a percent-escape of an ASCII character (`%40`, `%2E`, `%35`) and an HTML character reference
   (`&#64;`, `&#x40;`, `&commat;`, `&shy;`) to its character, itself normalized by rule 1 (an
   address or card number pasted from a URL or a web page);
3. `[at]`, `(at)`, `{at}`, `<at>` (with the spaces around them) to "@", and `[dot]`, `(dot)`,
   `{dot}`, `<dot>` to ".";
   spaces around an "@" between an address-shaped local part and a domain removed, and spaces
   around a dot of the local part and before a dot of that domain (`jane @ example .com`; a space only after a dot is a sentence's
   end, left alone); and `local dot part at domain dot tld` written with the words (at least one ` dot `:
   "meet me at the office" has none), or with an "@" and ` dot `, to `local@domain.tld`;
4. between two digits (or a `)` and a digit), a run of whitespace of any kind (tab, newline) with
   at most one kind of separator (dash, dot, slash), repeated or not, to that one separator, or to
   one space if there is none (a dot with spaces only after it ends a sentence, and stays) (`4111 - 1111`, `4111\t1111`, `4111--1111`); between a digit and a
   letter, a whitespace run other than one space to one space (`DE89\tABCD`); a US SSN shape
   (3-2-4 digits) or US phone shape (3-3-4) whose separators differ or are slashes to dashes
   (`536 90-4399`, `536/90/4399`, `212/555/1234`), and a US phone with its area code in
   parentheses or its country code to `(919) 274-1078` or `+1 330 640 8653` whatever joins its
   groups; 9 to 19 digits written one by one with one kind of gap (`4 1 1 1 …`) to one number
   (9 as `ddd-dd-dddd`, 10 as `ddd-ddd-dddd`);
   an IBAN's groups (country code, check digits, groups of up to 4) joined by any of these to
   single spaces (`DE89/3704.0044`, `NL80 – ABNA`);
5. an IBAN-shaped run of lower-case letters and digits upper-cased.

Mixed separators in a card number (`4111 1111-1111.1111`) are the card recognizer's to read
(`dlp.cards`): rewriting them here would join a date or an IP address to the number beside it.

A position of the copy maps to the span of original characters it came from, so a finding
`[s, e)` of the copy covers `[starts[s], ends[e - 1])` of the original.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

_INVISIBLE = frozenset("\u034f\u115f\u1160\u3164\uffa0")
_ESCAPED = re.compile(r"%[0-7][0-9A-Fa-f]|&#[0-9]{1,7};|&#[xX][0-9A-Fa-f]{1,6};|&[A-Za-z][A-Za-z0-9]{1,31};")
# Each starts at the first space of a run (`(?<!\s)`): from every space of a long run of spaces,
# `\s*` would scan to its end, quadratic in the run (0.7 s for 4,000 spaces).
_AT = re.compile(r"(?<!\s)\s*[\[({<]\s*at\s*[\])}>]\s*", re.IGNORECASE)
_DOT = re.compile(r"(?<!\s)\s*[\[({<]\s*dot\s*[\])}>]\s*", re.IGNORECASE)
_LABEL = r"[^\W_][\w-]{0,62}"
# Spaces around a dot of the local part just before an "@" (`jane . doe @`).
_LOCAL_DOT = re.compile(r"(?<=[^\W_])(?:[ \t]{1,3}\.[ \t]{0,3}|\.[ \t]{1,3})(?=[^\W_][\w.%+-]{0,63}[ \t]{0,3}@)")
# A space around "@" (not both sides bare), after a local part's last letter or digit.
_AT_SPACED = re.compile(r"(?<=[^\W_])(?:[ \t]{1,3}@[ \t]{0,3}|@[ \t]{1,3})(?=[^\W_])")
# After "@", a domain whose dots have spaces before them (`example .com`, `example . com`).
_DOMAIN_SPACED = re.compile(rf"(?<=@){_LABEL}(?:(?:[ \t]{{1,3}}\.[ \t]{{0,3}}|\.){_LABEL}){{0,8}}[ \t]{{1,3}}\.[ \t]{{0,3}}{_LABEL}(?:\.{_LABEL}){{0,8}}")
# Repetitions are bounded (an address has a few labels), so text of many "dot"s costs no more
# than a few steps per word.
_WORDY = re.compile(
    rf"(?<![\w.%+-])[^\W_][\w.%+-]{{0,63}}(?:[ \t]+dot[ \t]+[^\W_][\w.%+-]{{0,63}}){{0,4}}(?:[ \t]+at[ \t]+|@)"
    rf"{_LABEL}(?:\.{_LABEL}){{0,8}}(?:[ \t]+dot[ \t]+{_LABEL}(?:\.{_LABEL}){{0,8}}){{1,8}}(?![\w@])",
    re.IGNORECASE,
)
_WORDY_PARTS = re.compile(r"[ \t]+(at|dot)[ \t]+", re.IGNORECASE)
# Whitespace and one kind of separator between digits, unless it is already one separator.
# A dot with a space after it only ends a sentence (`Total 39. 65 people`): not a separator.
_SEPARATOR = re.compile(r"(?<=[\d)])(?![ ./-]\d)(?:\s*(-+|/+)\s*|\s+(\.+)\s*|(\.{2,})\s*|\s+)(?=\d)")
_LETTER_GAP = re.compile(r"(?<=\d)(?! [A-Za-z])\s+(?=[A-Za-z])|(?<=[A-Za-z])(?! \d)\s+(?=\d)")
# A 3-2-4 (SSN) or 3-3-4 (US phone) shape whose separators are not one kind of space, dash or dot.
_SSN_MIXED = re.compile(r"(?<![\w.,/-])\d{3}(?!-\d{2,3}-|\.\d{2,3}\.| \d{2,3} )[ ./-]\d{2,3}[ ./-]\d{4}(?![\w]|[.,/-]\d)")
# A US phone with its area code in parentheses, its groups joined by anything (`(919)/274/1078`).
_AREA_CODE = re.compile(r"(?<![\w.,/-])\((\d{3})\)(?:\s*[./_-]+\s*|\s+)?(\d{3})(?:\s*[./_-]+\s*|\s+)(\d{4})(?![\w]|[.,/-]\d)")
# Digits written one by one (`4 1 1 1 1 1 1 1 …`, one kind of gap): 9 to 19 of them are read as one
# number, 9 in an SSN's grouping and 10 in a US phone's (a bare 9-digit number is an SSN only with
# the word "SSN" before it; spelled out digit by digit, it was meant to hide one).
_ONE_BY_ONE = re.compile(r"(?<![\w.,/-])\d([ .-])\d(?:\1\d){7,17}(?![\w]|[.,/-]\d)")


def _one_number(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    if len(digits) == 9:
        return f"{digits[:3]}-{digits[3:5]}-{digits[5:]}"
    if len(digits) == 10:
        return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"
    return digits
# A US phone with its country code, its groups joined by anything (`+1 - 330/640 / 8653`).
_PLUS_ONE = re.compile(
    r"\+1(?:\s*[./_-]+\s*|\s+)?(\d{3})(?:\s*[./_-]+\s*|\s+)(\d{3})(?:\s*[./_-]+\s*|\s+)(\d{4})(?![\w]|[.,/-]\d)"
)
# An IBAN's groups joined by anything but single spaces and dashes (`DE89/3704.0044`, `NL80 – ABNA`):
# after a bank code of letters, each group holds a digit (the word after an IBAN is not part of it).
_IBAN_SPLIT = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Za-z0-9]{1,8}|(?:\s*[./_-]+\s*|\s+)[A-Za-z]{4})?"
    r"(?:(?:\s*[./_-]+\s*|\s+)(?=[A-Za-z]{0,7}\d)[A-Za-z0-9]{1,8}){2,8}(?![A-Za-z0-9])"
)
_IBAN_GAP = re.compile(r"\s*[./_-]+\s*|\s+")
# After the bank code, each group holds a digit: the word after an IBAN is not part of it.
_IBAN_LOWER = re.compile(r"\b[a-z]{2}\d{2}[ ]?[a-z0-9]{4}(?:[ ]?(?=[a-z]{0,3}\d)[a-z0-9]{1,4}){1,7}\b")


@dataclass(frozen=True)
class Normalized:
    """`text` to match on; `starts[i]`/`ends[i]` are the original span of its character i."""

    text: str
    starts: tuple[int, ...] | None  # None: the copy is the original, offsets are the same
    ends: tuple[int, ...] | None

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]


def _char(c: str) -> str:
    if c.isascii():
        return c
    cat = unicodedata.category(c)
    if cat == "Cf" or c in _INVISIBLE:
        return ""
    if cat == "Nd":
        return str(unicodedata.decimal(c))
    if cat == "Pd" or c == "\u2212":  # a dash, or the minus sign (category Sm) typed for one
        return "-"
    if cat == "Zs":
        return " "
    return unicodedata.normalize("NFKC", c)


def _apply(text: str, starts: list[int], ends: list[int], pattern: re.Pattern[str], repl: Callable[[re.Match[str]], str]) -> tuple[str, list[int], list[int]]:
    """Replace `pattern` matches, each new character mapping to the original span of its match."""
    out: list[str] = []
    new_s: list[int] = []
    new_e: list[int] = []
    pos = 0
    for m in pattern.finditer(text):
        out.append(text[pos : m.start()])
        new_s += starts[pos : m.start()]
        new_e += ends[pos : m.start()]
        rep = repl(m)
        if rep and len(rep) == m.end() - m.start():  # same length (upper-cased): character for character
            out.append(rep)
            new_s += starts[m.start() : m.end()]
            new_e += ends[m.start() : m.end()]
        elif rep and m.end() > m.start():
            out.append(rep)
            new_s += [starts[m.start()]] * len(rep)
            new_e += [ends[m.end() - 1]] * len(rep)
        pos = m.end()
    out.append(text[pos:])
    new_s += starts[pos:]
    new_e += ends[pos:]
    return "".join(out), new_s, new_e


def _unescape(m: re.Match[str]) -> str:
    """The character a percent-escape or HTML reference stands for, by rule 1; an unknown name as is."""
    escaped = m.group(0)
    decoded = chr(int(escaped[1:], 16)) if escaped[0] == "%" else html.unescape(escaped)
    return "".join(_char(c) for c in decoded)


@dataclass(frozen=True)
class _Rule:
    """A rewrite; `gate` is a substring test that is false whenever the pattern cannot match, so a
    text without an `@` or a bracket skips the rule's regex (a scan at every position) entirely."""

    pattern: re.Pattern[str]
    repl: Callable[[re.Match[str]], str]
    gate: Callable[[str], bool] = lambda t: True
    # If set, `repl` rewrites the matches of `inner` within each match of `pattern`, so each
    # character keeps its own original span (a card inside an IBAN is not stretched over it).
    inner: re.Pattern[str] | None = None

    def applies(self, text: str) -> bool:
        return self.gate(text) and self.pattern.search(text) is not None

    def apply(self, text: str, starts: list[int], ends: list[int]) -> tuple[str, list[int], list[int]]:
        if self.inner is None:
            return _apply(text, starts, ends, self.pattern, self.repl)
        inner = self.inner
        out, new_s, new_e, pos = [], [], [], 0
        for m in self.pattern.finditer(text):
            a, b = m.start(), m.end()
            part, part_s, part_e = _apply(text[a:b], starts[a:b], ends[a:b], inner, self.repl)
            out += [text[pos:a], part]
            new_s += starts[pos:a] + part_s
            new_e += ends[pos:a] + part_e
            pos = b
        out.append(text[pos:])
        return "".join(out), new_s + starts[pos:], new_e + ends[pos:]


_BRACKETED = re.compile(r"[\[({<]")
_WORD_DOT = re.compile(r"dot", re.IGNORECASE)
_ODD_SPACE = re.compile(r"[^\S ]|  ")
# Necessary conditions, each a cheaper scan than its rule's pattern.
_SEPARATOR_GATE = re.compile(r"[^\S ]|  | [-./]|[-./] |--|\.\.|//")
_ONE_BY_ONE_GATE = re.compile(r"\d([ .-])\d\1\d\1\d")
_SSN_GATE = re.compile(r"\d{3}[ ./-]\d{2,3}[ ./-]\d{4}")
_IBAN_GATE = re.compile(r"[A-Z]{2}\d\d")


def _gate(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda t: pattern.search(t) is not None


def _has_at(t: str) -> bool:
    return "@" in t


_RULES: tuple[_Rule, ...] = (
    _Rule(_ESCAPED, _unescape),
    _Rule(_AT, lambda m: "@", _gate(_BRACKETED)),
    _Rule(_DOT, lambda m: ".", _gate(_BRACKETED)),
    _Rule(_LOCAL_DOT, lambda m: ".", _has_at),
    _Rule(_AT_SPACED, lambda m: "@", _has_at),
    _Rule(_DOMAIN_SPACED, lambda m: re.sub(r"[ \t]+", "", m.group(0)), _has_at),
    _Rule(
        _WORDY,
        lambda m: _WORDY_PARTS.sub(lambda p: "@" if p.group(1).lower() == "at" else ".", m.group(0)),
        _gate(_WORD_DOT),
    ),
    _Rule(_SEPARATOR, lambda m: next((g[0] for g in m.groups() if g), " "), _gate(_SEPARATOR_GATE)),
    _Rule(_LETTER_GAP, lambda m: " ", _gate(_ODD_SPACE)),
    _Rule(_ONE_BY_ONE, _one_number, _gate(_ONE_BY_ONE_GATE)),
    _Rule(_SSN_MIXED, lambda m: re.sub(r"\D", "-", m.group(0)), _gate(_SSN_GATE)),
    _Rule(_AREA_CODE, lambda m: f"({m.group(1)}) {m.group(2)}-{m.group(3)}", lambda t: "(" in t),
    _Rule(_PLUS_ONE, lambda m: f"+1 {m.group(1)} {m.group(2)} {m.group(3)}", lambda t: "+1" in t),
    _Rule(_IBAN_SPLIT, lambda m: " ", _gate(_IBAN_GATE), inner=_IBAN_GAP),
    _Rule(_IBAN_LOWER, lambda m: m.group(0).upper()),
)


def normalize(text: str) -> Normalized:
    """The matchable copy of `text` (see the module docstring); cheap when there is nothing to do."""
    ascii_only = text.isascii()
    if ascii_only and not any(rule.applies(text) for rule in _RULES):
        return Normalized(text, None, None)
    if ascii_only:
        copy, starts, ends = text, list(range(len(text))), list(range(1, len(text) + 1))
    else:
        pieces, starts, ends = [], [], []
        for i, c in enumerate(text):
            n = _char(c)
            pieces.append(n)
            starts += [i] * len(n)
            ends += [i + 1] * len(n)
        copy = "".join(pieces)
    for rule in _RULES:
        if rule.applies(copy):
            copy, starts, ends = rule.apply(copy, starts, ends)
    if copy == text:
        return Normalized(text, None, None)
    return Normalized(copy, tuple(starts), tuple(ends))
