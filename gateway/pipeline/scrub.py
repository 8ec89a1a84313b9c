"""Vendor credentials never travel back to the agent: the respond side's scrubber.

Vendors echo requests (error pages, debug endpoints, a misconfigured proxy in front of them), and
an echoed request carries the credential the gateway injected. Every configured secret value, in
the encodings it is commonly sent or echoed in (as is, URL-encoded, JSON-escaped, base64 of itself
and of `key:` as in HTTP Basic), is replaced in response headers and bodies, streams included,
before the agent sees them. A stream holds back only the tail of a chunk that could be the start of
a secret, so it keeps flowing event by event.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

REPLACEMENT = b"[secret removed by egress-gateway]"
MIN_SECRET = 8  # shorter values would scrub ordinary text; no vendor key is this short


def encodings(secret: str) -> set[bytes]:
    """The forms in which `secret` can come back."""
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
    return {f.rstrip(b"=") for f in forms if len(f) >= MIN_SECRET}


@dataclass
class Scrubber:
    needles: tuple[bytes, ...]
    _pattern: re.Pattern[bytes] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ordered = sorted(set(self.needles), key=len, reverse=True)  # longest first: no partial hit
        self._pattern = re.compile(b"|".join(map(re.escape, ordered))) if ordered else None

    @classmethod
    def of(cls, secrets: Iterable[str]) -> Scrubber:
        return cls(tuple(n for s in secrets if len(s) >= MIN_SECRET for n in encodings(s)))

    def scrub(self, data: bytes) -> tuple[bytes, int]:
        """`data` with every secret replaced, and how many were."""
        if self._pattern is None:
            return data, 0
        return self._pattern.subn(REPLACEMENT, data)

    def held_back(self, data: bytes) -> int:
        """How many trailing bytes of `data` could begin a secret (to wait for the next chunk)."""
        longest = max((len(n) for n in self.needles), default=0)
        for k in range(min(longest - 1, len(data)), 0, -1):
            tail = data[-k:]
            if any(n.startswith(tail) for n in self.needles):
                return k
        return 0

    def _safe_cut(self, data: bytes) -> int:
        """Where `data` may be cut: before any tail that could begin a secret, and never inside a
        secret that is whole in `data` (it is carried, and replaced with what follows)."""
        cut = len(data) - self.held_back(data)
        if self._pattern is not None:
            for m in self._pattern.finditer(data):
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
