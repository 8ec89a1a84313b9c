"""In-process DLP micro-benchmark (not a test): what tokenizing a request adds, in ms.

    python bench/dlp_bench.py [--runs N]

Rows: a 2 KB chat request with 5 PII values of five types, a name among them (new text each run, so nothing is memoized), the same
with PERSON off (what names cost), the same conversation resent with one new message, the resent
history alone (what a turn costs beyond its new message), and a 20 KB request. SQLite vault in a
temporary state dir; the gateway's default `dlp:` (pattern recognizers and census names).

Then the figures of the user-shaped corpus (`tests/dlp/user_corpus.py`, seeded, generated anew):
recall per type (the raw value did not survive), precision per type, the share of PII-free
business sentences left untouched, and recall on disguised values.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlp.config import DlpConfig
from dlp.crypto import Sealer, load_master_key
from dlp.engine import build_engine
from dlp.outbound import Tokenizer, scope_key
from dlp.vault import open_vault
from tests.dlp.user_corpus import Figures, corpus, evasions, measure

ENTITIES = frozenset(DlpConfig().tokenize)
CORPUS_SEEDS = (101, 202, 303)
FIELDS = ("messages[*].content",)
WORDS = (
    "the invoice order shipment was approved on for customer account please review attached total "
    "amount due quarter revenue forecast meeting notes status update ticket priority team next week"
).split()
PII = ["ana.lopez@example.com", "+1 415 555 0134", "Ana Lopez", "4111 1111 1111 1111", "DE89370400440532013000", "536-22-4198"]


def prose(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(WORDS) if rng.random() > 0.1 else str(rng.randint(2, 99999)))
    return " ".join(out)


def message_with_pii(rng: random.Random, chars: int, n_pii: int, first: int = 0) -> str:
    """Prose holding `n_pii` values, of the types in `PII` in turn from index `first`."""
    parts = [prose(rng, chars // (n_pii + 1)) for _ in range(n_pii + 1)]
    return " ".join(p + (f" {PII[(first + i) % len(PII)]}" if i < n_pii else "") for i, p in enumerate(parts))


async def timed(
    tokenizer: Tokenizer, make: Callable[[int], dict[str, Any]], runs: int, entities: frozenset[str] = ENTITIES
) -> list[tuple[float, float]]:
    """(wall ms, process CPU ms) per run: on a shared machine the wall time carries other
    processes' load; CPU time is what DLP itself spent, in all of its threads."""
    out = []
    for i in range(runs):
        body = make(i)
        t, c = time.perf_counter(), time.process_time()
        await tokenizer.tokenize_body(body, FIELDS, entities, scope_key("bench", "agent"))
        out.append(((time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000))
    return out


async def main(runs: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="dlp-bench-"))
    config = DlpConfig()
    t = time.perf_counter()
    engine = build_engine(config)
    build_ms = (time.perf_counter() - t) * 1000
    vault = open_vault(None, state, Sealer.from_master(load_master_key(None, state)), config.token_ttl)
    tokenizer = Tokenizer(engine, vault, memo_size=config.memo_size, workers=config.workers)

    def chat_2k(i: int) -> dict:
        msgs = [message_with_pii(random.Random(i * 7 + k), 400, 1, first=k) for k in range(5)]
        return {"messages": [{"role": "user", "content": m} for m in msgs]}

    history = chat_2k(10_000)["messages"]

    def resent(i: int) -> dict:
        return {"messages": [*history, {"role": "user", "content": prose(random.Random(i), 300)}]}

    def history_only(i: int) -> dict:
        return {"messages": list(history)}

    def big_20k(i: int) -> dict:
        return {"messages": [{"role": "user", "content": message_with_pii(random.Random(50_000 + i), 20_000, 10)}]}

    await timed(tokenizer, chat_2k, 3)  # warm regex caches
    rows = [
        ("2 KB chat, 5 PII (cold)", await timed(tokenizer, lambda i: chat_2k(100 + i), runs)),
        ("2 KB chat, PERSON off (cold)", await timed(tokenizer, lambda i: chat_2k(500 + i), runs, ENTITIES - {"PERSON"})),
        ("same chat resent + 1 new msg", await timed(tokenizer, resent, runs)),
        ("resent history only (memo)", await timed(tokenizer, history_only, runs)),
        ("20 KB request, 10 PII (cold)", await timed(tokenizer, big_20k, max(5, runs // 4))),
    ]
    print(f"engine build {build_ms:.0f} ms; sizes: 2 KB={sum(len(m['content']) for m in chat_2k(0)['messages'])} chars")
    print(f"{'case':32} {'p50 ms':>8} {'p95 ms':>8} {'cpu p50':>8} {'runs':>5}")
    for name, samples in rows:
        wall = [w for w, _ in samples]
        p95 = statistics.quantiles(wall, n=20)[-1] if len(wall) >= 2 else wall[0]
        cpu = statistics.median(c for _, c in samples)
        print(f"{name:32} {statistics.median(wall):8.2f} {p95:8.2f} {cpu:8.2f} {len(samples):5}")
    tokenizer.close()
    await vault.close()
    print_corpus(lambda text: engine.analyze(text, ENTITIES))


def print_corpus(analyze: Callable[[str], Any]) -> None:
    """The user-shaped corpus figures, pooled over `CORPUS_SEEDS`."""
    plain: list[Figures] = []
    hidden: list[Figures] = []
    for seed in CORPUS_SEEDS:
        pii, clean = corpus(seed)
        plain.append(measure(analyze, pii, clean))
        hidden.append(measure(analyze, evasions(seed), []))
    print(f"\nuser-shaped corpus, seeds {CORPUS_SEEDS} (tests/dlp/user_corpus.py)")
    print(f"{'type':16} {'n':>5} {'recall':>7} {'precision':>9} {'evasion recall':>15}")
    for kind in sorted(plain[0].recall):
        n = sum(f.counts[kind] for f in plain)
        recall = sum(f.recall[kind] * f.counts[kind] for f in plain) / n
        precision = statistics.mean(f.precision.get(kind, 1.0) for f in plain)
        ev = [f.recall[kind] * f.counts[kind] for f in hidden if kind in f.recall]
        ev_n = sum(f.counts[kind] for f in hidden if kind in f.counts)
        ev_text = f"{sum(ev) / ev_n:.3f}" if ev_n else "-"
        print(f"{kind:16} {n:5} {recall:7.3f} {precision:9.3f} {ev_text:>15}")
    print(f"PII-free business sentences untouched: {statistics.mean(f.untouched for f in plain):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    asyncio.run(main(parser.parse_args().runs))
