"""Chunked analysis finds what whole-text analysis finds, and the DLP pool takes turns between agents.

The corpus is generated (seeded user-like PII in business sentences), the window size is small so
that hundreds of values straddle a window edge, and the window offsets are shifted by a random
amount per seed so edges land everywhere.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time

import pytest

from dlp import chunks
from dlp.engine import PiiEngine, PiiFinding
from dlp.fair import FairPool
from tests.dlp.user_corpus import corpus

ALL = frozenset({"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE"})


def chunked(engine: PiiEngine, text: str, size: int) -> tuple[PiiFinding, ...]:
    parts = [(piece, engine.analyze(piece.text, ALL)) for job in chunks.jobs([text], size) for piece in job]
    return chunks.combine(parts, len(text))


@pytest.mark.parametrize("seed", [41, 42, 43, 44, 45, 46])
def test_windows_find_what_the_whole_text_finds(engine: PiiEngine, seed: int) -> None:
    pii, clean = corpus(seed, n_pii=120, n_clean=60)
    samples = pii + clean
    rng = random.Random(seed)
    rng.shuffle(samples)
    # A prefix of random length moves every window edge to somewhere else in the corpus.
    text = "x" * rng.randrange(400) + " " + " ".join(s.text for s in samples)
    whole = engine.analyze(text, ALL)
    assert len(text) > 10 * 1_000 and len(whole) > 100
    spans = lambda fs: {(f.start, f.end, f.entity_type) for f in fs}  # noqa: E731
    assert spans(chunked(engine, text, 1_000)) == spans(whole)


def test_windows_cover_the_text_and_overlap_enough() -> None:
    rng = random.Random(5)
    for _ in range(500):
        length, size = rng.randrange(0, 50_000), rng.randrange(1_000, 10_000)
        ws = chunks.windows(length, size)
        assert ws[0][0] == 0 and ws[-1][1] == length
        assert all(e - s <= size for s, e in ws)
        assert all(b[0] <= a[1] - chunks.OVERLAP for a, b in itertools.pairwise(ws))


def test_short_texts_share_a_job_and_long_ones_are_split() -> None:
    texts = ["a" * 100] * 30 + ["b" * 9_000]
    jobs = chunks.jobs(texts, 4_000)
    assert all(sum(len(p.text) for p in job) <= 4_000 for job in jobs)
    assert len(jobs[0]) == 30  # thirty messages, one job
    rebuilt = "".join(p.text[: 4_000 - chunks.OVERLAP] for job in jobs for p in job if p.index == 30)
    assert rebuilt.startswith("b" * 8_000)


def test_merge_joins_a_value_cut_by_a_window_edge() -> None:
    parts = [PiiFinding(10, 300, "URL", 0.5), PiiFinding(200, 900, "URL", 0.6), PiiFinding(250, 260, "PHONE_NUMBER", 0.4)]
    assert chunks.merge(parts) == (PiiFinding(10, 900, "URL", 0.6),)


def test_pool_takes_turns_between_owners_and_runs_one_job_per_owner() -> None:
    """A flood of one owner's jobs is queued first; a newcomer's job runs next, not after the flood."""
    pool = FairPool(2)
    order: list[str] = []
    running: dict[str, int] = {"flood": 0, "small": 0}
    peak: dict[str, int] = {"flood": 0, "small": 0}
    lock = threading.Lock()

    def job(owner: str) -> str:
        with lock:
            running[owner] += 1
            peak[owner] = max(peak[owner], running[owner])
            order.append(owner)
        time.sleep(0.02)
        with lock:
            running[owner] -= 1
        return owner

    async def scenario() -> list[str]:
        flood = [asyncio.ensure_future(pool.run("flood", lambda: job("flood"))) for _ in range(10)]
        await asyncio.sleep(0.005)
        small = await pool.run("small", lambda: job("small"))
        return [small, *await asyncio.gather(*flood)]

    try:
        results = asyncio.run(scenario())
    finally:
        pool.close()
    assert results == ["small"] + ["flood"] * 10
    assert peak == {"flood": 1, "small": 1}
    assert order.index("small") <= 1  # ran at once, on the thread the flood may not take


def test_pool_delivers_a_jobs_error_to_its_caller() -> None:
    pool = FairPool(1)

    def boom() -> None:
        raise ValueError("no")

    async def scenario() -> None:
        with pytest.raises(ValueError):
            await pool.run("a", boom)
        assert await pool.run("a", lambda: 3) == 3

    try:
        asyncio.run(scenario())
    finally:
        pool.close()
