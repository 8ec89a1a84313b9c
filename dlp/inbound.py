"""Restore tokens on the way back: whole JSON/text bodies, and streams as they arrive.

Only tokens of the caller's own scope whose entity type its policy may reveal are restored; any
other token (another agent's, an expired one, a type not revealed, a made-up one) stays as it is.
The type checked is the vault's, not the one written in the token.

Streams are never buffered whole (LiteLLM's streaming fix took time to first token from 2555 ms
to 290 ms). A stream emits at once everything that cannot be the start of a token and holds back
only a tail that could be (at most 65 characters, `tokens.pending_start`):

- `TextStreamDetokenizer` works on raw text (any chunked body).
- `SseDetokenizer` works at the SSE-event level, because in LLM streams a token is usually
  split across two events' JSON strings (`"delta":{"content":"tok_EMA"}` then `"IL_…"`), with
  JSON and `data:` framing in between that no byte-level matcher can see through. A vendor's
  `StreamShape` (this package knows none: the OpenAI one lives with the gateway's DLP glue) names
  the streamed text fields of each event; the held tail of each is carried into the next event of
  that field and flushed into the event that finishes it. Events that change are re-serialized;
  all others pass through byte for byte.
"""

from __future__ import annotations

import codecs
import json
import re
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dlp.tokens import TOKEN_RE, pending_start, token_type
from dlp.vault import VaultReader


# Why a token was left in place. The vault is keyed by scope, so another agent's token, an
# expired one and a made-up one look the same from the caller's scope: all are "unknown", and
# telling them apart would let an agent probe for other agents' tokens.
NOT_REVEALABLE = "type_not_revealable"
UNKNOWN = "unknown"


@dataclass
class RevealSummary:
    """What the audit records about a reveal: counts per entity type, never values.

    `withheld_by` is reason -> entity type -> count of tokens left in place; the type is the one
    written in the token for unknown ones (nothing else is known), the vault's otherwise.
    """

    restored: dict[str, int] = field(default_factory=dict)
    withheld: int = 0  # tokens seen and left in place, all reasons
    withheld_by: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, restored: Counter[str], withheld: Counter[tuple[str, str]]) -> None:
        merged = Counter(self.restored)
        merged.update(restored)
        self.restored = dict(sorted(merged.items()))
        self.withheld += sum(withheld.values())
        for (reason, kind), n in withheld.items():
            by_type = self.withheld_by.setdefault(reason, {})
            by_type[kind] = by_type.get(kind, 0) + n

    @property
    def total(self) -> int:
        return sum(self.restored.values())


