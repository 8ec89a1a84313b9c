"""Tokenize a request on its way out: PII in the action's DLP fields becomes vault tokens.

The cost model follows how agents call LLMs: a chat request resends the whole history each turn.
So analysis is memoized per (scope, entity types, field value) in a bounded LRU, and a resent
message costs a dictionary lookup; only new text reaches Presidio. The memo is keyed by a keyed
BLAKE2 digest and holds offsets, so it keeps no PII in memory beyond the request itself. Tokens
already issued are cached the same way (until their expiry), so a resent value skips the vault.

Presidio is CPU-bound Python: analysis runs in a small thread pool so the event loop keeps
serving other connections while a large body is scanned (the GIL is handed over every 5 ms; for
more CPU, run more replicas). Tokens for a body's values are fetched concurrently.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from connectors import fieldpath
from gateway.errors import Refusal
from dlp.engine import Finding, PiiEngine
from dlp.tokens import TOKEN_RE
from dlp.vault import Entry, Vault

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
    findings: tuple[Finding, ...] = ()


def _string_leaves(node: Any, keys: tuple[fieldpath.Key, ...]) -> Iterator[tuple[tuple[fieldpath.Key, ...], str]]:
    """Every string under `node`: a field may hold a string, a list of strings or content parts.

    Numbers are read as their text too: a card number sent as a JSON number is still a card
    number (if it is PII, its token, a string, takes its place).
    """
    if isinstance(node, str):
        yield keys, node
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield keys, str(node)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _string_leaves(item, keys + (i,))
    elif isinstance(node, dict):
        for k, item in node.items():
            yield from _string_leaves(item, keys + (k,))


class Tokenizer:
    """Replaces PII by tokens; built once and shared by every request."""

    def __init__(self, engine: PiiEngine, vault: Vault, *, memo_size: int = 4096, workers: int = 2) -> None:
        self._engine = engine
        self._vault = vault
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dlp-analyze")
        self._memo: Lru[bytes, tuple[Finding, ...]] = Lru(memo_size)
        self._issued: Lru[bytes, tuple[str, float]] = Lru(memo_size)
        self._known: Lru[tuple[str, str], float] = Lru(memo_size)  # (scope, token) -> usable until
        self._memo_key = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"Tokenizer(memo={len(self._memo)})"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

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
        names: set[str] = set()
        for path in fields:
            for match in fieldpath.select(body, path):
                names.update(_names(match, path))
                for keys, text in _string_leaves(match.value, match.keys):
                    if keys not in seen:
                        seen.add(keys)
                        leaves.append(_Leaf(keys, text))
        summary = TokenizeSummary(fields_scanned=len(leaves))
        actions = _Actions(entities, block, mask)
        if not leaves or not actions.scanned:
            return summary
        if names and any(await self._analyze_all(sorted(names), actions.scanned, scope, TokenizeSummary())):
            # A token cannot stand in for a name without changing the body's shape; refuse instead.
            raise Refusal("malformed_body", "a parameter name in a DLP field holds personal data; send it as a value")
        texts = [leaf.text for leaf in leaves]
        labels = [fieldpath.format_keys(leaf.keys) for leaf in leaves]
        replaced = await self._tokenize_texts(texts, actions, scope, summary, issued, labels)
        for leaf, new_text in zip(leaves, replaced, strict=True):
            if new_text != leaf.text:
                fieldpath.assign(body, leaf.keys, new_text)
        return summary

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
        real = await self._real_tokens(texts, scope)
        blanked = [_blank(text, real) for text in texts]
        findings = await self._analyze_all(blanked, actions.scanned, scope, summary)
        for i, fs in enumerate(findings):
            hit = next((f for f in fs if f.entity_type in actions.block), None)
            if hit is not None:
                where = labels[i] if labels else "text"
                raise Refusal(
                    "pii_blocked",
                    f"{where} holds a {hit.entity_type}, which the policy blocks; nothing was sent",
                    details={"entity_type": hit.entity_type, "field": where},
                )
        wanted = {
            (f.entity_type, text[f.start : f.end])
            for text, fs in zip(texts, findings, strict=True)
            for f in fs
            if f.entity_type not in actions.mask
        }
        ordered = sorted(wanted)
        tokens = await asyncio.gather(*(self._token_for(scope, t, v) for t, v in ordered))
        by_value = dict(zip(ordered, tokens, strict=True))
        if issued is not None:
            issued.update({token: Entry(kind, value, math.inf) for (kind, value), token in by_value.items()})
        counts: Counter[str] = Counter()
        out: list[str] = []
        for text, fs in zip(texts, findings, strict=True):
            parts, pos = [], 0
            for f in fs:
                value = text[f.start : f.end]
                stand_in = mask_value(f.entity_type, value) if f.entity_type in actions.mask else by_value[(f.entity_type, value)]
                parts += [text[pos : f.start], stand_in]
                pos = f.end
                counts[f.entity_type] += 1
            parts.append(text[pos:])
            out.append("".join(parts))
        summary.counts = dict(sorted(counts.items()))
        return out

    async def _analyze_all(
        self, texts: list[str], entities: frozenset[str], scope: str, summary: TokenizeSummary
    ) -> list[tuple[Finding, ...]]:
        ents = ",".join(sorted(entities))
        keys = [self._digest(scope, ents, t) for t in texts]
        results: list[tuple[Finding, ...] | None] = [self._memo.get(k) for k in keys]
        missing = [i for i, r in enumerate(results) if r is None]
        summary.memo_hits = len(texts) - len(missing)
        if missing:
            loop = asyncio.get_running_loop()
            fresh = await loop.run_in_executor(
                self._executor, self._analyze_batch, [texts[i] for i in missing], entities
            )
            for i, found in zip(missing, fresh, strict=True):
                self._memo.put(keys[i], found)
                results[i] = found
        return [r for r in results if r is not None]

    def _analyze_batch(self, texts: list[str], entities: frozenset[str]) -> list[tuple[Finding, ...]]:
        return [self._engine.analyze(t, entities) for t in texts]

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


def _blank(text: str, real: frozenset[str]) -> str:
    """`text` with its real tokens blanked out (same length, so offsets hold): an agent resending a
    placeholder is not re-tokenized, and PII glued to a token is still found on its own."""
    if not real:
        return text
    return TOKEN_RE.sub(lambda m: " " * len(m.group(0)) if m.group(0) in real else m.group(0), text)
