"""A seeded corpus shaped like users' data, generated (never stored) so no one can tune to it.

Unlike `dlp_corpus.py` (the values the recognizers were written for), this one draws PII the way
it turns up in support tickets and agent chats: person names from Faker in ten locales (a source
the name recognizer does not use), e-mails built from them, US phone numbers in five formats,
Luhn-valid cards of every current network grouped by space, dash, dot, slash or not at all,
issued-range SSNs, IBANs of five countries; each in a business sentence, and PII-free business
sentences full of capitalized words, ids, amounts and dates. `evasions` rewrites the same values
as an agent hiding them would (full-width digits, zero-width characters, `[at]`, doubled
separators, lower-case IBANs).

`measure` reports, per type, recall as "the raw value did not survive" (the whole span is covered
by findings of any type, which is what reaches the vendor) and precision as the share of a type's
findings that touch some real PII; and the share of PII-free sentences left untouched.
"""

from __future__ import annotations

import random
import string
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import phonenumbers
from faker import Faker

from dlp.cards import Network, luhn_ok
from dlp.engine import PiiFinding

# The networks cards are drawn from: the corpus's own table, not the recognizer's (`dlp.cards`), so
# a range the recognizer lacks is still drawn, and a change to the recognizer's table does not
# reseed every corpus. Networks' current ranges (ISO/IEC 7812 IINs, 2025).
CARD_NETWORKS: tuple[Network, ...] = (
    Network("visa", (("4", "4"),), (13, 16, 19)),
    Network("mastercard", (("51", "55"), ("2221", "2720")), (16,)),
    Network("amex", (("34", "34"), ("37", "37")), (15,)),
    Network("discover", (("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")), (16, 17, 18, 19)),
    Network("unionpay", (("62", "62"), ("81", "81")), (16, 17, 18, 19)),
    Network("jcb", (("3528", "3589"),), (16, 17, 18, 19)),
    Network(
        "maestro",
        (("5018", "5018"), ("5020", "5020"), ("5038", "5038"), ("5893", "5893"), ("6304", "6304"), ("6759", "6759"), ("6761", "6763")),
        tuple(range(12, 20)),
    ),
    Network("diners", (("300", "305"), ("36", "36"), ("38", "39")), (14, 15, 16, 17, 18, 19)),
    Network("mir", (("2200", "2204"),), (16, 17, 18, 19)),
)
LOCALES = ("en_US", "en_GB", "en_IE", "en_CA", "en_AU", "es_ES", "de_DE", "fr_FR", "it_IT", "nl_NL")
TYPES = ("PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE")


@dataclass(frozen=True)
class Gold:
    start: int
    end: int
    entity_type: str


@dataclass
class Sample:
    text: str
    gold: list[Gold] = field(default_factory=list)


