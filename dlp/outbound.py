"""Tokenize a request on its way out: PII in the action's DLP fields becomes vault tokens.

The cost model follows how agents call LLMs: a chat request resends the whole history each turn.
So analysis is memoized per (scope, entity types, field value) in a bounded LRU, and a resent
message costs a dictionary lookup; only new text reaches Presidio. The memo is keyed by a keyed
BLAKE2 digest and holds offsets, so it keeps no PII in memory beyond the request itself. Tokens
already issued are cached the same way (until their expiry), so a resent value skips the vault.

Presidio is CPU-bound Python: analysis runs on a few threads so the event loop keeps serving
other connections while a large body is scanned (the GIL is handed over every 5 ms; for more CPU,
run more replicas). The threads are shared fairly between agents (`dlp.fair`), the work is cut into
bounded jobs (`dlp.chunks`) and large ones run in child processes (`dlp.children`), and a call brings at most `Limits` of text to scan: one agent's flood
of large bodies cannot hold the DLP workers, or the GIL, away from another agent's small call.
Tokens for a body's values are fetched concurrently.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import re
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from connectors import fieldpath
from dlp import chunks, encoded
from dlp.children import Analyzer
from dlp.engine import PiiEngine, PiiFinding
from dlp.fair import FairPool
from dlp.tokens import TOKEN_RE
from dlp.vault import Entry, Vault
from gateway.errors import Refusal

K = TypeVar("K")
V = TypeVar("V")


def scope_key(tenant: str | None, agent: str) -> str:
    """The vault scope of an agent: tokens are shared within it and never across it."""
    t, a = tenant or "", agent
    return f"{len(t)}:{t}/{a}"


class Lru(Generic[K, V]):
    """A thread-safe bounded LRU map (the memo is filled from worker threads)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class Limits:
    """How much text one call may bring to DLP (`dlp.max_field_chars`, `dlp.max_call_chars`), and
    the size of one job on a worker thread (`dlp.chunk_chars`). See `DlpConfig` for the defaults."""

    max_field_chars: int = 100_000
    max_call_chars: int = 500_000
    chunk_chars: int = 4_000


@dataclass
class TokenizeSummary:
    """What the audit records about a tokenization: counts per entity type, never values."""

    counts: dict[str, int] = field(default_factory=dict)
    fields_scanned: int = 0
    memo_hits: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class _Actions:
    """What one call does per entity type: tokenize, block or mask (a type in none leaves as is)."""

    tokenize: frozenset[str]
    block: frozenset[str] = frozenset()
    mask: frozenset[str] = frozenset()

    @property
    def scanned(self) -> frozenset[str]:
        return self.tokenize | self.block | self.mask


# Types whose last four digits are the customary safe hint (a card's, a phone's, an account's).
_HINTED = frozenset({"CREDIT_CARD", "IBAN_CODE", "PHONE_NUMBER", "US_SSN"})


def mask_value(entity_type: str, value: str) -> str:
    """An irreversible stand-in: `****` plus, for numbers people recognize by them, the last four
    digits. Nothing is stored, so a mask can never be restored."""
    if entity_type in _HINTED:
        digits = [c for c in value if c.isdigit()]
        return "****" + "".join(digits[-4:])
    return "****"


@dataclass
class _Leaf:
    keys: tuple[fieldpath.Key, ...]
    text: str
    path: str  # the connector's field path it was found under: names no agent-chosen key
    findings: tuple[PiiFinding, ...] = ()


def _field_leaves(node: Any, keys: tuple[fieldpath.Key, ...]) -> Iterator[tuple[tuple[fieldpath.Key, ...], str | float]]:
    """Every string and number under `node`: a field may hold a string, a list of strings or
    content parts. Numbers are PII too (a card number sent as a JSON number): `_numbers` reads
    them, and in a DLP field a number that is PII becomes its token, a string."""
    if isinstance(node, str) or (isinstance(node, (int, float)) and not isinstance(node, bool)):
        yield keys, node
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _field_leaves(item, keys + (i,))
    elif isinstance(node, dict):
        for k, item in node.items():
            yield from _field_leaves(item, keys + (k,))


