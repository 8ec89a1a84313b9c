"""Text hidden in base64, base64url or hex inside a string value, decoded once so DLP can read it.

An agent (or a tool's output it forwards) can carry `am9obkBleGFtcGxlLmNvbQ==` where the address it
encodes would have been tokenized. A run of the encodings' characters long enough to hold a value
is decoded; if the bytes are UTF-8 text (every character printable or a line break) it is scanned
like any other text, and the caller re-encodes the text with its PII replaced in the same scheme,
padding and case, so the vendor still gets a well-formed value and never the raw one.

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

    def encode(self, text: str) -> str:
        """`text` written the way this blob was."""
        raw = text.encode("utf-8")
        if self.scheme == "hex":
            out = raw.hex()
            return out.upper() if self.upper else out
        out = (base64.b64encode(raw) if self.scheme == "base64" else base64.urlsafe_b64encode(raw)).decode("ascii")
        return out if self.padded else out.rstrip("=")


def find_blobs(text: str) -> list[Blob]:
    """The encoded runs of `text` that decode to text, in order."""
    found = []
    for m in _RUN.finditer(text):
        blob = _decode(m.group(0), m.start())
        if blob is not None:
            found.append(blob)
    return found


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
