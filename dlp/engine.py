"""The PII engine the gateway calls: findings (offsets and type) of the requested entity types.

What finds them is Presidio, set up to run offline in `dlp.presidio_offline`. That module is
imported only by `build_engine`: Presidio and spaCy take ~2 s to import (Presidio compiles its
recognizers' regexes at import), which every importer of the DLP step paid, `policy test` and
other commands that never scan a text included.

The engine is built once at start-up and is safe to call from several threads: Presidio's
recognizers keep no per-call state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dlp.config import DlpConfig
from dlp.normalize import normalize
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine


class EngineConfigError(ConfigError):
    """The `dlp:` configuration cannot be turned into an engine (e.g. a model that is not installed)."""


@dataclass(frozen=True, order=True)
class PiiFinding:
    """One PII span in a text: offsets and type only, so it can be cached and logged safely."""

    start: int
    end: int
    entity_type: str
    score: float


@dataclass
class PiiEngine:
    """Finds PII spans; built once, shared by every request."""

    analyzer: AnalyzerEngine
    language: str
    score_threshold: float
    entities: frozenset[str]

    def analyze(self, text: str, entities: frozenset[str]) -> tuple[PiiFinding, ...]:
        """Non-overlapping findings of the requested types, in text order.

        Only recognizers serving a requested type run (Presidio filters its registry by the
        `entities` argument), which matters: the phone recognizer alone is most of the cost.
        Matching runs on the normalized copy (`dlp.normalize`); offsets are the original's.
        """
        wanted = entities & self.entities
        if not wanted or not text.strip():
            return ()
        copy = normalize(text)
        results = self.analyzer.analyze(
            text=copy.text,
            language=self.language,
            entities=sorted(wanted),
            score_threshold=self.score_threshold,
        )
        return resolve_overlaps(
            PiiFinding(*copy.original_span(r.start, r.end), r.entity_type, r.score) for r in results if r.end > r.start
        )


def resolve_overlaps(findings: Iterable[PiiFinding]) -> tuple[PiiFinding, ...]:
    """Keep one finding per region: the higher score, then the longer span, then the earlier one.

    Recognizers overlap (a URL inside an email, a phone inside a card number); replacing both would
    corrupt the text, which is how LiteLLM restored values at wrong offsets.
    """
    ranked = sorted(findings, key=lambda f: (-f.score, -(f.end - f.start), f.start, f.entity_type))
    kept: list[PiiFinding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return tuple(sorted(kept))


def build_engine(config: DlpConfig) -> PiiEngine:
    """Build the analyzer once (imports Presidio and spaCy, loads the spaCy pipeline)."""
    from dlp.presidio_offline import build_analyzer

    return PiiEngine(
        analyzer=build_analyzer(config),
        language=config.language,
        score_threshold=config.score_threshold,
        entities=frozenset(config.entities),
    )