class Detokenizer:
    """Looks tokens up in the vault for one scope and set of revealable types."""

    def __init__(self, vault: VaultReader) -> None:
        self._vault = vault

    async def values(self, tokens: set[str], scope: str, reveal: frozenset[str]) -> dict[str, tuple[str, str]]:
        """token -> (entity type, value) for the tokens that may be restored."""
        return (await self._lookup(tokens, scope, reveal))[0]

    async def _lookup(
        self, tokens: set[str], scope: str, reveal: frozenset[str]
    ) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
        """(token -> (type, value) to restore, token -> (reason, type) withheld)."""
        withheld = {t: (NOT_REVEALABLE, token_type(t) or "") for t in tokens if token_type(t) not in reveal}
        candidates = tokens - withheld.keys()
        entries = await self._vault.resolve(scope, candidates) if candidates else {}
        values: dict[str, tuple[str, str]] = {}
        for t in candidates:
            e = entries.get(t)
            if e is None:
                withheld[t] = (UNKNOWN, token_type(t) or "")
            elif e.entity_type not in reveal:
                withheld[t] = (NOT_REVEALABLE, e.entity_type)
            else:
                values[t] = (e.entity_type, e.value)
        return values, withheld

    async def restore_text(self, text: str, scope: str, reveal: frozenset[str]) -> tuple[str, RevealSummary]:
        summary = RevealSummary()
        (out,) = await self.restore_many([text], scope, reveal, summary)
        return out, summary

    async def restore_json(self, data: Any, scope: str, reveal: frozenset[str]) -> tuple[Any, RevealSummary]:
        """A copy of `data` with tokens restored in every string, keys included."""
        summary = RevealSummary()
        strings = list(_strings(data))
        restored = dict(zip(strings, await self.restore_many(strings, scope, reveal, summary), strict=True))
        return _rebuild(data, restored), summary

    async def restore_json_bytes(self, raw: bytes, scope: str, reveal: frozenset[str]) -> tuple[bytes, RevealSummary]:
        """A JSON body with tokens restored; unchanged bytes when it holds no restorable token."""
        if not TOKEN_RE.search(raw.decode("utf-8", "replace")):
            return raw, RevealSummary()
        data, summary = await self.restore_json(json.loads(raw), scope, reveal)
        if summary.total == 0:
            return raw, summary
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), summary

    async def restore_many(
        self, texts: list[str], scope: str, reveal: frozenset[str], summary: RevealSummary
    ) -> list[str]:
        """`texts` with the restorable tokens replaced by their values; counts added to `summary`."""
        found = {m.group(0) for text in texts for m in TOKEN_RE.finditer(text)}
        if not found:
            return texts
        values, reasons = await self._lookup(found, scope, reveal)
        restored: Counter[str] = Counter()
        withheld: Counter[tuple[str, str]] = Counter()

        def swap(m: re.Match[str]) -> str:
            hit = values.get(m.group(0))
            if hit is None:
                withheld[reasons[m.group(0)]] += 1
                return m.group(0)
            restored[hit[0]] += 1
            return hit[1]

        out = [TOKEN_RE.sub(swap, text) for text in texts]
        summary.add(restored, withheld)
        return out


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, list):
        for item in data:
            yield from _strings(item)
    elif isinstance(data, dict):
        for k, v in data.items():
            yield k
            yield from _strings(v)


def _rebuild(data: Any, restored: dict[str, str]) -> Any:
    if isinstance(data, str):
        return restored.get(data, data)
    if isinstance(data, list):
        return [_rebuild(item, restored) for item in data]
    if isinstance(data, dict):
        return {restored.get(k, k): _rebuild(v, restored) for k, v in data.items()}
    return data


class TextStreamDetokenizer:
    """Restores tokens in a chunked text/bytes stream, holding back only a possible token prefix."""

    def __init__(self, detokenizer: Detokenizer, scope: str, reveal: frozenset[str]) -> None:
        self._detok, self._scope, self._reveal = detokenizer, scope, reveal
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._held = ""
        self.summary = RevealSummary()

    async def feed(self, chunk: bytes) -> bytes:
        text = self._held + self._decoder.decode(chunk)
        cut = pending_start(text)
        self._held = text[cut:]
        return await self._emit(text[:cut])

    async def finish(self) -> bytes:
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return await self._emit(text)

    async def _emit(self, text: str) -> bytes:
        if not text:
            return b""
        (out,) = await self._detok.restore_many([text], self._scope, self._reveal, self.summary)
        return out.encode("utf-8", "surrogateescape")


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")

# A streamed text field: (kind, indexes...) identifies it across events.
FieldKey = tuple[Any, ...]
# How a field ends with an event: False (more may follow), True (emit everything now), or
# "before" (flush the held tail as an event of its own before this one).
Final = bool | str


class StreamShape(Protocol):
    """Where one vendor's stream carries text that can hold a split token; one per stream."""

    def fields(self, event: dict[str, Any], held: Collection[FieldKey]) -> Iterator[tuple[FieldKey, dict[str, Any], str, Final]]:
        """The streamed text fields of one event: (key, container, field name, final).

        `held` are the keys with a tail held back; a shape may add an empty field to the event
        that finishes one so the tail has somewhere to go.
        """
        ...

    def flush_event(self, key: FieldKey, tail: str) -> dict[str, Any]:
        """An event of its own that carries `tail` of field `key`."""
        ...


