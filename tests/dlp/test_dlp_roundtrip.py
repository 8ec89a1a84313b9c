"""Tokenize on the way out, restore on the way back: bodies, streams, scopes, the API logic."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from dlp_corpus import card, email, iban, phone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlp.api import detokenize_request
from dlp.config import PATTERN_ENTITIES
from dlp.engine import PiiEngine
from dlp.inbound import Detokenizer, SseDetokenizer, TextStreamDetokenizer
from dlp.outbound import Tokenizer, scope_key
from dlp.tokens import TOKEN_RE
from dlp.vault import SqliteVault, StoreUnavailable
from gateway.errors import Refusal
from gateway.pipeline.dlp import OpenAiStreamShape

ALL = frozenset(PATTERN_ENTITIES)
A, B = scope_key("acme", "agent-a"), scope_key("acme", "agent-b")
MAIL, PHONE, CARD = "jane.roe@example.com", "+1 212 555 0199", "4111 1111 1111 1111"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def tok(engine: PiiEngine, sqlite_vault: SqliteVault) -> Tokenizer:
    return Tokenizer(engine, sqlite_vault, memo_size=256, workers=2)


@pytest.fixture
def detok(sqlite_vault: SqliteVault) -> Detokenizer:
    return Detokenizer(sqlite_vault)


def chat(*messages: str) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": m} for m in messages]}


def test_body_fields_only_and_all_string_shapes(tok: Tokenizer) -> None:
    body = {
        "messages": [
            {"role": "user", "content": f"mail {MAIL}"},
            {"role": "user", "content": [{"type": "text", "text": f"card {CARD}"}]},
        ],
        "input": [f"call {PHONE}", "nothing here"],
        "user": MAIL,  # not a DLP field: left alone
    }
    summary = run(tok.tokenize_body(body, ("messages[*].content", "input"), ALL, A))
    dumped = json.dumps(body)
    assert MAIL not in dumped.replace(f'"user": "{MAIL}"', "") and CARD not in dumped and PHONE not in dumped
    assert body["user"] == MAIL
    assert summary.counts == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    assert MAIL not in repr(summary)


def test_same_value_same_token_in_scope_only(tok: Tokenizer) -> None:
    async def body() -> tuple[str, str, str]:
        a1, _ = await tok.tokenize_text(f"to {MAIL}", ALL, A)
        a2, _ = await tok.tokenize_text(f"again {MAIL}", ALL, A)
        b1, _ = await tok.tokenize_text(f"to {MAIL}", ALL, B)
        return TOKEN_RE.search(a1).group(0), TOKEN_RE.search(a2).group(0), TOKEN_RE.search(b1).group(0)  # type: ignore[union-attr]

    t1, t2, t3 = run(body())
    assert t1 == t2 != t3


def test_resent_history_hits_the_memo(tok: Tokenizer) -> None:
    async def body() -> tuple[int, int]:
        first = chat(f"I am {MAIL}", "hello")
        await tok.tokenize_body(first, ("messages[*].content",), ALL, A)
        second = chat(f"I am {MAIL}", "hello", f"my card is {CARD}")
        summary = await tok.tokenize_body(second, ("messages[*].content",), ALL, A)
        return summary.memo_hits, summary.fields_scanned

    assert run(body()) == (2, 3)


def test_tokens_already_in_text_are_kept(tok: Tokenizer) -> None:
    async def body() -> None:
        once, _ = await tok.tokenize_text(f"x {MAIL} y", ALL, A)
        twice, summary = await tok.tokenize_text(once, ALL, A)
        assert twice == once and summary.total == 0

    run(body())


def test_vault_down_fails_closed(engine: PiiEngine, sqlite_vault: SqliteVault) -> None:
    async def body() -> None:
        await sqlite_vault.close()
        with pytest.raises(StoreUnavailable):
            await Tokenizer(engine, sqlite_vault).tokenize_body(chat(f"x {MAIL}"), ("messages[*].content",), ALL, A)

    run(body())


_filler = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "Zs")), max_size=30)


@st.composite
def text_with_pii(draw: st.DrawFn) -> str:
    rng = random.Random(draw(st.integers(0, 2**32)))
    parts = draw(st.lists(st.one_of(_filler, st.sampled_from(["pii"] * 3)), min_size=1, max_size=8))
    gens = [email, phone, card, iban]
    return " ".join(rng.choice(gens)(rng) if p == "pii" else p for p in parts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=text_with_pii())
def test_roundtrip_property(tok: Tokenizer, detok: Detokenizer, text: str) -> None:
    async def body() -> tuple[str, str]:
        out, _ = await tok.tokenize_text(text, ALL, A)
        back, _ = await detok.restore_text(out, A, ALL)
        return out, back

    out, back = run(body())
    assert back == text
    assert not any(v in out for v in (MAIL, CARD))


def test_reveal_types_and_foreign_scope(tok: Tokenizer, detok: Detokenizer) -> None:
    async def body() -> None:
        out, _ = await tok.tokenize_text(f"{MAIL} / {CARD}", ALL, A)
        only_mail, s1 = await detok.restore_text(out, A, frozenset({"EMAIL_ADDRESS"}))
        assert only_mail.startswith(MAIL) and CARD not in only_mail
        assert s1.restored == {"EMAIL_ADDRESS": 1} and s1.withheld == 1
        foreign, s2 = await detok.restore_text(out, B, ALL)
        assert foreign == out and s2.total == 0 and s2.withheld == 2

    run(body())


def test_restore_json_and_bytes(tok: Tokenizer, detok: Detokenizer) -> None:
    async def body() -> None:
        out, _ = await tok.tokenize_text(f"reply to {MAIL}", ALL, A)
        response = {"choices": [{"message": {"role": "assistant", "content": f'He said "{out}"'}}]}
        data, summary = await detok.restore_json(response, A, ALL)
        assert data["choices"][0]["message"]["content"] == f'He said "reply to {MAIL}"'
        raw = json.dumps(response).encode()
        restored, _ = await detok.restore_json_bytes(raw, A, ALL)
        assert MAIL in json.loads(restored)["choices"][0]["message"]["content"]
        untouched, _ = await detok.restore_json_bytes(b'{"a": 1}', A, ALL)
        assert untouched == b'{"a": 1}'

    run(body())


def sse(content: str | None, finish: str | None = None, index: int = 0) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def contents(stream: bytes) -> str:
    out = ""
    for block in stream.split(b"\n\n"):
        if block.startswith(b"data: {"):
            for choice in json.loads(block[6:])["choices"]:
                out += choice["delta"].get("content") or ""
    return out


def test_sse_token_split_across_events_at_every_offset(tok: Tokenizer, detok: Detokenizer) -> None:
    async def body() -> None:
        out, _ = await tok.tokenize_text(MAIL, ALL, A)
        text = f"Sure, I wrote to {out} today."
        for cut in range(1, len(text)):
            stream = SseDetokenizer(detok, A, ALL, OpenAiStreamShape())
            got = await stream.feed(sse(text[:cut]))
            got += await stream.feed(sse(text[cut:]))
            got += await stream.feed(sse(None, "stop"))
            got += await stream.feed(b"data: [DONE]\n\n")
            got += await stream.finish()
            assert contents(got) == f"Sure, I wrote to {MAIL} today.", cut
            assert got.endswith(b"data: [DONE]\n\n")

    run(body())


def test_sse_held_tail_flushed_at_finish_and_done(tok: Tokenizer, detok: Detokenizer) -> None:
    async def body() -> None:
        stream = SseDetokenizer(detok, A, ALL, OpenAiStreamShape())
        got = await stream.feed(sse("a cat"))
        assert contents(got) == "a ca"  # the trailing "t" could start a token
        got += await stream.feed(b"data: [DONE]\n\n")
        assert contents(got) == "a cat"

    run(body())


def test_sse_first_event_without_prefix_is_emitted_at_once(detok: Detokenizer) -> None:
    async def body() -> None:
        stream = SseDetokenizer(detok, A, ALL, OpenAiStreamShape())
        first = sse("Hello there!")
        assert await stream.feed(first) == first  # untouched bytes, immediately
        assert await stream.feed(b": keep-alive\n\n") == b": keep-alive\n\n"

    run(body())


def test_sse_tool_call_arguments(tok: Tokenizer, detok: Detokenizer) -> None:
    async def body() -> None:
        out, _ = await tok.tokenize_text(MAIL, ALL, A)
        args = json.dumps({"to": out})
        stream = SseDetokenizer(detok, A, ALL, OpenAiStreamShape())
        got = b""
        for part in (args[:12], args[12:30], args[30:]):
            ev = {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": part}}]},
                        "finish_reason": None,
                    }
                ]
            }
            got += await stream.feed(b"data: " + json.dumps(ev).encode() + b"\n\n")
        got += await stream.feed(sse(None, "tool_calls")) + await stream.finish()
        joined = ""
        for block in got.split(b"\n\n"):
            if block.startswith(b"data: {"):
                for c in json.loads(block[6:])["choices"][0]["delta"].get("tool_calls", []):
                    joined += c["function"]["arguments"]
        assert json.loads(joined) == {"to": MAIL}

    run(body())


def test_sse_responses_function_call_arguments_split_at_every_offset(tok: Tokenizer, detok: Detokenizer) -> None:
    """Responses API: JSON arguments streamed as `function_call_arguments.delta` fragments."""

    def event(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, "output_index": 1, **fields}).encode() + b"\n\n"

    async def body() -> None:
        out, _ = await tok.tokenize_text(MAIL, ALL, A)
        args = json.dumps({"to": out, "cc": out})
        for cut in range(1, len(args), 3):
            stream = SseDetokenizer(detok, A, ALL, OpenAiStreamShape())
            got = b""
            for part in (args[:cut], args[cut:]):
                got += await stream.feed(event("response.function_call_arguments.delta", item_id="fc_1", delta=part))
            got += await stream.feed(event("response.function_call_arguments.done", item_id="fc_1", arguments=args))
            got += await stream.finish()
            deltas = [json.loads(b.split(b"data: ", 1)[1]) for b in got.split(b"\n\n") if b"data: " in b]
            joined = "".join(d["delta"] for d in deltas if d["type"].endswith(".delta"))
            assert json.loads(joined) == {"to": MAIL, "cc": MAIL}, cut
            assert json.loads(deltas[-1]["arguments"]) == {"to": MAIL, "cc": MAIL}

    run(body())


def test_sse_chunking_inside_events(tok: Tokenizer, detok: Detokenizer) -> None:
    async def body() -> None:
        out, _ = await tok.tokenize_text(PHONE, ALL, A)
        raw = sse(f"call {out[:9]}") + sse(f"{out[9:]} now") + sse(None, "stop") + b"data: [DONE]\n\n"
        stream = SseDetokenizer(detok, A, ALL, OpenAiStreamShape())
        got = b""
        for i in range(0, len(raw), 7):
            got += await stream.feed(raw[i : i + 7])
        got += await stream.finish()
        assert contents(got) == f"call {PHONE} now"

    run(body())


def test_text_stream_split_token(tok: Tokenizer, detok: Detokenizer) -> None:
    async def body() -> None:
        out, _ = await tok.tokenize_text(f"é {CARD} ü", ALL, A)
        raw = out.encode()
        for cut in range(1, len(raw)):
            stream = TextStreamDetokenizer(detok, A, ALL)
            got = await stream.feed(raw[:cut]) + await stream.feed(raw[cut:]) + await stream.finish()
            assert got.decode() == f"é {CARD} ü"
        stream = TextStreamDetokenizer(detok, A, ALL)
        assert await stream.feed(b"no token here.") == b"no token here."

    run(body())


def test_api_logic(tok: Tokenizer, detok: Detokenizer) -> None:
    async def body() -> None:
        out, _ = await tok.tokenize_text(MAIL, ALL, A)
        reply, summary = await detokenize_request({"text": f"to {out}"}, detok, A, ALL)
        assert reply == {"text": f"to {MAIL}"} and summary.restored == {"EMAIL_ADDRESS": 1}
        reply, _ = await detokenize_request({"json": {"to": [out]}}, detok, A, ALL)
        assert reply == {"json": {"to": [MAIL]}}
        reply, summary = await detokenize_request({"text": out}, detok, B, ALL)
        assert reply == {"text": out, "withheld": {"unknown": {"EMAIL_ADDRESS": 1}}} and summary.withheld == 1
        made_up = "tok_PERSON_" + "b" * 20
        text = f"{out} {out} {made_up}"
        reply, _ = await detokenize_request({"text": text}, detok, A, frozenset({"PHONE_NUMBER"}))
        assert reply == {"text": text, "withheld": {"type_not_revealable": {"EMAIL_ADDRESS": 2, "PERSON": 1}}}
        reply, _ = await detokenize_request({"text": text}, detok, A, frozenset({"EMAIL_ADDRESS", "PERSON"}))
        assert reply == {"text": f"{MAIL} {MAIL} {made_up}", "withheld": {"unknown": {"PERSON": 1}}}
        for bad in ([], {"text": 1}, {"text": "a", "json": 1}, {"other": 1}):
            with pytest.raises(Refusal) as info:
                await detokenize_request(bad, detok, A, ALL)
            assert info.value.code == "malformed_body"

    run(body())
