"""Seeded generators of PII and PII-free text for the recall and false-positive tests.

Values are generated, never written down: valid Luhn card numbers, IBANs with correct mod-97 check
digits, SSNs from the issued ranges, emails, and phone numbers that libphonenumber accepts as valid
for their country, each in several written formats. Nothing here is printed by the tests.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

import phonenumbers
from faker import Faker


@dataclass(frozen=True)
class Sample:
    text: str
    entity_type: str  # "" for PII-free samples
    start: int = 0
    end: int = 0


def luhn_complete(prefix_digits: str) -> str:
    """`prefix_digits` plus the Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(prefix_digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return prefix_digits + str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card(rng: random.Random) -> str:
    brand = rng.choice(["visa", "mc", "amex", "discover"])
    if brand == "amex":
        raw = luhn_complete(rng.choice(["34", "37"]) + "".join(rng.choices(string.digits, k=12)))
        fmt = rng.choice(["plain", "amex"])
        return raw if fmt == "plain" else f"{raw[:4]} {raw[4:10]} {raw[10:]}"
    prefix = {"visa": "4", "mc": str(rng.randint(51, 55)), "discover": "6011"}[brand]
    raw = luhn_complete(prefix + "".join(rng.choices(string.digits, k=15 - len(prefix))))
    sep = rng.choice(["", " ", "-"])
    return sep.join(raw[i : i + 4] for i in range(0, 16, 4))


_IBAN_LAYOUT = {  # country: BBAN as (kind, length) parts; a = upper letters, n = digits
    "DE": (("n", 18),),
    "GB": (("a", 4), ("n", 14)),
    "FR": (("n", 23),),
    "NL": (("a", 4), ("n", 10)),
    "ES": (("n", 20),),
}


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(_IBAN_LAYOUT))
    bban = "".join(
        "".join(rng.choices(string.ascii_uppercase if kind == "a" else string.digits, k=n))
        for kind, n in _IBAN_LAYOUT[country]
    )
    if country == "FR":  # French RIB key is not checked by Presidio; mod 97 is.
        bban = bban[:21] + f"{rng.randint(1, 97):02d}"
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    value = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rng.random() < 0.5:
        return " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def ssn(rng: random.Random) -> tuple[str, bool]:
    """A plausible issued SSN and whether its written form needs a context word."""
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            break
    group, serial = rng.randint(1, 99), rng.randint(1, 9999)
    form = rng.choice(["dash", "dash", "space", "plain"])
    if form == "plain":
        return f"{area:03d}{group:02d}{serial:04d}", True
    sep = "-" if form == "dash" else " "
    return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}", False


_FIRST = ["anna", "li", "jose", "maria", "tom", "priya", "kofi", "olga", "chen", "sam", "noor", "luca"]
_LAST = ["smith", "garcia", "nguyen", "okafor", "muller", "rossi", "kim", "patel", "berg", "ito"]
_DOMAINS = ["example.com", "mail.example.org", "acme-corp.io", "firma.de", "shop.co.uk", "uni.edu"]