# Numbers of 9 (an SSN) to 19 (the longest card) digits can be PII; shorter or longer ones cannot.
_PII_DIGITS = range(9, 20)
# A 10-digit JSON number is a phone only if its key says so, inside the scanned fields too: about
# 40% of bare 10-digit numbers are valid US numbers, so 24% of random 32-bit `seed`s (measured) were
# refused, and half of a JSON schema's 10-digit bounds (`maximum: 2147483647`) left as string tokens.
_PHONE_KEYS = frozenset({"phone", "telephone", "tel", "mobile", "cell", "cellphone", "fax", "msisdn", "sms", "whatsapp"})


def _numbers(node: Any, keys: tuple[fieldpath.Key, ...]) -> Iterator[_Leaf]:
    """Every number of the body that could be PII, as `key: digits` for the analyzer to read with
    its key as context (the last name on its path, its letters only and at most 40 of them)."""
    if isinstance(node, bool):
        return
    if isinstance(node, (int, float)):
        if isinstance(node, float) and not (node.is_integer() and abs(node) < 1e19):
            return
        digits = str(abs(int(node)))
        if len(digits) in _PII_DIGITS:
            name = next((k for k in reversed(keys) if isinstance(k, str)), "")
            context = " ".join(re.findall(r"[A-Za-z]+", name))[:40] or "value"
            yield _Leaf(keys, f"{context}: {digits}", "")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _numbers(item, keys + (i,))
    elif isinstance(node, dict):
        for k, item in node.items():
            yield from _numbers(item, keys + (k,))


