"""How much text one call may bring to DLP, through the real proxy (hardening issue, item 7).

Over `dlp.max_field_chars` in one value or `dlp.max_call_chars` in all of a call's DLP fields, the
call is refused with 413 `body_too_large` before any scanning, and nothing reaches the vendor.
Text over spaCy's 1,000,000-character limit, once allowed by the config, is scanned in windows and
tokenized like any other (it was a 500).
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from tests.clients import client, error_of
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

CHAT = "https://api.openai.com/v1/chat/completions"
TOKEN = re.compile(r"tok_EMAIL_ADDRESS_[a-z2-7]{20}")
FIELD, CALL = 3_000, 8_000
WORDS = ["the", "quarterly", "report", "lists", "open", "invoices", "renewals", "and", "seat", "counts", "for", "each", "region"]


def prose(rng: random.Random, chars: int) -> str:
    words = rng.choices(WORDS, k=chars // 4 + 1)  # each word and its space is at least 4 characters
    return " ".join(words)[:chars]


def sizes_for(rng: random.Random, kind: int) -> list[int]:
    """Message sizes aimed at one outcome (0: a field over, 1: the call over, 2: under both), with
    values at and next to each limit; the test still judges every call by the sizes alone."""
    if kind == 0:
        return [rng.randrange(1, FIELD + 1) for _ in range(rng.randrange(0, 3))] + [FIELD + rng.choice((1, rng.randrange(2, 100)))]
    sizes: list[int] = []
    while sum(sizes) <= CALL:
        sizes.append(rng.choice((FIELD, rng.randrange(1_500, FIELD + 1))))
    if kind == 2:
        sizes[-1] = max(1, sizes[-1] - (sum(sizes) - CALL) - rng.choice((0, rng.randrange(1, 50))))
    return sizes


def body_of(contents: list[str]) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": c} for c in contents]}


def scanned_chars(body: Any) -> int:
    """What DLP reads of a call: every string the agent sends (the model's name and the roles too),
    and every distinct key below the top level (the top level's are the action's own fields)."""
    strings, keys, stack = 0, set(), list(body.values())
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            strings += len(node)
        elif isinstance(node, dict):
            keys.update(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return strings + sum(map(len, keys))


def post(gw: GatewayProcess, contents: list[str], sub: str = "dlp-limits"):
    body = body_of(contents)
    with client(gw, gw.token(sub=sub, role="assistant", tenant="acme", scopes=("*",)), timeout=120) as c:
        return c.post(CHAT, json=body)


@pytest.fixture(scope="module")
def small_limits(tmp_path_factory, pki: PKI, vendor_server: FakeVendor):
    dlp = {"max_field_chars": FIELD, "max_call_chars": CALL}
    with GatewayProcess(tmp_path_factory.mktemp("dlp-limits"), vendor_settings(pki, vendor_server, dlp=dlp)).start() as gw:
        yield gw


def test_calls_over_the_field_or_call_limit_are_refused_and_the_rest_pass(small_limits: GatewayProcess, vendor: FakeVendor) -> None:
    """Generated calls around both limits: refused exactly when a limit is passed, never a 500."""
    rng = random.Random(11)
    outcomes = {"field": 0, "call": 0, "sent": 0}
    for i in range(24):
        sizes = sizes_for(rng, i % 3)
        email = f"person{i}@example.org"
        contents = [f"{email} " + prose(rng, n - len(email) - 1) if n > len(email) + 1 else "x" * n for n in sizes]
        before = len(vendor.received)
        r = post(small_limits, contents)
        over_field, over_call = max(sizes) > FIELD, scanned_chars(body_of(contents)) > CALL
        if over_field or over_call:
            err = error_of(r)
            assert (r.status_code, err["code"]) == (413, "body_too_large"), r.text[:300]
            assert ("dlp.max_field_chars" if over_field else "dlp.max_call_chars") in err["message"]
            assert email not in r.text and len(vendor.received) == before
            outcomes["field" if over_field else "call"] += 1
        else:
            assert r.status_code == 200, r.text[:300]
            assert email not in vendor.received[-1].body.decode()
            outcomes["sent"] += 1
    assert min(outcomes.values()) >= 3, outcomes  # the generator hit every branch


@pytest.mark.chaos_full  # ~9 s; windows and their edges are in the default run in-process (tests/dlp/test_chunks.py)
def test_text_over_a_million_characters_is_scanned_in_windows(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    dlp = {"max_field_chars": 2_000_000, "max_call_chars": 2_000_000}
    gw = make_gateway(vendor_settings(pki, vendor, max_body="8MiB", dlp=dlp))
    rng = random.Random(12)
    # E-mails at random places and astride window edges (windows of 4000 every 3680 characters).
    edges = [3_680 * k + d for k in range(1, 300, 23) for d in (0, 320)]
    starts = sorted({*(rng.randrange(1_100_000) for _ in range(20)), *(e - 10 for e in edges)})
    emails, parts, length = [], [], 0
    for i, start in enumerate(starts):
        if start - length < 2:
            continue
        email = f"mail{i}.owner@example.org"
        parts += [prose(rng, start - length - 1), " ", email, " "]
        length = start + len(email) + 1
        emails.append(email)
    text = "".join(parts) + prose(rng, 1_100_000 - length)
    assert len(text) > 1_000_000
    r = post(gw, [text], sub="dlp-million")
    assert r.status_code == 200, r.text[:300]
    sent = vendor.received[-1].json()["messages"][0]["content"]
    assert not [e for e in emails if e in sent]
    assert len(TOKEN.findall(sent)) == len(emails)
