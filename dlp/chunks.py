"""Long text analysed in overlapping windows, short texts packed together: jobs of bounded size.

Why: a job is the unit the fair pool (`dlp.fair`) schedules, so its size bounds how long another
agent can wait for a thread; it bounds any super-linear behaviour of a recognizer's regex on
adversarial input to one window; and spaCy refuses texts over 1,000,000 characters (a 500 before).

Windows overlap by `OVERLAP` characters, so any value up to that long lies whole inside one window
(a window starting at or before it ends at least `OVERLAP` later). A window's edge can cut a value
that its neighbour sees whole: findings of one type that overlap are merged into their union, so a
cut value (even one longer than the overlap, found in pieces) is replaced whole, and a fragment of
another type loses to the whole value in `resolve_overlaps` (higher score, then longer).

An edge can also make a fragment look like PII that the whole text is not ("Black Fri|day" read as
a name). A short finding (up to `OVERLAP // 2`) that touches an inner edge of its window lies whole,
with at least that much context on either side, in the neighbouring window: it is kept only if the
neighbour finds the same type there too. Longer edge findings are always kept (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dlp.engine import PiiFinding, resolve_overlaps

# Longer than any bounded PII shape (IBAN 42 with spaces, e-mail 254) and five context words.
OVERLAP = 320


@dataclass(frozen=True)
class Piece:
    """`text[start:start + len(piece)]` of the `index`th text of a batch."""

    index: int
    start: int
    text: str


def windows(length: int, size: int) -> list[tuple[int, int]]:
    """`[start, end)` windows of at most `size` covering `range(length)`, neighbours overlapping by
    `OVERLAP`. One window when the text fits."""
    step = max(size - OVERLAP, 1)
    out: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + size, length)
        out.append((start, end))
        if end >= length:
            return out
        start += step


def jobs(texts: list[str], size: int) -> list[list[Piece]]:
    """The pieces of `texts` grouped into jobs of at most about `size` characters each: a long text
    is split into windows, short ones share a job (a chat's fifty messages are one job, not fifty)."""
    out: list[list[Piece]] = []
    current: list[Piece] = []
    filled = 0
    for i, text in enumerate(texts):
        for start, end in windows(len(text), size):
            piece = Piece(i, start, text[start:end])
            if current and filled + len(piece.text) > size:
                out.append(current)
                current, filled = [], 0
            current.append(piece)
            filled += len(piece.text)
    if current:
        out.append(current)
    return out


def combine(parts: list[tuple[Piece, tuple[PiiFinding, ...]]], length: int) -> tuple[PiiFinding, ...]:
    """The findings of one text of `length` characters from its windows' own, in window order."""
    shifted = [
        [PiiFinding(f.start + p.start, f.end + p.start, f.entity_type, f.score) for f in fs] for p, fs in parts
    ]
    kept: list[PiiFinding] = []
    for i, (piece, _) in enumerate(parts):
        end = piece.start + len(piece.text)
        for f in shifted[i]:
            short = f.end - f.start <= OVERLAP // 2
            if short and f.end == end and end < length:
                neighbour = shifted[i + 1] if i + 1 < len(shifted) else []
            elif short and f.start == piece.start and piece.start > 0:
                neighbour = shifted[i - 1] if i > 0 else []
            else:
                kept.append(f)
                continue
            if any(g.entity_type == f.entity_type and g.start < f.end and f.start < g.end for g in neighbour):
                kept.append(f)
    return merge(kept)


def merge(findings: Iterable[PiiFinding]) -> tuple[PiiFinding, ...]:
    """Findings of a whole text from its windows' (already shifted to the text's offsets)."""
    merged: list[PiiFinding] = []
    for f in sorted(findings, key=lambda f: (f.entity_type, f.start, f.end)):
        last = merged[-1] if merged else None
        if last is not None and last.entity_type == f.entity_type and f.start < last.end:
            merged[-1] = PiiFinding(last.start, max(last.end, f.end), f.entity_type, max(last.score, f.score))
        else:
            merged.append(f)
    return resolve_overlaps(merged)