class Tokenizer:
    """Replaces PII by tokens; built once and shared by every request."""

    def __init__(
        self,
        engine: PiiEngine,
        vault: Vault,
        *,
        memo_size: int = 4096,
        workers: int = 2,
        limits: Limits = Limits(),
        analyzer: Analyzer | None = None,
    ) -> None:
        self._analyzer = analyzer or Analyzer(engine)
        self._vault = vault
        self._limits = limits
        self._pool = FairPool(workers)
        self._memo: Lru[bytes, tuple[PiiFinding, ...]] = Lru(memo_size)
        self._issued: Lru[bytes, tuple[str, float]] = Lru(memo_size)
        self._known: Lru[tuple[str, str], float] = Lru(memo_size)  # (scope, token) -> usable until
        self._memo_key = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"Tokenizer(memo={len(self._memo)})"

    def close(self) -> None:
        self._pool.close()
        self._analyzer.close()

    async def tokenize_body(
        self,
        body: Any,
        fields: tuple[str, ...],
        entities: frozenset[str],
        scope: str,
        issued: dict[str, Entry] | None = None,
        *,
        block: frozenset[str] = frozenset(),
        mask: frozenset[str] = frozenset(),
    ) -> TokenizeSummary:
        """Replace PII in the strings under `fields` of `body`, in place; return what was replaced.

        Values of `entities` become tokens, of `mask` irreversible `****1111` masks, and one of
        `block` refuses the call (`pii_blocked`, naming the type and the field, never the value)
        before any token is issued. `issued`, if given, receives token -> entry for every value replaced: the response to this
        call can be detokenized from it without waiting on the vault (see `dlp.sync`).
        Raises `StoreUnavailable` if the vault cannot issue a token: the caller refuses the call
        (`store_unavailable`) rather than let a value out.
        """
        seen: set[tuple[fieldpath.Key, ...]] = set()
        leaves: list[_Leaf] = []
        in_fields: set[tuple[fieldpath.Key, ...]] = set()  # numbers inside DLP fields
        names: set[str] = set()
        for path in fields:
            for match in fieldpath.select(body, path):
                names.update(_names(match, path))
                for keys, value in _field_leaves(match.value, match.keys):
                    if keys not in seen:
                        seen.add(keys)
                        if isinstance(value, str):
                            leaves.append(_Leaf(keys, value, path))
                        else:
                            in_fields.add(keys)
        numbers = list(_numbers(body, ()))
        self._check_size(leaves + numbers, names)
        summary = TokenizeSummary(fields_scanned=len(leaves) + len(in_fields))
        actions = _Actions(entities, block, mask)
        if not actions.scanned:
            return summary
        numeric = await self._pii_numbers(numbers, in_fields, actions, scope)
        if not leaves and not numeric:
            return summary
        if names and any(await self._analyze_all(sorted(names), actions.scanned, scope, TokenizeSummary())):
            # A token cannot stand in for a name without changing the body's shape; refuse instead.
            raise Refusal("malformed_body", "a parameter name in a DLP field holds personal data; send it as a value")
        texts = [leaf.text for leaf in leaves]
        labels = [fieldpath.format_keys(leaf.keys) for leaf in leaves]
        replaced = await self._tokenize_texts(texts, actions, scope, summary, issued, labels) if leaves else []
        for leaf, new_text in zip(leaves, replaced, strict=True):
            if new_text != leaf.text:
                fieldpath.assign(body, leaf.keys, new_text)
        counts = Counter(summary.counts)
        for keys, kind, digits in numeric:
            if kind in actions.mask:
                stand_in = mask_value(kind, digits)
            else:
                stand_in = await self._token_for(scope, kind, digits)
                if issued is not None:
                    issued[stand_in] = Entry(kind, digits, math.inf)
            fieldpath.assign(body, keys, stand_in)
            counts[kind] += 1
        summary.counts = dict(sorted(counts.items()))
        return summary

    async def _pii_numbers(
        self, numbers: list[_Leaf], in_fields: set[tuple[fieldpath.Key, ...]], actions: _Actions, scope: str
    ) -> list[tuple[tuple[fieldpath.Key, ...], str, str]]:
        """The JSON numbers that are PII, as (keys, entity type, digits), each read with its key as
        context (`ssn: 536904399`), as Presidio reads a value with the words before it; a phone
        number only under a key that names one (`phone`, `mobile`), in the DLP fields or not.

        Refuses (`pii_blocked`) one of a type the policy blocks, and one of a type to tokenize
        outside the DLP fields (`seed`, `amount`): a token is a string, and a string where the
        vendor expects a number changes the call, so refusing is the one answer that neither sends
        the value nor sends something else. Inside a DLP field (the field holds text) it becomes its
        token; a type to mask leaves as its mask, the policy's choice of an irreversible string."""
        if not numbers:
            return []
        findings = await self._analyze_all([n.text for n in numbers], actions.scanned, scope, TokenizeSummary())
        found = []
        for number, fs in zip(numbers, findings, strict=True):
            digits_at = number.text.rindex(" ") + 1
            named_phone = not _PHONE_KEYS.isdisjoint(number.text[:digits_at].lower().rstrip(": ").split())
            hit = next((f for f in fs if f.end > digits_at and (f.entity_type != "PHONE_NUMBER" or named_phone)), None)
            if hit is None:
                continue
            label = fieldpath.format_keys(number.keys)
            if hit.entity_type in actions.block or (hit.entity_type in actions.tokenize and number.keys not in in_fields):
                why = "which the policy blocks" if hit.entity_type in actions.block else "and a number cannot carry a token"
                raise Refusal(
                    "pii_blocked",
                    f"the number {label} is a {hit.entity_type}, {why}; nothing was sent",
                    details={"entity_type": hit.entity_type, "field": label},
                )
            found.append((number.keys, hit.entity_type, number.text[digits_at:]))
        return found

    def _check_size(self, leaves: list[_Leaf], names: set[str]) -> None:
        """Refuse (413 `body_too_large`) a call whose DLP text exceeds the limits, before any work.

        Checked on every call, memo or not, so the same request always gets the same answer."""
        lim = self._limits
        for leaf in leaves:
            if len(leaf.text) > lim.max_field_chars:
                raise Refusal(
                    "body_too_large",
                    f"a value under {leaf.path} holds {len(leaf.text)} characters; DLP scans at most "
                    f"{lim.max_field_chars} per field (dlp.max_field_chars)",
                    details={"field": leaf.path, "limit": lim.max_field_chars},
                )
        total = sum(len(leaf.text) for leaf in leaves) + sum(len(n) for n in names)
        if total > lim.max_call_chars:
            raise Refusal(
                "body_too_large",
                f"the DLP fields of this call hold {total} characters; DLP scans at most "
                f"{lim.max_call_chars} per call (dlp.max_call_chars)",
                details={"limit": lim.max_call_chars},
            )

    async def tokenize_text(self, text: str, entities: frozenset[str], scope: str) -> tuple[str, TokenizeSummary]:
        """`text` with its PII replaced by tokens."""
        summary = TokenizeSummary(fields_scanned=1)
        (out,) = await self._tokenize_texts([text], _Actions(entities), scope, summary)
        return out, summary

    async def _tokenize_texts(
        self,
        texts: list[str],
        actions: _Actions,
        scope: str,
        summary: TokenizeSummary,
        issued: dict[str, Entry] | None = None,
        labels: list[str] | None = None,
    ) -> list[str]:
        """`texts` with their PII replaced, and the PII of text encoded inside them (`dlp.encoded`):
        an encoded value whose text holds PII is written again, in its scheme, with it replaced."""
        blobs = [encoded.find_blobs(text) for text in texts]
        inner = [(i, blob) for i, found in enumerate(blobs) for blob in found]
        self._check_decoded(texts, [blob.text for _, blob in inner])
        every = texts + [blob.text for _, blob in inner]
        where = (labels or ["text"] * len(texts)) + [f"{labels[i] if labels else 'text'} (encoded)" for i, _ in inner]
        real = await self._real_tokens(every, scope)
        scanned = [encoded.blank_encodings(_blank(t, real), found) for t, found in zip(texts, blobs, strict=True)]
        findings = await self._analyze_all(scanned + [_blank(b.text, real) for _, b in inner], actions.scanned, scope, summary)
        for label, fs in zip(where, findings, strict=True):
            hit = next((f for f in fs if f.entity_type in actions.block), None)
            if hit is not None:
                raise Refusal(
                    "pii_blocked",
                    f"{label} holds a {hit.entity_type}, which the policy blocks; nothing was sent",
                    details={"entity_type": hit.entity_type, "field": label},
                )
        wanted = {
            (f.entity_type, text[f.start : f.end])
            for text, fs in zip(every, findings, strict=True)
            for f in fs
            if f.entity_type not in actions.mask
        }
        ordered = sorted(wanted)
        tokens = await asyncio.gather(*(self._token_for(scope, t, v) for t, v in ordered))
        by_value = dict(zip(ordered, tokens, strict=True))
        if issued is not None:
            issued.update({token: Entry(kind, value, math.inf) for (kind, value), token in by_value.items()})
        counts: Counter[str] = Counter()

        def stand_ins(text: str, fs: tuple[PiiFinding, ...]) -> list[tuple[int, int, str]]:
            counts.update(f.entity_type for f in fs)
            return [
                (f.start, f.end, mask_value(f.entity_type, text[f.start : f.end]) if f.entity_type in actions.mask
                 else by_value[(f.entity_type, text[f.start : f.end])])
                for f in fs
            ]

        edits = [stand_ins(text, fs) for text, fs in zip(texts, findings[: len(texts)], strict=True)]
        for (i, blob), fs in zip(inner, findings[len(texts) :], strict=True):
            if not fs:
                continue
            clash = next((f for f in findings[i] if f.start < blob.end and blob.start < f.end), None)
            if clash is not None:  # PII in the encoding's own characters too: no edit can keep both out
                raise Refusal(
                    "pii_blocked",
                    f"{where[i]} holds a {clash.entity_type} in an encoded value that encodes personal data too; nothing was sent",
                    details={"entity_type": clash.entity_type, "field": where[i]},
                )
            edits[i].append((blob.start, blob.end, blob.encode(_apply_edits(blob.text, stand_ins(blob.text, fs)))))
        summary.counts = dict(sorted(counts.items()))
        return [_apply_edits(text, sorted(e)) for text, e in zip(texts, edits, strict=True)]

    def _check_decoded(self, texts: list[str], decoded: list[str]) -> None:
        """Refuse (413) a call whose text decoded from encodings takes it over `dlp.max_call_chars`:
        an encoded value costs the scan of its text, and the limit bounds a call's scan whatever
        its form."""
        total = sum(len(t) for t in texts) + sum(len(t) for t in decoded)
        if decoded and total > self._limits.max_call_chars:
            raise Refusal(
                "body_too_large",
                f"the DLP fields of this call hold {total} characters with the text decoded from base64 or hex "
                f"values; DLP scans at most {self._limits.max_call_chars} per call (dlp.max_call_chars)",
                details={"limit": self._limits.max_call_chars},
            )

    async def _analyze_all(
        self, texts: list[str], entities: frozenset[str], scope: str, summary: TokenizeSummary
    ) -> list[tuple[PiiFinding, ...]]:
        ents = ",".join(sorted(entities))
        keys = [self._digest(scope, ents, t) for t in texts]
        results: list[tuple[PiiFinding, ...] | None] = [self._memo.get(k) for k in keys]
        missing = [i for i, r in enumerate(results) if r is None]
        summary.memo_hits = len(texts) - len(missing)
        if missing:
            fresh = await self._analyze_fresh(scope, [texts[i] for i in missing], entities)
            for i, found in zip(missing, fresh, strict=True):
                self._memo.put(keys[i], found)
                results[i] = found
        return [r for r in results if r is not None]

    async def _analyze_fresh(self, scope: str, texts: list[str], entities: frozenset[str]) -> list[tuple[PiiFinding, ...]]:
        """Analyse `texts` as bounded jobs on the fair pool, in `scope`'s turn."""
        batches = chunks.jobs(texts, self._limits.chunk_chars)
        results = await asyncio.gather(
            *(self._pool.run(scope, functools.partial(self._analyzer, [p.text for p in b], entities)) for b in batches)
        )
        parts: list[list[tuple[chunks.Piece, tuple[PiiFinding, ...]]]] = [[] for _ in texts]
        for batch, per_piece in zip(batches, results, strict=True):
            for piece, fs in zip(batch, per_piece, strict=True):
                parts[piece.index].append((piece, fs))
        return [chunks.combine(p, len(t)) for p, t in zip(parts, texts, strict=True)]


    async def _real_tokens(self, texts: list[str], scope: str) -> frozenset[str]:
        """The token-shaped strings in `texts` that the vault holds for `scope` (issue 10, item 1).

        Only these are left alone; anything merely shaped like a token (made up, expired, another
        agent's) is text, scanned like the rest, so glueing one to an e-mail hides nothing.
        """
        shaped = {m.group(0) for text in texts for m in TOKEN_RE.finditer(text)}
        now = time.time()
        unknown = {t for t in shaped if (self._known.get((scope, t)) or 0) <= now}
        if unknown:
            for token, entry in (await self._vault.resolve(scope, unknown)).items():
                self._known.put((scope, token), min(entry.expires_at, now + 60))
        return frozenset(t for t in shaped if (self._known.get((scope, t)) or 0) > now)

    async def _token_for(self, scope: str, entity_type: str, value: str) -> str:
        key = self._digest(scope, entity_type, value)
        cached = self._issued.get(key)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        token, expires_at = await self._vault.token_for(scope, entity_type, value)
        # Stop reusing a cached token a minute before the vault forgets it.
        self._issued.put(key, (token, expires_at - 60))
        self._known.put((scope, token), expires_at - 60)
        return token

    def _digest(self, *parts: str) -> bytes:
        h = hashlib.blake2b(key=self._memo_key, digest_size=16)
        for p in parts:
            h.update(p.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.digest()


def _names(match: fieldpath.Match, path: str) -> Iterator[str]:
    """The names an agent chose within a DLP field: keys a `*` matched, and keys inside the value."""
    if fieldpath.parse(path)[-1] == fieldpath.WILDCARD and match.keys and isinstance(match.keys[-1], str):
        yield match.keys[-1]
    stack = [match.value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield from (k for k in node if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _apply_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
    """`text` with each `[start, end)` of `edits` (in order, not overlapping) replaced."""
    parts, pos = [], 0
    for start, end, stand_in in edits:
        parts += [text[pos:start], stand_in]
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _blank(text: str, real: frozenset[str]) -> str:
    """`text` with its real tokens blanked out (same length, so offsets hold): an agent resending a
    placeholder is not re-tokenized, and PII glued to a token is still found on its own."""
    if not real:
        return text
    return TOKEN_RE.sub(lambda m: " " * len(m.group(0)) if m.group(0) in real else m.group(0), text)
