"""The `dlp:` section of gateway.yaml, validated once at start-up.

Every key is optional: with none at all DLP runs on Presidio's pattern recognizers, a SQLite vault
in the state directory and a key file created beside it. A policy's own `dlp.tokenize` and
`dlp.reveal` lists choose entity types per subject; this section only says what the engine can
find and where tokens are kept.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Entity types Presidio's pattern recognizers find with no NLP model (see dlp/engine.py).
PATTERN_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "CRYPTO",
    "URL",
)
# Entity types only a spaCy NER model finds (config `nlp_model`); PERSON is also found without one
# (config `names`, see dlp/names.py).
NER_ENTITIES: tuple[str, ...] = ("PERSON", "LOCATION")

# Every type a built-in recognizer can report: what a policy file may name.
BUILTIN_ENTITIES: tuple[str, ...] = PATTERN_ENTITIES + NER_ENTITIES

ENTITY_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,39}")


class CustomPattern(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    regex: str
    score: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        re.compile(v)
        return v


class CustomRecognizer(BaseModel):
    """An operator's own entity: regexes with a base score, raised by context words nearby.

    A pattern scoring below `score_threshold` only counts when one of the `context` words appears
    within the five words before it (e.g. `EMPLOYEE_ID` patterns that are only PII near "employee").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    entity: Annotated[str, Field(pattern=ENTITY_NAME.pattern)]
    patterns: tuple[CustomPattern, ...] = Field(min_length=1)
    context: tuple[str, ...] = ()


class DlpConfig(BaseModel):
    """`dlp:` in gateway.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str = "en"
    # An installed spaCy package (e.g. en_core_web_sm) adds PERSON and LOCATION; never downloaded.
    nlp_model: str | None = None
    # PERSON from the attested US Census name lists (dlp/names.py): no model, ~1 ms per 2 KB.
    names: bool = True
    # Findings scoring below this are ignored. 0.4 keeps validated matches (Luhn, IBAN checksum,
    # email domain: 1.0), phones (0.4) and context-backed weak patterns; it drops bare 9-digit
    # numbers that Presidio reports as SSNs at 0.05.
    score_threshold: float = Field(default=0.4, ge=0.0, le=1.0)
    # Regions whose national phone formats are recognized; international (+CC) numbers are found
    # whatever the list. Each region is one full pass of libphonenumber over the text, and DE/FR
    # national plans accept bare 6-digit numbers (order ids) as phones: measured 1.5% false
    # positives on business text with them, 0% without.
    phone_regions: tuple[str, ...] = ("US", "GB")
    custom_recognizers: tuple[CustomRecognizer, ...] = ()
    # For agents no policy file gives a `dlp:` section: what leaves only as tokens, and what comes
    # back restored. Tokenizing by default keeps PII in the vault when a policy forgets DLP.
    tokenize: tuple[str, ...] = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "PERSON")
    # Types whose values refuse the call (`pii_blocked`), and those that leave masked (`****1111`).
    block: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    reveal: tuple[str, ...] = ()
    # Vault location: sqlite:///path, or redis://host:port/db. None: sqlite in the state dir.
    vault: str | None = None
    # Vault master key (base64 of 32 bytes) or env:NAME / file:PATH; None: <state_dir>/dlp.key.
    key: str | None = None
    # How long a value keeps its token (and the token stays restorable), in seconds: the vault's
    # retention. Expired entries are deleted every `purge_every` seconds (SQLite; Redis expires
    # them itself), so sealed PII does not outlive its token on disk.
    token_ttl: int = Field(default=86_400, gt=0)
    purge_every: int = Field(default=600, gt=0)
    # Memoized analyses (per scope and field value) kept in memory.
    memo_size: int = Field(default=4096, ge=0)
    # Threads that run Presidio off the event loop.
    workers: int = Field(default=2, ge=1)

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import phonenumbers

        unknown = [r for r in v if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone regions {unknown}")
        return v

    @model_validator(mode="after")
    def _known_types(self) -> DlpConfig:
        known = set(self.entities) | set(BUILTIN_ENTITIES)
        for key in ("tokenize", "block", "mask", "reveal"):
            unknown = [e for e in getattr(self, key) if e not in known]
            if unknown:
                raise ValueError(f"dlp.{key}: unknown entity types {unknown}")
        return self

    @property
    def entities(self) -> tuple[str, ...]:
        """Every entity type this configuration can find."""
        found = list(PATTERN_ENTITIES)
        if self.names:
            found.append("PERSON")
        if self.nlp_model:
            found += [e for e in NER_ENTITIES if e not in found]
        found += [c.entity for c in self.custom_recognizers if c.entity not in found]
        return tuple(found)
