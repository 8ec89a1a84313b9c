"""Vendor credentials never travel back to the agent: the respond side's scrubber.

Vendors echo requests (error pages, debug endpoints, a misconfigured proxy in front of them), and
an echoed request carries the credential the gateway injected. Every configured secret value is
replaced in response headers and bodies, streams included, before the agent sees them, in the
forms an echo takes:
- spelled character by character, each character as is in either case (`BEARER SK-...` from a
  server that upper-cases headers), percent-encoded (`%2D`, `%2d`), JSON-escaped (`\\u002d`,
  `\\/`) or as an HTML character reference (`&#95;`, `&#x5F;`, `&lowbar;`), mixed freely: one
  pattern per secret covers every mix, where a list of spellings would grow with each combination;
- base64 and base64url, of itself and inside longer base64 (`user:key` as in HTTP Basic).
The common whole forms are one compiled regular expression, searched in every body. The
spelled forms (one pattern per secret, a few hundred bytes of pattern per character) are searched
only in a body that shows a sign of them, and compiled the first time one is needed: a pattern
compiles in tens of milliseconds per hundred characters of secret, too long to spend on the event
loop for every credential at the first answer.
A stream holds back only the tail of a chunk that could be the start of a secret, so it keeps
flowing event by event.
"""

from __future__ import annotations

import base64
import html.entities
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

REPLACEMENT = b"[secret removed by egress-gateway]"
MIN_SECRET = 8  # shorter values would scrub ordinary text; no vendor key is this short
_ENTITIES: dict[str, list[str]] = {}
for _name, _char in html.entities.html5.items():
    if len(_char) == 1 and _name.endswith(";"):
        _ENTITIES.setdefault(_char, []).append(_name)
# Every byte an escape of a character is written with (`%2D`, `\u002d`, `\/`, `&#x2D;`, `&lowbar;`).
_ESCAPE_BYTES = frozenset(b"%\\&#;/\"" + bytes(range(ord("0"), ord("9") + 1)) + bytes(range(ord("A"), ord("Z") + 1))
                          + bytes(range(ord("a"), ord("z") + 1)))
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_LONGEST_SPELLING = 40  # bytes a stream holds back per character of a secret at most (`&#x00005f;`, `&VerticalLine;`)


def _hex(value: int, width: int) -> str:
    """`value` in hex digits of either case."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in format(value, f"0{width}x"))


def _forms(c: str) -> list[str]:
    """Patterns of every spelling of one character of a secret: itself in either case first, then
    its escapes (percent, JSON, HTML character references)."""
    literal = f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else re.escape(c)
    forms = [literal, "".join("%" + _hex(b, 2) for b in c.encode()), r"\\u" + _hex(ord(c), 4)]
    if c in '/"\\':
        forms.append(r"\\" + re.escape(c))
    if c == " ":
        forms.append(r"\+")
    # A numeric reference decodes with any number of leading zeros, and without its `;` (HTML5).
    forms += [f"&#0*{ord(c)};?", f"&#[xX]0*{_hex(ord(c), 1)};?", *("&" + re.escape(n) for n in _ENTITIES.get(c, []))]
    return forms


def spelled_pattern(secret: str) -> re.Pattern[bytes]:
    """The pattern of every character-by-character spelling of `secret`: one group per character
    in a row (never nested: the parser recurses per nesting level, and a credential of 500
    characters would exceed its limit), guarded by the bytes a spelling can begin with."""
    guard = "(?=[" + "".join(re.escape(chr(b)) for b in _first_bytes(secret)) + "])"
    return re.compile((guard + "".join("(?:" + "|".join(_forms(c)) + ")" for c in secret)).encode())


def _first_bytes(secret: str) -> bytes:
    """The bytes a spelling of `secret` can begin with: its first character in either case, or an
    escape's opening byte."""
    return bytes(sorted({*secret[0].lower().encode(), *secret[0].upper().encode(), *b"%\\&"}))


def _spelling_bytes(secret: str) -> bytes:
    """Every byte a spelling of `secret` can hold: its characters' in either case, and escapes'."""
    return bytes(sorted({*secret.lower().encode(), *secret.upper().encode(), *_ESCAPE_BYTES}))


def encodings(secret: str) -> set[bytes]:
    """The forms in which `secret` commonly comes back whole: as is, URL- and JSON-escaped, and
    base64 and base64url of itself and of `key:` (the spelled forms, `spelled_pattern`, cover the rest)."""
    raw = secret.encode()
    quoted = quote(secret, safe="")
    forms = {
        raw,
        quoted.encode(),
        re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted).encode(),
        quote_plus(secret).encode(),
        json.dumps(secret)[1:-1].encode(),
        json.dumps(secret)[1:-1].replace("/", "\\/").encode(),
        base64.b64encode(raw),
        base64.b64encode(raw + b":"),
    }
    # Inside longer base64 (`user:key` in HTTP Basic) the key starts at any of three alignments:
    # the characters that depend on the key's bytes alone, without the neighbours' bits.
    for pad in (1, 2):
        encoded = base64.b64encode(b"\0" * pad + raw)
        forms.add(encoded[4:len(encoded) - 4])
    forms |= {f.translate(_URLSAFE) for f in forms}
    return {f.rstrip(b"=") for f in forms if len(f) >= MIN_SECRET}


