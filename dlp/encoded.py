"""Text hidden in base64, base64url or hex inside a string value, decoded once so DLP can read it.

An agent (or a tool's output it forwards) can carry `am9obkBleGFtcGxlLmNvbQ==` where the address it
encodes would have been tokenized. A run of the encodings' characters long enough to hold a value
is decoded; if the bytes are UTF-8 text (every character printable or a line break) it is scanned
like any other text, and the caller re-encodes the text with its PII replaced in the same scheme,
padding and case, so the vendor still gets a well-formed value and never the raw one.

A block of lines of one width (MIME wraps base64 at 76 characters, PEM at 64) is one value, written
back in lines of the same width.

Bounded: one level only (the decoded text is not searched for further encodings), and images,
PDFs and other binary blobs are recognized as not text by their first invalid byte. The decoded
text counts toward the call's DLP budget (`dlp.max_call_chars`), so encoding a body doubles no work
beyond what the same body in clear would cost.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

# 16 characters of base64 hold 12 bytes: the shortest SSN or phone with separators. The lookarounds
# keep the run whole (a run glued to more of the alphabet is part of a longer value).
_RUN = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/_=-])")
# MIME and PEM wrap base64 in lines of one width (76, 64): such a block is one value.
_WRAPPED = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{16,}(?:\r?\n[A-Za-z0-9+/_-]+)+={0,2}(?![A-Za-z0-9+/_=-])")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2}){8,}")
_LINE_BREAKS = frozenset("\t\n\r")


@dataclass(frozen=True)
class Blob:
    """`text` decoded from `original[start:end]` with `scheme`; `padded`/`upper` say how to write it back."""

    start: int
    end: int
    scheme: str  # "base64", "base64url" or "hex"
    text: str
    padded: bool = True
    upper: bool = False
    width: int = 0  # the line width of a wrapped block, 0 for one line
    newline: str = "\n"

    def encode(self, text: str) -> str:
        """`text` written the way this blob was."""
        raw = text.encode("utf-8")
        if self.scheme == "hex":
            out = raw.hex().upper() if self.upper else raw.hex()
        else:
            out = (base64.b64encode(raw) if self.scheme == "base64" else base64.urlsafe_b64encode(raw)).decode("ascii")
            out = out if self.padded else out.rstrip("=")
        if not self.width:
            return out
        return self.newline.join(out[i : i + self.width] for i in range(0, len(out), self.width))


def find_blobs(text: str) -> list[Blob]:
    """The encoded runs of `text` that decode to text, in order: a block of lines of one width
    whole, any other run on its own line."""
    found: list[Blob] = []
    pos = 0
    for block in _WRAPPED.finditer(text):
        whole = _wrapped(block.group(0), block.start())
        if whole is not None:
            found += _lines(text, pos, block.start())
            found.append(whole)
            pos = block.end()
    return found + _lines(text, pos, len(text))


# What PII an encoding's own characters can spell where a recognizer would see it: digits grouped
# by `/` or `-` (a card, an SSN, a phone; base64 has no space, `@` or `.`) or an IBAN in capitals,
# as a run of digits, capitals, `/` and `-`; or a lower-case IBAN, as a run of letters and digits.
# Such a run is a value only if it is short (48 characters: an IBAN with separators, a grouped
# card) and holds 9 digits or more; base64 of text holds one about once in 5,000,000 characters.
_SPELLING = (re.compile(r"[0-9A-Z/-]+"), re.compile(r"[0-9A-Za-z]+"))
_SPELLED_MAX = 48


def blank_encodings(text: str, blobs: list[Blob]) -> str:
    """`text` with each blob's characters blanked (same length, so offsets hold) but for runs that
    could spell PII: a blob's text is scanned decoded, and scanning its encoding as prose as well
    doubled the cost of an encoded body for runs of letters that can hold no value."""
    if not blobs:
        return text
    parts, pos = [], 0
    for blob in blobs:
        parts.append(text[pos : blob.start])
        run = text[blob.start : blob.end]
        kept = [" "] * len(run)
        for shape in _SPELLING:
            for m in shape.finditer(run):
                if len(m.group(0)) <= _SPELLED_MAX and sum(c.isdigit() for c in m.group(0)) >= 9:
                    kept[m.start() : m.end()] = m.group(0)
        parts.append("".join(kept))
        pos = blob.end
    parts.append(text[pos:])
    return "".join(parts)


def _lines(text: str, start: int, end: int) -> list[Blob]:
    found = []
    for m in _RUN.finditer(text, start, end):
        blob = _decode(m.group(0), m.start())
        if blob is not None:
            found.append(blob)
    return found


def _wrapped(block: str, start: int) -> Blob | None:
    """The lines of one width at the start of `block` (and a last, shorter one) decoded as one
    value, or None: what follows the last line (a word on the next line) is not part of it."""
    newline = "\r\n" if "\r\n" in block else "\n"
    lines = block.split(newline)
    width = len(lines[0])
    full = next((i for i, line in enumerate(lines) if len(line) != width), len(lines))
    for count in (full + 1, full):
        if count < 2 or count > len(lines) or len(lines[count - 1]) > width:
            continue
        taken = lines[:count]
        joined = "".join(taken)
        blob = _decode(joined, start)
        # MIME and PEM pad a wrapped block: unpadded, its last line would be a word after a block
        # that ended on a whole line (`...\nend`), decoded into it as two bytes of noise.
        if blob is not None and (blob.scheme == "hex" or len(joined) % 4 == 0):
            end = start + len(newline.join(taken))
            return Blob(start, end, blob.scheme, blob.text, blob.padded, blob.upper, width, newline)
    return None


def _decode(run: str, start: int) -> Blob | None:
    end = start + len(run)
    if _HEX.fullmatch(run):
        decoded = _as_text(bytes.fromhex(run))
        if decoded is not None:
            return Blob(start, end, "hex", decoded, upper=run.upper() == run and run.lower() != run)
    standard, url = any(c in run for c in "+/"), any(c in run for c in "-_")
    if standard and url:
        return None
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_" if url else None, validate=True)
    except (binascii.Error, ValueError):
        return None
    decoded = _as_text(raw)
    if decoded is None:
        return None
    # Unpadded base64url is the norm (JWTs, URLs); standard base64 of a whole length is written padded.
    padded = body != run or (not url and len(body) % 4 == 0)
    return Blob(start, end, "base64url" if url else "base64", decoded, padded=padded)


def _as_text(raw: bytes) -> str | None:
    """`raw` as text if it is UTF-8 of printable characters and line breaks, else None (binary)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.strip() or not all(c.isprintable() or c in _LINE_BREAKS for c in text):
        return None
    return text
