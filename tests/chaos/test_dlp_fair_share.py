"""One agent's DLP work must not slow another agent's calls (hardening issue, item 7).

The attack: one agent keeps large bodies of digit groups (the costliest text for the recognizers,
every group a phone candidate) in a DLP field, from several connections at once, so the DLP
threads always have its work queued. The bystander, another agent of another tenant, sends small
chats with an e-mail to tokenize. Its median latency is measured on the same gateway without the
attack, then under it; the ratio of the two (measured in one run, so the machine's load is the
same for both) must stay at most 2. The attack's calls are checked to be really in flight during
the whole measurement and to succeed: the DLP work was done, not refused.

The CI form runs a short attack; the `chaos_full` form the issue's figures: bodies of ~450 KB of
digit groups (the most the default `dlp.max_call_chars` lets through), and more bystander calls.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.chaos import harness
from tests.chaos.faults import FaultVendor
from tests.chaos.harness import CHAT, EMAIL, agent, code_of, send
from tests.chaos.report import ChaosReport
from tests.clients import chat, client
from tests.fakes import PKI
from tests.processes import GatewayProcess

MAX_RATIO = 2.0


def digit_groups(rng: random.Random, chars: int) -> str:
    """Random four-digit groups separated by spaces: phone-number candidates everywhere."""
    groups = (f"{rng.randrange(10_000):04d}" for _ in range(chars // 5 + 1))
    return " ".join(groups)[:chars]


@dataclass
class Attack:
    """`connections` threads of one agent, each sending big DLP bodies until stopped."""

    report: ChaosReport
    gw: GatewayProcess
    token: str
    body_chars: int
    messages: int
    connections: int
    spans: list[tuple[float, float, str]] = field(default_factory=list)
    answered: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Attack:
        for seed in range(self.connections):
            t = threading.Thread(target=self._flood, args=(seed,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _flood(self, seed: int) -> None:
        rng = random.Random(seed)
        with client(self.gw, self.token, timeout=120) as c:
            while not self._stop.is_set():
                start = time.monotonic()
                body = {"model": "gpt-4o-mini", "messages": [
                    {"role": "user", "content": digit_groups(rng, self.body_chars)} for _ in range(self.messages)
                ]}
                r = send(self.report, c, "POST", CHAT, json=body)
                self.spans.append((start, time.monotonic(), code_of(r)))
                self.answered.set()

    def covered(self, start: float, end: float) -> bool:
        """Whether some attack call was in flight at every moment of [start, end]."""
        reach = start
        for s, e, _ in sorted(self.spans):
            if s > reach:
                return False
            reach = max(reach, e)
            if reach >= end:
                return True
        return False


def bystander_latencies(report: ChaosReport, gw: GatewayProcess, token: str, calls: int, tag: str) -> list[float]:
    """Small chats, each new text (no memo hit), each with an e-mail that must leave tokenized."""
    out = []
    with client(gw, token) as c:
        for i in range(calls):
            start = time.monotonic()
            r = send(report, c, "POST", CHAT, json=chat(f"{tag} follow-up {i}: please mail {EMAIL} the summary"))
            out.append(time.monotonic() - start)
            assert r.status_code == 200, code_of(r)
    return out


def run_case(
    report: ChaosReport, gw: GatewayProcess, fault_vendor: FaultVendor, body_chars: int, messages: int, calls: int
) -> None:
    attacker = agent(gw, "chatter", sub=f"dlp-flood-{body_chars}")
    bystander = gw.token(sub=f"bystander-{body_chars}", role="chatter", tenant="other", scopes=("*",))
    expected = f"bystander p50 under attack <= {MAX_RATIO:g}x its p50 without"
    fault = f"DLP flood: {messages} x {body_chars // 1000} K chars of digit groups per call, 3 connections, one agent"
    with report.case(fault, expected) as case:
        bystander_latencies(report, gw, bystander, 3, "warm-up")
        quiet = statistics.median(bystander_latencies(report, gw, bystander, calls, "quiet"))
        with Attack(report, gw, attacker, body_chars, messages, connections=3) as attack:
            # Measured in the steady state: the DLP children start on the first large job (~2.5 s,
            # once per gateway), so the bystander is timed from the attack's first answer on.
            assert attack.answered.wait(timeout=120), "no attack call was answered"
            start = time.monotonic()
            loud = statistics.median(bystander_latencies(report, gw, bystander, calls, "loud"))
            end = time.monotonic()
        codes = [code for _, _, code in attack.spans]
        took = statistics.median(e - s for s, e, _ in attack.spans)
        case.observed = (
            f"p50 {quiet * 1000:.0f} ms -> {loud * 1000:.0f} ms ({loud / quiet:.2f}x); "
            f"attack: {len(codes)} calls, p50 {took:.1f} s"
        )
        assert attack.covered(start, end), "the attack was not in flight during the whole measurement"
        assert set(codes) == {"200"}, codes
        assert all(EMAIL not in s.body.decode() for s in fault_vendor.seen())
        assert loud <= MAX_RATIO * quiet, case.observed


@pytest.fixture(scope="module")
def dlp_gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, fault_vendor_server: FaultVendor) -> Iterator[GatewayProcess]:
    """One gateway for the module (a start costs seconds). Its max_body lets the oversized texts reach
    DLP's own limit; the floods' bodies are far under either. Every case has agents of its own."""
    gw = harness.launch(tmp_path_factory.mktemp("dlp-fair-share"), pki, fault_vendor_server, max_body="8MiB")
    yield gw
    harness.retire(gw)


def test_dlp_flood_leaves_a_bystander_fast(dlp_gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    run_case(report, dlp_gw, fault_vendor, body_chars=40_000, messages=1, calls=15)


@pytest.mark.chaos_full
def test_dlp_flood_at_the_call_limit_leaves_a_bystander_fast(dlp_gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    gw = dlp_gw
    # One message holds at most dlp.max_field_chars; a call's limit is nearly filled with several.
    run_case(report, gw, fault_vendor, body_chars=95_000, messages=4, calls=40)


def test_oversized_dlp_text_is_refused_before_any_work(dlp_gw: GatewayProcess, fault_vendor: FaultVendor, report: ChaosReport) -> None:
    gw = dlp_gw
    token = agent(gw, "chatter", sub="dlp-oversize")
    rng = random.Random(7)
    sizes = sorted(rng.randrange(100_001, 2_500_000) for _ in range(4)) + [1_000_001]
    with report.case("DLP fields over dlp.max_field_chars (up to 2.5 M chars)", "413 body_too_large, fast, nothing sent") as case:
        seen = len(fault_vendor.seen())
        with client(gw, token) as c:
            results = []
            for n in sizes:
                start = time.monotonic()
                r = send(report, c, "POST", CHAT, json=chat(digit_groups(rng, n)))
                results.append((code_of(r), time.monotonic() - start))
        case.observed = ", ".join(f"{n // 1000} K: {code} in {t:.2f} s" for n, (code, t) in zip(sizes, results, strict=True))
        assert [code for code, _ in results] == ["413 body_too_large"] * len(sizes)
        assert len(fault_vendor.seen()) == seen
