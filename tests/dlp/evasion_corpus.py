"""Generated, seeded corpora for the DLP evasion classes: values split by any separator, spaced
and worded e-mail addresses, encoded values, and the PII-free text they must not touch.

Values come from `user_corpus.Gen` (every card network, issued-range SSNs, IBANs of five countries,
valid US phones); only their digits are kept and regrouped here, each gap drawn on its own from
`GAPS`, so one value mixes tabs, newlines, Unicode spaces and dashes as no template did; one in ten
is written digit by digit.
"""

from __future__ import annotations

import base64
import random
import string
import uuid

from tests.dlp.user_corpus import Gen, Gold, Sample

# Between two groups of digits: ASCII and Unicode spaces (Zs), line breaks, every kind of dash
# (Pd) and the minus sign, dots and slashes, with or without spaces around, zero-width joiners.
GAPS = (
    " ", "-", ".", "/", "\t", "\n", "\r\n", "  ", "\u00a0", "\u2009", "\u202f", "\u3000", "\u2007",
    " - ", " \u2013 ", "\u2011", "\u2014", "\u2212", "--", "\u200b", " \u200b", "\t-\t", " / ",
)
# Underscores join the groups of an identifier (`batch_310_1490`) as often as a card's: cards and
# IBANs only (their checksums rule out identifiers).
CHECKSUMMED_GAPS = (*GAPS, "_")
# Phones and IBANs are grouped by the recognizers' own rules, so an invisible character as the only
# gap joins two groups into one of a length no grouping has (a known miss, README "Not caught").
VISIBLE_GAPS = tuple(g for g in GAPS if g != "\u200b")
SSN_GAPS = (" ", "-", ".", "/", "\t", "\u00a0", "\u2009", " - ", "\u2013", "\u2212", "--", "\u200b-")
NUMERIC = frozenset({"CREDIT_CARD", "US_SSN", "IBAN_CODE", "PHONE_NUMBER"})


def _regroup(rng: random.Random, digits: str, sizes: list[int], gaps: tuple[str, ...]) -> str:
    out, pos = [], 0
    for i, size in enumerate(sizes):
        if i:
            out.append(rng.choice(gaps))
        out.append(digits[pos : pos + size])
        pos += size
    return "".join(out)


