"""DLP quality on generated data: every card network, names, evasions mapped back to the original.

The thresholds are the issue's goals, measured on seeds the recognizers were never tuned on (the
bench prints the same figures on other seeds).
"""

from __future__ import annotations

import random
import string
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlp.cards import NETWORKS, Network, find_cards, luhn_ok, network_of
from dlp.engine import PiiEngine
from dlp.names import load_names
from dlp.normalize import normalize
from tests.dlp.user_corpus import Gen, corpus, evasions, measure

DEFAULT = frozenset({"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "PERSON"})


@pytest.mark.parametrize("seed", [7, 8])
def test_user_corpus_meets_the_recall_and_precision_goals(engine: PiiEngine, seed: int) -> None:
    pii, clean = corpus(seed, n_pii=300, n_clean=300)
    fig = measure(lambda t: engine.analyze(t, DEFAULT), pii, clean)
    for kind in ("EMAIL_ADDRESS", "US_SSN", "IBAN_CODE", "PHONE_NUMBER", "CREDIT_CARD"):
        assert fig.recall[kind] >= 0.99, (kind, fig.recall[kind])
    assert fig.recall["PERSON"] >= 0.90, fig.recall["PERSON"]
    assert fig.untouched >= 0.98, fig.untouched
    assert all(p >= 0.95 for p in fig.precision.values()), fig.precision


def test_disguised_values_are_still_found(engine: PiiEngine) -> None:
    fig = measure(lambda t: engine.analyze(t, DEFAULT), evasions(9, n=300), [])
    assert set(fig.recall) == {"EMAIL_ADDRESS", "US_SSN", "IBAN_CODE", "PHONE_NUMBER", "CREDIT_CARD"}
    assert all(r >= 0.99 for r in fig.recall.values()), fig.recall


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.name)
@pytest.mark.parametrize("sep", ["", " ", "-", ".", "/"])
def test_every_network_and_separator(network: Network, sep: str) -> None:
    gen = Gen(zlib.crc32(f"{network.name}{sep}".encode()))  # seeded: str hash() varies per process
    for length in network.lengths:
        for lo, hi in network.ranges:
            prefix = str(gen.rng.randint(int(lo), int(hi))).zfill(len(lo))
            body = prefix + "".join(gen.rng.choices(string.digits, k=length - len(prefix) - 1))
            digits = next(body + d for d in string.digits if luhn_ok(body + d))
            bad = next(body + d for d in string.digits if not luhn_ok(body + d))
            grouped = sep.join(digits[i : i + 4] for i in range(0, length, 4))
            text = f"pay with {grouped} today"
            assert network_of(digits) is not None
            assert [text[s:e] for s, e in find_cards(text)] == [grouped]
            assert find_cards(f"pay with {sep.join(bad[i : i + 4] for i in range(0, length, 4))} today") == []


def test_digit_runs_that_are_no_card_stay_text() -> None:
    rng = random.Random(11)
    samples = [str(rng.randint(10**11, 10**19)) for _ in range(2000)]
    rejected = [s for s in samples if not luhn_ok(s)]
    assert all(find_cards(f"order {s} shipped") == [] for s in rejected)
    # Longer runs are identifiers, whatever their digits.
    assert find_cards("ref 41111111111111111111 done") == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["\u200b", "\u2060", "\u00ad", "\ufeff", "\uff10", "\uff19", "\u0663", "  ", "--", "x", "é", "@"]), max_size=8),
    st.integers(0, 10_000),
)
def test_spans_map_back_to_exactly_the_original_characters(engine: PiiEngine, junk: list[str], seed: int) -> None:
    """Whatever noise surrounds and splits a value, the finding covers the original characters."""
    rng = random.Random(seed)
    email = Gen(seed).email()
    hidden = email.replace("@", rng.choice(["@", " [at] ", "%40", "\uff20"]))
    text = "".join(junk) + " write to " + hidden + " please " + "".join(reversed(junk))
    start = text.index(hidden)
    findings = [f for f in engine.analyze(text, frozenset({"EMAIL_ADDRESS"})) if f.entity_type == "EMAIL_ADDRESS"]
    assert [(f.start, f.end) for f in findings] == [(start, start + len(hidden))]


def test_normalized_copy_of_plain_ascii_is_the_text_itself() -> None:
    n = normalize("Order 12 shipped to Berlin on Monday.")
    assert n.text == "Order 12 shipped to Berlin on Monday." and n.starts is None
    assert n.original_span(0, 5) == (0, 5)


def test_names_data_with_a_wrong_hash_is_refused(tmp_path: Path) -> None:
    """A copy of the `names` package whose surname list was edited: the engine refuses to build."""
    import names as real

    fake = tmp_path / "names"
    fake.mkdir()
    src = Path(real.__file__).parent
    for f in ("__init__.py", "dist.male.first", "dist.female.first"):
        (fake / f).write_bytes((src / f).read_bytes())
    (fake / "dist.all.last").write_bytes((src / "dist.all.last").read_bytes().replace(b"SMITH ", b"SMYTH ", 1))
    code = "from dlp.config import DlpConfig\nfrom dlp.engine import build_engine\nbuild_engine(DlpConfig())"
    env_path = f"{tmp_path}:{Path(__file__).resolve().parents[2]}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": env_path}, timeout=120)
    assert done.returncode != 0
    assert "dist.all.last has sha256" in done.stderr and "refusing it" in done.stderr


def test_streets_named_after_people_are_no_persons(engine: PiiEngine) -> None:
    """A given name followed by a street type is a street (`Oak St`, `Grant Ave`, `Jackson Square`),
    in SerpAPI queries and shipping addresses: 6 in 300 generated local searches were tokenized as
    PERSON. Generated from the given names the recognizer itself knows, every street type, with
    and without its dot: zero findings; a name beside a street is still one."""
    rng = random.Random(131)
    given = sorted(load_names().given)
    kinds = ["St", "St.", "Street", "Ave", "Ave.", "Avenue", "Rd", "Road", "Blvd", "Boulevard", "Dr.", "Drive", "Hwy", "Highway", "Pkwy", "Parkway", "Ln", "Ct", "Pl", "Plaza", "Sq", "Square", "Ter", "Terrace"]
    queries = [
        f"{rng.choice(['restaurants near', 'ship to', 'parking on', 'hotels by'])} {rng.randrange(1, 9999)} {rng.choice(given).title()} {rng.choice(kinds)} {rng.randrange(10000, 99999)}"
        for _ in range(300)
    ]
    person = frozenset({"PERSON"})
    assert [q for q in queries if engine.analyze(q, person)] == []
    named = ["ask Grant Smith today", "Diane Lane starred", "met Jackson Brown on Oak St", "Dr. Ava Ward Jr called"]
    assert [len(engine.analyze(t, person)) for t in named] == [1, 1, 1, 1]