def _escapes(chars: set[str]) -> bytes:
    """A pattern for an escape (percent, JSON, HTML reference) of any of `chars`, in a lower-cased
    body. It opens with the three bytes an escape begins with, so `re` skips to them at C speed."""
    hexes = "|".join(sorted({f"{b:02x}" for c in chars for b in c.encode()} | {f"{ord(c):04x}"[-2:] for c in chars}))
    codes = "|".join(sorted({str(ord(c)) for c in chars}))
    wide = "|".join(sorted({f"{ord(c):04x}" for c in chars}))
    names = "|".join(sorted({re.escape(n.lower()) for c in chars for n in _ENTITIES.get(c, [])} | {"~"}))
    json_escaped = "".join(re.escape(c) for c in sorted(chars & set('/"\\'))) or "~"
    return (
        rf"[%\\&](?:(?<=%)(?:{hexes})|(?<=\\)(?:u(?:{wide})|[{json_escaped}])"
        rf"|(?<=&)(?:#(?:x0*(?:{hexes}|{wide})|0*(?:{codes}))|(?:{names})))"
    ).encode()


@dataclass
class Scrubber:
    needles: tuple[bytes, ...]  # the common whole forms (`encodings`), searched for first
    spelled: tuple[str, ...] = ()  # the secrets whose every spelling is searched for when suspected
    _pattern: re.Pattern[bytes] | None = field(init=False, repr=False)
    _spelled: tuple[re.Pattern[bytes], ...] | None = field(init=False, repr=False)  # compiled when first needed
    _escaped: re.Pattern[bytes] | None = field(init=False, repr=False)
    _starts: tuple[tuple[bytes, bytes, int], ...] = field(init=False, repr=False)  # per secret: `_held_spelling`

    def __post_init__(self) -> None:
        ordered = sorted(set(self.needles), key=len, reverse=True)  # longest first: no partial hit
        self._pattern = re.compile(b"|".join(map(re.escape, ordered))) if ordered else None
        self._spelled = None
        # `re` skips at C speed to the bytes an escape begins with.
        self._escaped = re.compile(_escapes({c for s in self.spelled for c in s})) if self.spelled else None
        self._starts = tuple((_first_bytes(s), _spelling_bytes(s), len(s.encode()) * _LONGEST_SPELLING) for s in self.spelled)

    def prepare(self) -> None:
        """Compile the spelled-form patterns now (they are compiled when first needed otherwise)."""
        self._spelled_patterns()

    def _spelled_patterns(self) -> tuple[re.Pattern[bytes], ...]:
        if self._spelled is None:
            self._spelled = tuple(map(spelled_pattern, self.spelled))
        return self._spelled

    @classmethod
    def of(cls, secrets: Iterable[str]) -> Scrubber:
        kept = tuple(s for s in secrets if len(s) >= MIN_SECRET)
        return cls(tuple(n for s in kept for n in encodings(s)), kept)

    def _suspected(self, data: bytes) -> bool:
        """Whether `data` may hold a spelling the common forms miss: a secret in other letter
        cases, or an escape of one of their characters. Both are searched at C speed, so the
        slower full pattern (about 3x the plain search) runs only on such bodies."""
        if self._escaped is None:
            return False
        lowered = data.lower()
        if any(s.lower().encode() in lowered for s in self.spelled):
            return True
        return (b"%" in data or b"\\" in data or b"&" in data) and self._escaped.search(lowered) is not None

    def scrub(self, data: bytes) -> tuple[bytes, int]:
        """`data` with every secret replaced, and how many were."""
        if self._pattern is None:
            return data, 0
        out, n = self._pattern.subn(REPLACEMENT, data)
        if self.spelled and self._suspected(out):
            for pattern in self._spelled_patterns():
                out, more = pattern.subn(REPLACEMENT, out)
                n += more
        return out, n

    def held_back(self, data: bytes) -> int:
        """How many trailing bytes of `data` could begin a secret (to wait for the next chunk)."""
        held = max((self._held_spelling(data, *start) for start in self._starts), default=0)
        longest = max((len(n) for n in self.needles), default=0)
        for k in range(min(longest - 1, len(data)), held, -1):
            tail = data[-k:]
            if any(n.startswith(tail) for n in self.needles):
                return k
        return held

    @staticmethod
    def _held_spelling(data: bytes, first: bytes, allowed: bytes, window: int) -> int:
        """How many trailing bytes of `data` could begin a spelling of one secret, over-counted
        and in linear time: the tail made only of bytes a spelling can hold, from the first byte
        in it a spelling can begin with. A spelled secret never holds a line break, so an SSE
        chunk that ends its events is held back not at all."""
        tail = data[-window:]
        run = tail[len(tail.rstrip(allowed)):]
        starts = [i for i in (run.find(b) for b in first) if i >= 0]
        return len(run) - min(starts) if starts else 0

    def _safe_cut(self, data: bytes) -> int:
        """Where `data` may be cut: before any tail that could begin a secret, and never inside a
        secret that is whole in `data` (it is carried, and replaced with what follows)."""
        cut = len(data) - self.held_back(data)
        found = [*([self._pattern] if self._pattern is not None else []),
                 *(self._spelled_patterns() if self.spelled and self._suspected(data) else ())]
        for pattern in found:
            for m in pattern.finditer(data):
                if m.start() < cut < m.end():
                    return m.start()
        return cut

    def stream(self, inner: Callable[[bytes], bytes] | None = None) -> tuple[Callable[[bytes], bytes], Callable[[], int]]:
        """A stream function (each chunk in, what may go now out, b"" at the end) that scrubs what
        `inner` passes on, and a function telling how many secrets it removed so far."""
        carry, removed = b"", 0

        def modify(chunk: bytes) -> bytes:
            nonlocal carry, removed
            data = carry + (inner(chunk) if inner is not None else chunk)
            cut = self._safe_cut(data) if chunk else len(data)
            out, n = self.scrub(data[:cut])
            carry, removed = data[cut:], removed + n
            return out

        return modify, lambda: removed