def split_value(gen: Gen, kind: str) -> str:
    """A `kind` value with each gap between its groups drawn from `GAPS` (SSNs: `SSN_GAPS`)."""
    rng = gen.rng
    raw = "".join(c for c in gen.value(kind) if c.isalnum())
    if kind != "IBAN_CODE" and rng.random() < 0.1:  # digit by digit, one kind of gap
        return rng.choice([" ", "-", "."]).join(raw[-10:] if kind == "PHONE_NUMBER" else raw)
    if kind == "CREDIT_CARD":
        n = len(raw)
        sizes = [4, 6, 5] if n == 15 else [4] * (n // 4) + ([n % 4] if n % 4 else [])
        return _regroup(rng, raw, sizes, CHECKSUMMED_GAPS)
    if kind == "US_SSN":
        return _regroup(rng, raw, [3, 2, 4], SSN_GAPS)
    if kind == "IBAN_CODE":
        n = len(raw)
        return _regroup(rng, raw, [4] * (n // 4) + ([n % 4] if n % 4 else []), (*VISIBLE_GAPS, "_"))
    digits = raw[-10:]  # PHONE_NUMBER: the US national number, `+1` or parentheses added at times
    style = rng.choice(["plain", "plus", "parens"])
    if style == "parens":
        return f"({digits[:3]}){rng.choice(VISIBLE_GAPS)}" + _regroup(rng, digits[3:], [3, 4], VISIBLE_GAPS)
    body = _regroup(rng, digits, [3, 3, 4], VISIBLE_GAPS)
    return "+1" + rng.choice(VISIBLE_GAPS) + body if style == "plus" else body


_TEMPLATES = (
    "Charge card {v} for the renewal.",
    "Customer record: {v}; please verify.",
    "Reference on file\n{v}\nthanks",
    "the value is {v}, see ticket #{n}",
)


def split_samples(seed: int, n: int) -> list[Sample]:
    """`n` sentences, each holding one value of a numeric type split by generated gaps."""
    gen = Gen(seed)
    kinds = sorted(NUMERIC)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        value = split_value(gen, kind)
        head, _, tail = gen.rng.choice(_TEMPLATES).partition("{v}")
        head = head.format(n=gen.rng.randint(100, 99999)) if "{n}" in head else head
        tail = tail.format(n=gen.rng.randint(100, 99999)) if "{n}" in tail else tail
        out.append(Sample(head + value + tail, [Gold(len(head), len(head) + len(value), kind)]))
    return out


def spaced_email(gen: Gen) -> str:
    """An address written with spaces around `@` or before a dot, or with `at`/`dot` for them."""
    local, domain = gen.email().split("@")
    labels = domain.split(".")
    rng = gen.rng
    style = rng.choice(["spaced_at", "spaced_dot", "spaced_local", "brackets", "parens", "words", "words_upper", "angles", "mixed"])
    if style == "spaced_local":
        return local.replace(".", rng.choice([" . ", " .", ". "])) + rng.choice([" @ ", "@", "@ "]) + domain
    if style == "spaced_at":
        return local + rng.choice([" @ ", "@ ", " @", "  @  ", "\t@\t"]) + domain
    if style == "spaced_dot":
        return local + rng.choice(["@", " @ ", "@ "]) + rng.choice([" .", " . "]).join(labels)
    if style == "brackets":
        return f"{local} [at] " + " [dot] ".join(labels)
    if style == "parens":
        return f"{local}(at){domain}"
    if style == "words":
        return local.replace(".", " dot ") + " at " + " dot ".join(labels)
    if style == "words_upper":
        return f"{local} AT " + " DOT ".join(labels)
    if style == "angles":
        return f"{local} <at> " + " <dot> ".join(labels)
    return f"{local} {{at}} " + " dot ".join(labels)


def email_samples(seed: int, n: int) -> list[Sample]:
    gen = Gen(seed)
    out = []
    for _ in range(n):
        value = spaced_email(gen)
        head = gen.rng.choice(["Please write to ", "contact: ", "Escalate to ", "cc "])
        tail = gen.rng.choice([" today.", " with the quote", ", thanks", "."])
        out.append(Sample(head + value + tail, [Gold(len(head), len(head) + len(value), "EMAIL_ADDRESS")]))
    return out


def clean_samples(seed: int, n: int) -> list[str]:
    """PII-free text full of numbers and prose about meeting places: dates in every order and
    separator, times, timestamps, order ids, UUIDs, versions, IP addresses with ports, amounts,
    quantities in tables (tab- and newline-separated), and `at`/`@` used as words."""
    rng = random.Random(seed)

    def date() -> str:
        y, m, d = rng.randint(1990, 2035), rng.randint(1, 12), rng.randint(1, 28)
        sep = rng.choice(["-", "/", ".", " "])
        return rng.choice([f"{y}{sep}{m:02d}{sep}{d:02d}", f"{d:02d}{sep}{m:02d}{sep}{y}", f"{m:02d}{sep}{d:02d}{sep}{y}"])

    def piece() -> str:
        kind = rng.randrange(16)
        if kind == 0:
            return f"shipped on {date()} at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        if kind == 1:
            return f"ts {rng.randint(1_000_000_000, 1_900_000_000)} / {rng.randint(1_000_000_000_000, 1_900_000_000_000)} ms"
        if kind == 2:
            return f"order ORD-{rng.randint(2019, 2027)}-{rng.randint(100000, 999999)} and INV-{rng.randint(10**7, 10**9)}"
        if kind == 3:
            return f"id {uuid.UUID(int=rng.getrandbits(128))}"
        if kind == 4:
            return f"version {rng.randint(0, 20)}.{rng.randint(0, 40)}.{rng.randint(0, 9999)}"
        if kind == 5:
            return f"host {rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)} port {rng.randint(1024, 65535)}"
        if kind == 6:
            return f"total USD {rng.randint(1, 999)},{rng.randint(0, 999):03d}.{rng.randint(0, 99):02d} - {rng.randint(1, 99)}%"
        if kind == 7:
            rows = [rng.choice(["\t", "  "]).join(str(rng.randint(0, 99)) for _ in range(4)) for _ in range(3)]
            return "qty\n" + "\n".join(rows)
        if kind == 8:
            return f"{date()}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        if kind == 9:
            return rng.choice(["meet me at the office", "see you at noon. Com is down", "I'm @ home", "ping @ bob later",
                               "rate: 5 @ 10.00", "look at this dot", "we are at acme. Com later", "arrive at 5 pm",
                               "lunch at Rosa's. Then back", "the meeting is at room 4 . Bring", "reply @ noon"])
        if kind == 10:
            return f"pages {rng.randint(1, 300)} - {rng.randint(300, 600)} of {rng.randint(600, 900)}"
        if kind == 11:
            return f"sha {''.join(rng.choices('0123456789abcdef', k=40))}"
        if kind == 12:
            return f"build {rng.randint(1000, 9999)}.{rng.randint(100, 999)} on {date()}"
        if kind == 13:
            return f"{rng.randint(1, 12)}/{rng.randint(1, 28)} - {rng.randint(1, 12)}/{rng.randint(1, 28)}, room {rng.randint(100, 999)}"
        if kind == 14:
            return rng.choice([
                f"code {''.join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(16, 40)))}",
                f"see report_{rng.randint(2019, 2027)}_{rng.randint(1, 12):02d}_{rng.randint(1, 28):02d}.csv at docs.example.com",
                f"the run ended . see user_id at log.txt and v{rng.randint(1, 9)}_{rng.randint(0, 9)}",
                f"batch_{rng.randint(100, 999)}_{rng.randint(1000, 9999)} done @ {rng.randint(1, 12)}pm",
            ])
        return f"{rng.randint(1, 99)} x {rng.randint(1, 999)} = {rng.randint(1, 99999)}"

    return [". ".join(piece() for _ in range(rng.randint(1, 3))) for _ in range(n)]


def encoded(text: str, how: str) -> str:
    """`text` as base64, unpadded base64url or hex."""
    raw = text.encode()
    if how == "base64":
        return base64.b64encode(raw).decode()
    if how == "base64url":
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return raw.hex()