class SseDetokenizer:
    """Restores tokens in a `text/event-stream` body event by event (see the module docstring).

    Without a `shape`, tokens are restored within each event only.
    """

    def __init__(self, detokenizer: Detokenizer, scope: str, reveal: frozenset[str], shape: StreamShape | None = None) -> None:
        self._detok, self._scope, self._reveal, self._shape = detokenizer, scope, reveal, shape
        self._buf = b""
        self._held: dict[FieldKey, str] = {}
        self.summary = RevealSummary()

    async def feed(self, chunk: bytes) -> bytes:
        """Process every event completed by `chunk`; the bytes to send on now."""
        self._buf += chunk
        out: list[bytes] = []
        while (m := _EVENT_END.search(self._buf)) is not None:
            event, self._buf = self._buf[: m.end()], self._buf[m.end() :]
            out.append(await self._event(event))
        return b"".join(out)

    async def finish(self) -> bytes:
        """At the end of the upstream body: the unterminated last event and any held tail."""
        out = await self._event(self._buf) if self._buf.strip() else self._buf
        self._buf = b""
        return out + await self._flush(list(self._held))

    async def _event(self, raw: bytes) -> bytes:
        head = raw.rstrip(b"\r\n")
        lines = head.decode("utf-8", "surrogateescape").splitlines()
        data_idx = [i for i, line in enumerate(lines) if line.startswith("data:")]
        if not data_idx:
            return raw
        data = "\n".join(lines[i][5:].removeprefix(" ") for i in data_idx)
        if data.strip() == "[DONE]":
            return await self._flush(list(self._held)) + raw
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            if not TOKEN_RE.search(data):
                return raw
            (restored_data,) = await self._detok.restore_many([data], self._scope, self._reveal, self.summary)
            return _reframe(lines, data_idx, restored_data, raw)
        prefix, changed = await self._carry(obj)
        strings = list(_strings(obj))
        if any(TOKEN_RE.search(s) for s in strings):
            before = self.summary.total
            new = await self._detok.restore_many(strings, self._scope, self._reveal, self.summary)
            restored = dict(zip(strings, new, strict=True))
            if self.summary.total != before:
                obj = _rebuild(obj, restored)
                changed = True
        if not changed:
            return prefix + raw
        return prefix + _reframe(lines, data_idx, json.dumps(obj, ensure_ascii=False, separators=(",", ":")), raw)

    async def _carry(self, obj: dict[str, Any]) -> tuple[bytes, bool]:
        """Hold back each streamed field's possible token prefix, prepend what was held before;
        the flush events to send first, and whether `obj` changed."""
        prefix, changed = b"", False
        if self._shape is None:
            return prefix, changed
        for key, container, name, final in self._shape.fields(obj, self._held.keys()):
            if final == "before":
                prefix += await self._flush([key])
                continue
            value = self._held.pop(key, "") + (container.get(name) or "")
            cut = len(value) if final else pending_start(value)
            if cut < len(value):
                self._held[key] = value[cut:]
            if value[:cut] != container.get(name):
                container[name] = value[:cut]
                changed = True
        return prefix, changed

    async def _flush(self, keys: list[FieldKey]) -> bytes:
        """Held tails as events of their own (the stream ended or moved on without them)."""
        out = b""
        for key in keys:
            tail = self._held.pop(key, "")
            if not tail or self._shape is None:
                continue
            (tail,) = await self._detok.restore_many([tail], self._scope, self._reveal, self.summary)
            event = self._shape.flush_event(key, tail)
            out += b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"
        return out


def _reframe(lines: list[str], data_idx: list[int], data: str, raw: bytes) -> bytes:
    """The event with its data lines replaced by `data` (other fields kept) and its terminator.

    `lines` are the event's lines without the terminator, which is taken back from `raw`.
    """
    keep = [line for i, line in enumerate(lines) if i not in data_idx[1:]]
    first = data_idx[0]
    new_lines = [("data: " + "\ndata: ".join(data.split("\n"))) if i == first else line for i, line in enumerate(keep)]
    newline = "\r\n" if b"\r\n" in raw else "\n"
    body = newline.join(new_lines)
    terminator = raw[len(raw.rstrip(b"\r\n")) :]
    return body.encode("utf-8", "surrogateescape") + terminator