def email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice([f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}", f"{first}_{last}"])
    if rng.random() < 0.2:
        local += "+billing"
    return f"{local}@{rng.choice(_DOMAINS)}"


_PHONE_PLANS = {  # region: (country code, national number generator)
    "US": (
        "1",
        lambda r: f"{r.choice([212, 312, 415, 617, 646, 202, 305, 512])}{r.randint(200, 999)}{r.randint(0, 9999):04d}",
    ),
    "GB": ("44", lambda r: f"20{r.randint(3, 8)}{r.randint(0, 9999999):07d}"[:10]),
    "DE": ("49", lambda r: f"30{r.randint(10000000, 99999999)}"),
    "FR": ("33", lambda r: f"{r.choice([1, 6, 7])}{r.randint(10000000, 99999999)}"),
}


def phone(rng: random.Random) -> str:
    region = rng.choice(["US", "US", "GB", "DE", "FR"])
    cc, national = _PHONE_PLANS[region]
    while True:
        number = phonenumbers.parse("+" + cc + national(rng))
        if phonenumbers.is_valid_number(number):
            break
    if region == "US":
        nsn = str(number.national_number)
        return rng.choice(
            [
                f"({nsn[:3]}) {nsn[3:6]}-{nsn[6:]}",
                f"{nsn[:3]}-{nsn[3:6]}-{nsn[6:]}",
                f"{nsn[:3]}.{nsn[3:6]}.{nsn[6:]}",
                f"+1 {nsn[:3]} {nsn[3:6]} {nsn[6:]}",
                f"+1-{nsn[:3]}-{nsn[3:6]}-{nsn[6:]}",
            ]
        )
    fmt = rng.choice([phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164])
    return phonenumbers.format_number(number, fmt)


_PII_TEMPLATES = {
    "EMAIL_ADDRESS": [
        "Please write to {} about the refund.",
        "Contact: {}",
        "cc {} on the thread",
        "Customer email {}.",
    ],
    "PHONE_NUMBER": [
        "Call me back at {} after 5pm.",
        "Phone: {}",
        "my mobile is {}",
        "Reach the client on {} tomorrow.",
    ],
    "CREDIT_CARD": [
        "Charge card {} for the renewal.",
        "cc number {} exp 09/27",
        "Use {} please",
        "The card on file is {}.",
    ],
    "IBAN_CODE": ["Wire it to IBAN {} today.", "Bank account {} (EUR)", "Please pay into {}.", "Beneficiary: {}"],
    "US_SSN": ["SSN {} on the W-9", "Her social security number is {}.", "ssn: {}", "Tax form lists SSN {}"],
}
_GENERATORS = {"EMAIL_ADDRESS": email, "PHONE_NUMBER": phone, "CREDIT_CARD": card, "IBAN_CODE": iban}


def pii_samples(n: int, seed: int = 4) -> list[Sample]:
    """`n` one-value sentences spread evenly over the pattern entity types."""
    rng = random.Random(seed)
    kinds = sorted(_PII_TEMPLATES)
    out: list[Sample] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        value = ssn(rng)[0] if kind == "US_SSN" else _GENERATORS[kind](rng)
        template = rng.choice(_PII_TEMPLATES[kind])
        start = template.index("{}")
        out.append(Sample(template.format(value), kind, start, start + len(value)))
    return out


_CLEAN_TEMPLATES = [
    "Order ORD-{y}-{n6} shipped on {date} for ${amount}.",
    "Invoice INV-{n5} totals EUR {amount}, due in {d2} days net.",
    "Q{q} revenue grew {pct}% to ${m}M compared with Q{q2} last year.",
    "Ticket #{n5} was reopened at {hh}:{mm} and assigned to tier {q}.",
    "SKU {n4}-{n3}-{d2} restocked: {n3} units in warehouse {q}.",
    "Meeting moved to {date} at {hh}:00 in room {q}.{d2}.",
    "Release v{q}.{d2}.{q2} fixes {d2} bugs and adds {q} endpoints.",
    "Purchase order PO {n6} approved for {n3} licenses at ${amount} each.",
    "Batch {n4} processed {n6} records in {d2}.{q} seconds with {q} retries.",
    "Shipment weight {n3}.{q} kg, {d2} pallets, tracking ref TRK{n6}{q}.",
    "Budget line {n4} has ${amount} remaining of ${m},000 for FY{y}.",
    "Customer account {n6} moved from plan {q} to plan {q2} on {date}.",
    "The {date} standup covered sprint {d2}: {n3} points done, {q} carried over.",
    "Refund of ${amount} issued against order {n6} on {date}.",
    "Case {y}-{n5} escalated; SLA is {d2} hours, {pct}% of target used.",
]


def clean_samples(n: int, seed: int = 7) -> list[Sample]:
    """`n` PII-free business sentences full of numbers, dates, amounts and ids."""
    rng = random.Random(seed)
    out: list[Sample] = []
    for _ in range(n):
        template = rng.choice(_CLEAN_TEMPLATES)
        year = rng.randint(2019, 2026)
        text = template.format(
            y=year,
            n3=rng.randint(100, 999),
            n4=rng.randint(1000, 9999),
            n5=rng.randint(10000, 99999),
            n6=rng.randint(100000, 999999),
            d2=rng.randint(2, 99),
            q=rng.randint(1, 4),
            q2=rng.randint(1, 4),
            hh=f"{rng.randint(0, 23):02d}",
            mm=f"{rng.randint(0, 59):02d}",
            pct=f"{rng.randint(1, 99)}.{rng.randint(0, 9)}",
            m=rng.randint(1, 90),
            amount=f"{rng.randint(1, 99)},{rng.randint(0, 999):03d}.{rng.randint(0, 99):02d}",
            date=f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        )
        out.append(Sample(text, ""))
    return out


# Latin letters with a Cyrillic or Greek look-alike, as a mixed-script address would use them.
_HOMOGLYPHS = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441", "x": "\u0445", "i": "\u0456"}
_IDN_DOMAINS = ("bücher.de", "müller-bau.at", "пример.рф", "例え.jp", "ελληνικά.gr", "straße.de")


def non_ascii_addresses(seed: int, n: int) -> list[str]:
    """Generated e-mail addresses holding non-ASCII letters: look-alikes swapped into a Faker
    address (local part, domain or both), internationalized domains and local parts."""
    fake, rng = Faker(["en_US", "de_DE", "fr_FR"]), random.Random(seed)
    Faker.seed(seed)
    out: list[str] = []
    while len(out) < n:
        local, domain = fake.unique.email().split("@")
        kind = len(out) % 3
        if kind == 0:  # look-alikes in the local part, the domain or both
            where = rng.choice(("local", "domain", "both"))
            swap = lambda s: "".join(_HOMOGLYPHS.get(c, c) if rng.random() < 0.5 else c for c in s)  # noqa: E731
            local = swap(local) if where != "domain" else local
            domain = swap(domain.rsplit(".", 1)[0]) + "." + domain.rsplit(".", 1)[1] if where != "local" else domain
        elif kind == 1:
            domain = rng.choice(_IDN_DOMAINS)
        else:
            local, domain = rng.choice(("josé", "zoë", "jürgen.groß", "δοκιμή", "почта")), rng.choice(_IDN_DOMAINS)
        address = f"{local}@{domain}"
        if not address.isascii():
            out.append(address)
    return out