class Gen:
    """One seeded source of values; every method draws from the same `random.Random`."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fakers = [Faker(loc) for loc in LOCALES]
        for i, f in enumerate(self.fakers):
            f.seed_instance(seed * 31 + i)

    def person(self) -> str:
        f = self.rng.choice(self.fakers)
        return f"{f.first_name()} {f.last_name()}"

    def email(self, person: str | None = None) -> str:
        first, *rest = (person or self.person()).lower().split()
        last = "".join(c for c in (rest[-1] if rest else "x") if c.isascii() and c.isalnum()) or "x"
        first = "".join(c for c in first if c.isascii() and c.isalnum()) or "a"
        local = self.rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{self.rng.randint(1, 99)}", f"{first}+billing"])
        domain = self.rng.choice(["example.com", "mail.example.org", "corp.example.co.uk", "example.de", "acme.io"])
        return f"{local}@{domain}"

    def phone(self) -> str:
        while True:
            area, exch, line = self.rng.randint(201, 989), self.rng.randint(200, 999), self.rng.randint(0, 9999)
            if phonenumbers.is_valid_number(phonenumbers.parse(f"+1{area}{exch}{line:04d}")):
                break
        fmt = self.rng.choice(["({a}) {e}-{l}", "{a}-{e}-{l}", "{a}.{e}.{l}", "+1 {a} {e} {l}", "+1-{a}-{e}-{l}"])
        return fmt.format(a=area, e=exch, l=f"{line:04d}")

    def card(self) -> str:
        net = self.rng.choice(CARD_NETWORKS)
        lo, hi = self.rng.choice(net.ranges)
        prefix = str(self.rng.randint(int(lo), int(hi))).zfill(len(lo))
        length = self.rng.choice(net.lengths)
        body = prefix + "".join(self.rng.choices(string.digits, k=length - len(prefix) - 1))
        digits = next(body + d for d in string.digits if luhn_ok(body + d))
        sep = self.rng.choice(["", " ", "-", ".", "/"])
        if not sep:
            return digits
        groups = [4, 6, 5] if length == 15 else [4] * (length // 4) + ([length % 4] if length % 4 else [])
        out, pos = [], 0
        for g in groups:
            out.append(digits[pos : pos + g])
            pos += g
        return sep.join(out)

    def ssn(self) -> str:
        area = self.rng.choice([a for a in range(1, 900) if a != 666])
        sep = self.rng.choice(["-", " "])
        return f"{area:03d}{sep}{self.rng.randint(1, 99):02d}{sep}{self.rng.randint(1, 9999):04d}"

    def iban(self) -> str:
        layouts = {"DE": (("n", 18),), "GB": (("a", 4), ("n", 14)), "FR": (("n", 23),), "NL": (("a", 4), ("n", 10)), "ES": (("n", 20),)}
        country = self.rng.choice(sorted(layouts))
        bban = "".join(
            "".join(self.rng.choices(string.ascii_uppercase if kind == "a" else string.digits, k=n)) for kind, n in layouts[country]
        )
        numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
        value = f"{country}{98 - int(numeric) % 97:02d}{bban}"
        return value if self.rng.random() < 0.5 else " ".join(value[i : i + 4] for i in range(0, len(value), 4))

    def value(self, kind: str) -> str:
        return {"PERSON": self.person, "EMAIL_ADDRESS": self.email, "PHONE_NUMBER": self.phone,
                "CREDIT_CARD": self.card, "US_SSN": self.ssn, "IBAN_CODE": self.iban}[kind]()


_PII_TEMPLATES = (
    "Hi team, {PERSON} asked for a refund on order ORD-{n}.",
    "{PERSON} will join the renewal call on {day}.",
    "Please email {EMAIL_ADDRESS} with the updated quote for {product}.",
    "Customer phone: {PHONE_NUMBER}. Call after 3pm {city} time.",
    "Charge card {CREDIT_CARD} for the renewal of {n} seats.",
    "Wire the deposit of EUR {amount} to {IBAN_CODE} before {month} {d}.",
    "SSN on file: {US_SSN}; verify it before onboarding.",
    "Escalated by {PERSON} ({EMAIL_ADDRESS}), callback {PHONE_NUMBER}.",
    "Thanks {PERSON}, invoice INV-{n} for {product} is attached.",
    "Meeting notes: {PERSON} and {PERSON} agreed on the Q{q} plan for {city}.",
    "The card ending in the number {CREDIT_CARD} was declined twice on {day}.",
    "Refund to IBAN {IBAN_CODE}, reference {n}, approved by {PERSON}.",
    "Applicant {PERSON}, SSN {US_SSN}, phone {PHONE_NUMBER}, moved to {city}.",
    "Can you ask {PERSON} to update the shipping address for ticket #{n}?",
)
_CLEAN_TEMPLATES = (
    "The {product} rollout moves to {month} {d} after the {dept} review.",
    "Order ORD-{n} shipped from the {city} warehouse on {day}.",
    "Q{q} revenue for {product} was USD {amount}, up {pct}% on last year.",
    "Ticket #{n} is waiting on the {dept} team; priority P{q}.",
    "Please review invoice INV-{n} ({amount} EUR) before {day}.",
    "{dept} approved build {q}.{d}.{n2} for the {city} region.",
    "The New York and San Francisco offices close at 5pm on {day}.",
    "Account {n} renewed {n2} seats of {product} Enterprise until {month} {d}, {year}.",
    "Will Finance sign off on the {product} budget by {month}?",
    "Grant Access to the {dept} shared drive for the {city} contractors.",
    "Release notes: {product} {q}.{d} fixes export, search and Single Sign-On.",
    "Call volume peaked at {n2} per hour during the {month} Black Friday sale.",
)
_PRODUCTS = ["Atlas", "Nimbus Cloud", "Ledger Pro", "Insight Analytics", "Harbor CRM", "Beacon", "Summit Suite"]
_DEPTS = ["Finance", "Legal", "Sales Operations", "Customer Success", "Procurement", "Security"]
_CITIES = ["Chicago", "London", "Madrid", "Berlin", "Austin", "Toronto", "Dublin", "Sydney", "Paris"]
_MONTHS = ["January", "March", "April", "May", "June", "August", "October", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def _filler(rng: random.Random) -> dict[str, object]:
    return {"n": rng.randint(10_000, 99_999_999), "n2": rng.randint(2, 900), "q": rng.randint(1, 4),
            "d": rng.randint(1, 28), "day": rng.choice(_DAYS), "month": rng.choice(_MONTHS),
            "year": rng.randint(2019, 2027), "product": rng.choice(_PRODUCTS), "dept": rng.choice(_DEPTS),
            "city": rng.choice(_CITIES), "amount": f"{rng.randint(100, 999_999):,}.{rng.randint(0, 99):02d}",
            "pct": rng.randint(1, 60)}


def _fill(template: str, gen: Gen, values: Callable[[str], str]) -> Sample:
    """Format `template`, generating each PII slot in turn and recording where its value lands."""
    filler = _filler(gen.rng)
    sample = Sample("")
    rest = template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        name, _, rest = tail.partition("}")
        sample.text += head.format(**filler) if "{" in head else head
        if name in TYPES:
            value = values(name)
            sample.gold.append(Gold(len(sample.text), len(sample.text) + len(value), name))
            sample.text += value
        else:
            sample.text += str(filler[name])
    sample.text += rest
    return sample


def corpus(seed: int, n_pii: int = 600, n_clean: int = 400) -> tuple[list[Sample], list[Sample]]:
    """`n_pii` sentences holding PII and `n_clean` PII-free ones, all from `seed`."""
    gen = Gen(seed)
    pii = [_fill(gen.rng.choice(_PII_TEMPLATES), gen, gen.value) for _ in range(n_pii)]
    clean = [_fill(gen.rng.choice(_CLEAN_TEMPLATES), gen, gen.value) for _ in range(n_clean)]
    return pii, clean


_FULLWIDTH = {ord(c): chr(0xFF10 + int(c)) for c in string.digits}


def _evade(kind: str, value: str, rng: random.Random) -> str:
    if kind == "EMAIL_ADDRESS":
        return value.replace("@", rng.choice([" [at] ", "(at)", "%40", "\uff20"]))
    if kind == "IBAN_CODE":
        return value.lower()
    trick = rng.choice(["fullwidth", "zero-width", "doubled"])
    if trick == "fullwidth":
        return value.translate(_FULLWIDTH)
    if trick == "zero-width":
        return "".join(c + ("\u200b" if c.isdigit() and rng.random() < 0.3 else "") for c in value).rstrip("\u200b")
    return value.replace(" ", "  ").replace("-", "--")


def evasions(seed: int, n: int = 300) -> list[Sample]:
    """PII sentences whose values are disguised (see the module docstring)."""
    gen = Gen(seed)
    templates = [t for t in _PII_TEMPLATES if "{PERSON}" not in t]
    return [_fill(gen.rng.choice(templates), gen, lambda k: _evade(k, gen.value(k), gen.rng)) for _ in range(n)]


@dataclass
class Figures:
    recall: dict[str, float]
    precision: dict[str, float]
    untouched: float
    counts: dict[str, int]


def _covered(g: Gold, findings: Iterable[PiiFinding]) -> bool:
    pos = g.start
    for f in sorted(findings):
        if f.start <= pos < f.end:
            pos = f.end
    return pos >= g.end


def measure(analyze: Callable[[str], tuple[PiiFinding, ...]], pii: list[Sample], clean: list[Sample]) -> Figures:
    """Recall per type, precision per found type, and the untouched share of `clean`."""
    hit: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    found_ok: dict[str, int] = defaultdict(int)
    found: dict[str, int] = defaultdict(int)
    for sample in pii:
        findings = analyze(sample.text)
        for g in sample.gold:
            total[g.entity_type] += 1
            hit[g.entity_type] += _covered(g, findings)
        for f in findings:
            found[f.entity_type] += 1
            found_ok[f.entity_type] += any(f.start < g.end and g.start < f.end for g in sample.gold)
    untouched = 0
    for sample in clean:
        findings = analyze(sample.text)
        untouched += not findings
        for f in findings:
            found[f.entity_type] += 1
    return Figures(
        recall={t: hit[t] / total[t] for t in sorted(total)},
        precision={t: found_ok[t] / found[t] for t in sorted(found)},
        untouched=untouched / len(clean) if clean else 1.0,
        counts=dict(sorted(total.items())),
    )
